"""The fast and the tutorial pipelines, precision, XLA and multi-device training, run end to end."""
import subprocess
import sys

import numpy as np
import pytest
from helpers import QUICK, ROOT, assert_evaluate_agrees_with_the_run, assert_predict_scores_are_the_saved_models

import config
import train


def test_saved_model_applies_length_and_truncation_to_raw_strings(flags):
    import tensorflow as tf
    record = train.main(flags + QUICK + ["--epochs", "1", "--seq-length", "16", "--truncation", "tail"])
    model = tf.saved_model.load(flags[flags.index("--model-dir") + 1])
    tokens = model.preprocess(tf.constant(["dull " * 50 + "great wonderful"]))
    assert tokens["input_word_ids"].shape[1] == 16
    assert record["config"]["truncation"] == "tail"


def test_a_sentencepiece_preprocessor_runs_the_fast_pipeline(flags, tmp_path):
    """ALBERT's kind of preprocessor (SentencePiece, no word dimension) trains, keeps head+tail and
    scores through the fast pipeline as BERT's does."""
    import tensorflow as tf
    import tiny_hub
    flags[flags.index("--preprocessor") + 1] = tiny_hub.save_sentencepiece_preprocessor(str(tmp_path / "albert"))
    record = train.main(flags + QUICK + ["--epochs", "1", "--seq-length", "16", "--truncation", "head+tail"])
    assert record["config"]["pipeline"] == "fast"
    model_dir = flags[flags.index("--model-dir") + 1]
    model = tf.saved_model.load(model_dir)
    own = tf.saved_model.load(flags[flags.index("--preprocessor") + 1])
    short, long = "great film", "dull " * 40 + "wonderful acting"
    assert model.preprocess(tf.constant([short]))["input_word_ids"].numpy()[0].tolist() == (
        own(tf.constant([short]))["input_word_ids"].numpy()[0, :16].tolist())
    pieces = own.tokenize(tf.constant([long])).flat_values.numpy().tolist()
    ids = model.preprocess(tf.constant([long]))["input_word_ids"].numpy()[0].tolist()
    assert ids == [2] + pieces[:4] + pieces[-10:] + [3]  # of 14: round(14 * 128 / 510) head, the rest tail
    assert_predict_scores_are_the_saved_models(model_dir, [short, long])


def test_score_does_not_depend_on_batch_mates(trained_model):
    from tfhub_classifier.inference import scoring
    review = "great acting and a wonderful story"
    alone = scoring.logits_of(trained_model, [review], 8)[0]
    mates = ["awful " * n for n in (1, 30, 60)] + [review] + ["x"]
    np.testing.assert_allclose(scoring.logits_of(trained_model, mates, 8)[3], alone, atol=1e-5)


def test_scoring_sorts_by_length_and_pads_each_batch_to_its_longest(trained_model, monkeypatch):
    """What makes scoring fast: within a window, batches of similar length, each padded only to its
    longest text; and each logit still lands at its own text's place, across tokenizer calls."""
    from tfhub_classifier.data import tokenization
    from tfhub_classifier.inference import scoring
    monkeypatch.setattr(tokenization, "TOKENIZE_BATCH", 3)  # many tokenizer calls per window

    class Recording:
        def __init__(self, model):
            self.preprocess, self.model, self.batches = model.preprocess, model, []

        def classify_tokens(self, tokens):
            self.batches.append(tokens["input_mask"].numpy())
            return self.model.classify_tokens(tokens)

    texts = [("great " if i % 2 else "awful ") * ((i * 7) % 45 + 1) for i in range(40)]
    recording = Recording(trained_model)
    logits = scoring.logits_of(recording, texts, 8)
    assert [len(mask) for mask in recording.batches] == [8] * 5  # one window of 40 texts
    previous_longest = 0
    for mask in recording.batches:
        lengths = mask.sum(axis=1)
        assert mask.shape[1] % tokenization.PAD_MULTIPLE == 0
        assert lengths.max() <= mask.shape[1] < lengths.max() + tokenization.PAD_MULTIPLE
        assert lengths.min() >= previous_longest  # sorted: no batch starts below the last one's longest
        previous_longest = lengths.max()
    alone = [scoring.logits_of(trained_model, [text], 8)[0] for text in texts]
    np.testing.assert_allclose(logits, alone, atol=1e-5)


def test_in_memory_and_reloaded_models_score_many_texts_alike(trained, trained_model):
    """Many windows of batches, through the in-memory model as train.py scores the test set."""
    from tfhub_classifier.training import trainer
    flags, _ = trained
    cfg = config.resolve(recipe="official", seq_length=64, encoder=flags["--encoder"],
                         preprocessor=flags["--preprocessor"], precision="float32")
    session = trainer.Session(cfg, log=lambda *_: None)
    session.token_model.set_weights(trained_model.token_classifier.get_weights()
                                    if hasattr(trained_model.token_classifier, "get_weights")
                                    else [v.numpy() for v in trained_model.token_classifier.variables])
    texts = [("great " if i % 3 else "awful ") * (i % 40 + 1) for i in range(300)]
    from tfhub_classifier.inference import scoring
    in_memory = scoring.logits_of(session.exported, texts, 8)
    reloaded = scoring.logits_of(trained_model, texts, 8)
    assert in_memory.shape == (300,)
    np.testing.assert_allclose(in_memory, reloaded, atol=1e-5)


def test_pipelines_score_the_same(trained, hub_models):
    """The tutorial's string-in-model pipeline and ours give one model the same test metrics."""
    from tfhub_classifier.data import imdb
    from tfhub_classifier.training import trainer
    flags, _ = trained
    cfg = config.resolve(recipe="official", seq_length=64, encoder=flags["--encoder"],
                         preprocessor=flags["--preprocessor"], data_dir=flags["--data-dir"],
                         dataset_url=flags["--dataset-url"], precision="float32", batch_size=8)
    session = trainer.Session(cfg, log=lambda *_: None)
    _, validation, _ = imdb.load_splits(cfg)
    for pipeline in ("fast", "tutorial"):
        session.cfg = config.resolve(**{**cfg.__dict__, "pipeline": pipeline})
        session.compile(10)
    fast_ds = trainer.token_dataset(validation, session.text_to_tokens, 8)
    tutorial_ds = trainer.text_dataset(validation, 8)
    fast = session.token_model.evaluate(fast_ds, verbose=0, return_dict=True)
    slow = session.text_model.evaluate(tutorial_ds, verbose=0, return_dict=True)
    assert fast["binary_accuracy"] == pytest.approx(slow["binary_accuracy"])
    assert fast["loss"] == pytest.approx(slow["loss"], abs=1e-5)


def test_token_batches_are_padded_to_their_longest_review(trained):
    from tfhub_classifier import runtime
    from tfhub_classifier.data import imdb, tokenization
    from tfhub_classifier.training import trainer
    flags, _ = trained
    cfg = config.resolve(data_dir=flags["--data-dir"], dataset_url=flags["--dataset-url"])
    train_split, _, _ = imdb.load_splits(cfg)
    text_to_tokens = tokenization.TextToTokens(runtime.hub.load(flags["--preprocessor"]), 512, "head")
    widths = []
    for tokens, _ in trainer.token_dataset(train_split, text_to_tokens, 8, shuffle_seed=1).take(10):
        longest = int(tokens["input_mask"].numpy().sum(axis=1).max())
        width = tokens["input_mask"].shape[1]
        assert width % tokenization.PAD_MULTIPLE == 0 and longest <= width < longest + tokenization.PAD_MULTIPLE
        widths.append(width)
    assert max(widths) < 512


def trained_as_recorded(flags, record, batch_size=8, precision="float32"):
    """The run took one step per batch of each epoch, and its test metrics are what evaluate.py finds
    for the saved model."""
    assert record["optimizer_steps"] == len(record["history"]["loss"]) * -(-record["split_sizes"]["train"]
                                                                         // batch_size)
    assert_evaluate_agrees_with_the_run(flags[flags.index("--model-dir") + 1], record, precision)


def test_tutorial_pipeline_trains(flags):
    record = train.main(flags + QUICK + ["--epochs", "1", "--pipeline", "tutorial"])
    assert record["config"]["pipeline"] == "tutorial"
    trained_as_recorded(flags, record)


def test_bfloat16_rewrite_trains_and_scores(flags):
    if not config.hardware.cpu_supports_bfloat16():
        pytest.skip("this CPU has neither AVX512-BF16 nor AMX, which --precision bfloat16 needs")
    record = train.main(flags + QUICK[:-2] + ["--epochs", "1", "--precision", "bfloat16"])
    assert record["precision"] == "bfloat16"
    trained_as_recorded(flags, record, precision="bfloat16")


def test_jit_compile_trains(flags):
    record = train.main(flags + QUICK + ["--epochs", "1", "--jit-compile"])
    assert record["config"]["jit_compile"] is True
    trained_as_recorded(flags, record)
MIRRORED = """
import sys
sys.path.insert(0, {root!r})
from tfhub_classifier import runtime
cpu = runtime.tf.config.list_physical_devices("CPU")[0]
runtime.tf.config.set_logical_device_configuration(cpu, [runtime.tf.config.LogicalDeviceConfiguration()] * 2)
import train
record = train.main(sys.argv[1:])
print("REPLICAS", runtime.make_strategy("mirrored").num_replicas_in_sync)
print("STEPS", record["optimizer_steps"], "TRAIN", record["split_sizes"]["train"])
print("ACCURACY", record["test_metrics"]["accuracy"])
"""


def test_mirrored_strategy_over_two_cpu_devices(flags):
    result = subprocess.run([sys.executable, "-c", MIRRORED.format(root=ROOT), *flags, *QUICK,
                             "--strategy", "mirrored", "--epochs", "8", "--learning-rate", "5e-3"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    values = dict(line.split(" ", 1) for line in result.stdout.splitlines()
                  if line.split(" ")[0] in ("REPLICAS", "STEPS", "ACCURACY"))
    assert values["REPLICAS"] == "2"
    steps, _, train_size = values["STEPS"].split()
    assert int(steps) == 8 * -(-int(train_size) // 16)  # global batch = 8 per replica x 2
    assert float(values["ACCURACY"]) >= 0.75
    assert_predict_scores_are_the_saved_models(flags[flags.index("--model-dir") + 1], ["great", "awful film"])
