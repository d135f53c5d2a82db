"""The core-ops export's parts without a trained model: the probabilities in the graph, the search for
the client's tokenizer settings, bfloat16 found in a graph, and folders it never overwrites."""
import os
import stat

import numpy as np
import pytest

LONG_TEXT = " ".join(["great"] + ["the movie was a film"] * 40 + ["awful"])  # longer than any seq_length here





def test_probabilities_in_the_graph_match_the_tasks():
    from tfhub_classifier import tasks
    from tfhub_classifier.model import saving
    rng = np.random.default_rng(0)
    for task in (tasks.Task("binary", ("neg", "pos")), tasks.Task("multiclass", ("a", "b", "c")),
                 tasks.Task("multilabel", ("a", "b", "c"))):
        logits = rng.normal(0, 3, (7, task.units)).astype(np.float32)
        np.testing.assert_allclose(saving.probabilities_tensor(task.kind, logits).numpy(),
                                   task.probabilities(logits), atol=1e-6)


def test_bfloat16_in_a_graph_is_found(tmp_path):
    """The control for the check above: a graph that does compute in bfloat16 is caught."""
    from tfhub_classifier.export import core_ops
    from tfhub_classifier.runtime import tf

    class Half(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None], tf.float32)])
        def __call__(self, x):
            return tf.cast(tf.cast(x, tf.bfloat16) * 2, tf.float32)

    module = Half()
    tf.saved_model.save(module, str(tmp_path), signatures=module.__call__)
    assert core_ops.bfloat16_nodes(str(tmp_path))


def test_client_truncates_as_the_suite_does(hub_models):
    """Each truncation, not only those the exported models use, against tokenization.TextToTokens."""
    from tfhub_classifier.data import tokenization
    from tfhub_classifier.export import client_example
    from tfhub_classifier.runtime import tf
    preprocessor = tf.saved_model.load(hub_models[0])
    vocab = os.path.join(hub_models[0], "assets", "vocab.txt")
    texts = [LONG_TEXT, "great " * 5 + "the movie " * 20 + "awful !", "short and sweet", ""]
    for seq_length in (16, 25):
        for truncation in ("head", "tail", "head+tail"):
            suite = tokenization.TextToTokens(preprocessor, seq_length, truncation)(tf.constant(texts))
            client = client_example.Tokenizer(vocab, True, seq_length, truncation,
                                             round((seq_length - 2) * tokenization.HEAD_SHARE), 2, 3)(texts)
            for key in tokenization.TOKEN_KEYS:
                np.testing.assert_array_equal(client[key], suite[key].numpy(), err_msg=f"{truncation} {key}")


def test_tokenizer_settings_are_found_not_trusted(multiclass_dir):
    """A run record that names the wrong truncation still gives the settings that reproduce the model."""
    from tfhub_classifier.export import core_ops
    from tfhub_classifier.model import saving
    model, record = saving.load(multiclass_dir)
    record = {**record, "config": {**record["config"], "truncation": "head"}}
    settings, vocab_file = core_ops.tokenizer_settings(model, multiclass_dir, record)
    assert settings["truncation"] == "head+tail" and settings["seq_length"] == 24
    assert os.path.basename(vocab_file) == "vocab.txt"


class TokensOnly:
    """What tokenizer_settings reads of a saved classifier: its preprocess."""

    def __init__(self, preprocessor_dir, seq_length=16, truncation="head"):
        from tfhub_classifier.data import tokenization
        from tfhub_classifier.runtime import tf
        self.preprocess = tokenization.TextToTokens(tf.saved_model.load(preprocessor_dir), seq_length, truncation)


def test_a_tokenizer_the_client_cannot_mimic_is_refused_in_one_line(hub_models, tmp_path):
    """A cased preprocessor that NFKC-normalizes (full-width letters become ASCII) is neither of the
    client's tokenizers: the probes catch it. The stock tiny preprocessor is the control."""
    import tiny_hub

    from tfhub_classifier.export import core_ops
    settings, _ = core_ops.tokenizer_settings(TokensOnly(hub_models[0]), hub_models[0], {})
    assert settings["lower_case"] is True and settings["truncation"] == "head"
    nfkc = tiny_hub.save_preprocessor(str(tmp_path / "nfkc"), lower_case=False, normalization_form="NFKC")
    with pytest.raises(ValueError) as refused:
        core_ops.tokenizer_settings(TokensOnly(nfkc), nfkc, {})
    message = str(refused.value)
    assert "\n" not in message and "could not tokenize like it" in message and "TF Text" in message


def test_the_final_rename_never_replaces_a_filled_folder(tmp_path, monkeypatch):
    """Even when out fills after the last check, the rename fails rather than replace it."""
    from tfhub_classifier.export import core_ops
    out = tmp_path / "out"

    def write(staging):
        with open(os.path.join(staging, "saved_model.pb"), "w") as f:
            f.write("export")
        out.mkdir(exist_ok=True)
        (out / "keep.txt").write_text("mine")

    monkeypatch.setattr(core_ops, "require_new_folder", lambda folder: folder)  # the race: after the check
    with pytest.raises(ValueError) as refused:
        core_ops.write_new_folder(str(out), write)
    assert "filled while exporting" in str(refused.value) and "\n" not in str(refused.value)
    assert os.listdir(out) == ["keep.txt"] and sorted(os.listdir(tmp_path)) == ["out"]
    monkeypatch.undo()
    fresh = core_ops.write_new_folder(str(tmp_path / "new" / "export"), lambda staging: None)
    assert os.path.isdir(fresh) and sorted(os.listdir(tmp_path / "new")) == ["export"]


def test_an_empty_out_folder_keeps_its_permissions(tmp_path):
    """A folder made for the export (say, group-writable for a team) is filled, not replaced by one of the
    umask's mode."""
    from tfhub_classifier.export import core_ops
    out = tmp_path / "out"
    out.mkdir()
    os.chmod(out, 0o2770)

    def write(staging):
        with open(os.path.join(staging, "saved_model.pb"), "w") as f:
            f.write("export")
    core_ops.write_new_folder(str(out), write)
    assert os.listdir(out) == ["saved_model.pb"] and stat.S_IMODE(os.stat(out).st_mode) == 0o2770


def test_an_empty_out_folder_keeps_its_group(tmp_path):
    """A team's folder (its group not the user's own) stays the team's."""
    from tfhub_classifier.export import core_ops
    if os.geteuid() != 0:
        pytest.skip("giving a folder another group than the user's needs root")
    out = tmp_path / "out"
    out.mkdir()
    team = os.getegid() + 1000
    os.chown(out, -1, team)
    core_ops.write_new_folder(str(out), lambda staging: None)
    assert os.stat(out).st_gid == team


def test_a_mount_point_is_refused_before_the_export_naming_a_folder_inside(tmp_path, monkeypatch):
    from tfhub_classifier.export import core_ops
    out = tmp_path / "mounted"
    out.mkdir()
    monkeypatch.setattr(core_ops.os.path, "ismount", lambda path: os.path.abspath(path) == str(out))
    with pytest.raises(ValueError, match=rf"--out {out} is a mount point; give a new folder inside it, e.g. --out "
                                         rf"{out}/export \(nothing was overwritten\)"):
        core_ops.require_new_folder(str(out))
    assert core_ops.require_new_folder(str(out / "export")) == str(out / "export")


def signatureless_tflite():
    """A valid .tflite with no signature, as a model converted outside export.py may be."""
    from tfhub_classifier.runtime import tf
    function = tf.function(lambda x: x * 2.0, input_signature=[tf.TensorSpec([1], tf.float32)]).get_concrete_function()
    content = tf.lite.TFLiteConverter.from_concrete_functions([function]).convert()
    interpreter = tf.lite.Interpreter(model_content=content)
    if interpreter.get_signature_list():  # this TensorFlow names a default signature: nothing to test
        return None
    return content


@pytest.mark.parametrize("content", [b"not a flatbuffer at all", b"", "signatureless"])
def test_a_damaged_tflite_file_is_a_one_line_error_naming_the_fix(tmp_path, content, capsys):
    import json

    from tfhub_classifier.export import client_example
    (tmp_path / "vocab.txt").write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\ngreat\n")
    (tmp_path / "tokenizer.json").write_text(json.dumps(
        {"lower_case": True, "seq_length": 8, "truncation": "head", "head_tokens": 6, "cls_id": 2, "sep_id": 3}))
    (tmp_path / "labels.json").write_text(json.dumps(
        {"task": "binary", "label_names": ["neg", "pos"], "display_names": ["neg", "pos"], "threshold": 0.5}))
    if content == "signatureless":
        content = signatureless_tflite()
        if content is None:
            pytest.skip("this TensorFlow gives every converted model a signature")
    (tmp_path / client_example.TFLITE_FILE).write_bytes(content)
    with pytest.raises(SystemExit) as stopped:
        client_example.main(["--export-dir", str(tmp_path), "great"])
    message = str(stopped.value)
    assert message.startswith("error: ") and "\n" not in message and "model.tflite cannot be read" in message
    assert "export the model again with export.py --format tflite" in message
