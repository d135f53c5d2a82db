"""The core-ops export: a saved classifier's token half as a SavedModel that any TensorFlow runtime
loads (stock TF Serving, TF.js's converter, ...), with what a client needs to tokenize for it.

The full SavedModel tokenizes inside its graph with TF Text ops, which stock TF Serving lacks; the
token classifier behind it (the TF-Hub encoder and the head) uses core ops only, so it is exported
alone and the client tokenizes in plain Python with the same vocabulary and settings (see
client_example.py, copied into the export under that name). The settings are not taken on trust:
the exporter finds those with which the client reproduces the model's own token ids on probe texts,
and refuses to export if none does.
"""
import errno
import itertools
import json
import os
import random
import shutil
import stat

import config
from tfhub_classifier import files
from tfhub_classifier.data import tokenization
from tfhub_classifier.export import client_example
from tfhub_classifier.inference import prediction
from tfhub_classifier.model import saving
from tfhub_classifier.runtime import tf

TFLITE_FILE = client_example.TFLITE_FILE


class CoreOpsClassifier(tf.Module):
    """Token ids in, probabilities and logits out: the saved classifier's classify_tokens and the
    task's probabilities, and nothing of its preprocessing."""

    def __init__(self, classify_tokens, kind):
        super().__init__()
        # Track only the weights the function reads, not the saved model's other objects.
        self.weights = list(classify_tokens.concrete_functions[0].variables)
        self.classify_tokens = classify_tokens
        self._kind = kind

    @tf.function(input_signature=[tf.TensorSpec([None, None], tf.int32, name=key) for key in tokenization.TOKEN_KEYS])
    def serve(self, input_word_ids, input_mask, input_type_ids):
        logits = self.classify_tokens({"input_word_ids": input_word_ids, "input_mask": input_mask,
                                       "input_type_ids": input_type_ids})
        return {"probabilities": saving.probabilities_tensor(self._kind, logits), "logits": logits}


def require_new_folder(out):
    """ValueError unless out is free: absent, or an empty folder (not a link). An export never
    replaces anything."""
    if os.path.islink(out) or (os.path.exists(out) and (not os.path.isdir(out) or os.listdir(out))):
        raise ValueError(f"--out {out} already exists and is not an empty folder; give a new folder "
                         "(nothing was overwritten)")
    if os.path.ismount(out):  # the export is renamed into place, which a mount point can't take
        raise ValueError(f"--out {out} is a mount point; give a new folder inside it, e.g. --out "
                         f"{os.path.join(out, 'export')} (nothing was overwritten)")
    return out


def write_new_folder(out, write):
    """Call write(folder) on a staging folder beside out, then rename it to out: out must not exist, or
    be an empty folder, then as now, whose mode and group the export keeps. Nothing else is touched (no
    out.previous): if out was filled meanwhile, the export is discarded and ValueError says so. Returns
    out's absolute path."""
    out = os.path.abspath(out)
    kept = os.stat(out) if os.path.isdir(out) else None  # an empty folder made for the export: its mode and group
    # Readable by the umask's rule, so a server can load it; another export's staging folder is left be.
    with files.staging_folder(out, "export", clear_leftovers=False) as staging:
        write(staging)
        require_new_folder(out)
        try:
            if os.path.isdir(out):
                os.rmdir(out)  # only ever an empty folder: fails if anything is in it
            os.rename(staging, out)  # fails if out appeared meanwhile and holds anything
        except OSError as error:
            if error.errno in (errno.EBUSY, errno.EXDEV):  # a bind mount, which os.path.ismount can't see
                raise ValueError(f"--out {out} is a mount point; give a new folder inside it (nothing was "
                                 "overwritten, the export was discarded)") from None
            raise ValueError(f"--out {out} was filled while exporting ({error.strerror}); give a new folder "
                             "(nothing was overwritten, the export was discarded)") from None
    if kept is not None:  # the group first: changing it may clear the set-group-ID bit
        try:
            os.chown(out, -1, kept.st_gid)
        except PermissionError:  # a group this user isn't in: the folder keeps the user's
            pass
        os.chmod(out, stat.S_IMODE(kept.st_mode))
    return out


def bfloat16_nodes(export_dir):
    """The nodes of a SavedModel's graphs (and their functions) that compute or cast to bfloat16."""
    from tensorflow.core.protobuf import saved_model_pb2
    saved = saved_model_pb2.SavedModel()
    with open(os.path.join(export_dir, "saved_model.pb"), "rb") as f:
        saved.ParseFromString(f.read())
    bf16 = tf.bfloat16.as_datatype_enum
    found = []
    for graph in (meta.graph_def for meta in saved.meta_graphs):
        nodes = itertools.chain(graph.node, *(function.node_def for function in graph.library.function))
        for node in nodes:
            if any(value.type == bf16 or bf16 in value.list.type or value.tensor.dtype == bf16
                   for value in node.attr.values()):
                found.append(f"{node.op}:{node.name}")
    return found


def export_core_ops(model_dir, out, log=print, export_format="core-ops", quantize="none"):
    """Write the core-ops export (or with export_format "tflite", the same graph as model.tflite, with
    quantize's weights) of the classifier in model_dir to the new folder out; returns what was
    written: the folder, the tokenizer settings, the task and its display names."""
    require_new_folder(out)  # at once, not after the slow load (and again before the rename)
    model, record = saving.load(model_dir)
    task = saving.task_of_record(record)
    names = list(prediction.display_names(task))  # as predict.py prints them (IMDB: negative, positive)
    settings, vocab_file = tokenizer_settings(model, model_dir, record)
    bfloat16 = []
    if export_format == "tflite":  # converted before the folder is staged: a refusal leaves nothing behind
        from tfhub_classifier.export import tflite
        converted = tflite.convert(model, task.kind, settings["seq_length"], quantize)
    else:
        module = CoreOpsClassifier(model.classify_tokens, task.kind)

    def write(staging):
        if export_format == "tflite":
            with open(os.path.join(staging, TFLITE_FILE), "wb") as f:
                f.write(converted)
        else:
            tf.saved_model.save(module, staging, signatures={saving.SERVING_SIGNATURE: module.serve})
            bfloat16.extend(bfloat16_nodes(staging))
        shutil.copy(vocab_file, os.path.join(staging, "vocab.txt"))
        with open(os.path.join(staging, "tokenizer.json"), "w") as f:
            json.dump(settings, f, indent=2)
        with open(os.path.join(staging, "labels.json"), "w") as f:
            json.dump({"task": task.kind, "label_names": list(task.label_names), "display_names": names,
                       "threshold": saving.threshold_of_record(record)}, f, indent=2)
        with open(os.path.join(staging, "labels.txt"), "w") as f:
            f.write("".join(f"{name}\n" for name in names))
        shutil.copy(client_example.__file__, os.path.join(staging, "client_example.py"))

    out = write_new_folder(out, write)
    if bfloat16:
        log(f"warning: the export's graph computes in bfloat16 ({len(bfloat16)} ops, e.g. {bfloat16[0]}); "
            "its scores may differ from predict.py --precision float32 by bfloat16's rounding")
    graph = (f"{TFLITE_FILE} ({quantize if quantize != 'none' else 'float32'} weights; a signature per input "
             "width, width_N: input_word_ids, input_mask, input_type_ids -> probabilities, logits)"
             if export_format == "tflite" else "saved_model.pb (serving_default: input_word_ids, input_mask, "
             "input_type_ids -> probabilities, logits)")
    log(f"{'TFLite' if export_format == 'tflite' else 'Core-ops'} export of {model_dir} ({task.kind}: "
        f"{', '.join(names)}) written to {out}: {graph}, vocab.txt, tokenizer.json, labels.json, labels.txt, "
        "client_example.py (needs no TF Text)")
    return {"out": out, "format": export_format, "tokenizer": settings, "bfloat16_ops": len(bfloat16),
            "task": {"kind": task.kind, "label_names": list(task.label_names), "display_names": names}}


def tokenizer_settings(model, model_dir, record):
    """The settings and vocabulary with which client_example.Tokenizer makes exactly the token ids the
    model's preprocess makes, found by trying them on probe texts; ValueError if none does."""
    empty = model.preprocess(tf.constant([""]))["input_word_ids"].numpy()[0]
    seq_length = len(empty)
    base = {"seq_length": seq_length, "cls_id": int(empty[0]), "sep_id": int(empty[1]), "pad_id": 0,
            "head_tokens": int(round((seq_length - 2) * tokenization.HEAD_SHARE)), "unk_token": "[UNK]",
            "max_word_bytes": 100}  # TF Text's BertTokenizer's default
    recorded = record.get("config", {}).get("truncation")
    truncations = sorted(config.TRUNCATIONS, key=lambda t: t != recorded)  # the recorded one first
    closest = None  # (probes reproduced, the first probe that was not)
    for vocab_file in vocabulary_candidates(model_dir):
        try:
            probes = probe_texts(vocab_file, seq_length)
        except (ValueError, UnicodeDecodeError):
            continue  # not a BERT vocabulary
        expected = {key: value.numpy().tolist() for key, value in model.preprocess(tf.constant(probes)).items()}
        for lower_case, truncation in itertools.product((True, False), truncations):
            settings = {**base, "lower_case": lower_case, "truncation": truncation}
            tokens = client_example.Tokenizer(vocab_file, **settings)(probes)
            same = [all(tokens[key][i] == expected[key][i] for key in tokenization.TOKEN_KEYS)
                    for i in range(len(probes))]
            if all(same):
                return settings, vocab_file
            if closest is None or sum(same) > closest[0]:
                closest = (sum(same), probes[same.index(False)])
    differs = f" (at best, it differs on {closest[1][:60]!r})" if closest else ""
    raise ValueError(f"{model_dir}: no vocabulary among its assets lets the export's client reproduce its "
                     f"tokenization with a BERT WordPiece tokenizer{differs}, so a core-ops export could not "
                     "tokenize like it; serve the full model with a TF Serving build that includes TF Text")


def vocabulary_candidates(model_dir):
    """The saved model's text assets, likely vocabularies (vocab*.txt) first."""
    assets = os.path.join(model_dir, "assets")
    names = sorted(os.listdir(assets)) if os.path.isdir(assets) else []
    names.sort(key=lambda name: not name.lower().startswith("vocab"))
    return [os.path.join(assets, name) for name in names if os.path.isfile(os.path.join(assets, name))]


def probe_texts(vocab_file, seq_length, seed=0):
    """Short texts that tell tokenizers apart (casing, accents and compatibility forms, CJK, emoji,
    control, format and unusual space characters, punctuation, literal special tokens, words at
    WordPiece's length limit, an empty text), and texts longer than seq_length (truncation)."""
    with open(vocab_file, encoding="utf-8") as f:
        vocab = [line.rstrip("\n") for line in f]
    words = [w for w in vocab if w.isalpha() and w.isascii() and w.islower()]
    if not words or "[UNK]" not in vocab:
        raise ValueError(f"{vocab_file} has no [UNK] or no plain words, so it is not a BERT vocabulary")
    rng = random.Random(seed)
    common = words[:200]
    w, v = max(words[:50], key=len), words[-1]
    vowel = next((i for i, c in enumerate(w) if c in "aeiou"), 0)
    fullwidth = "".join(chr(ord(c) + 0xFEE0) for c in w)
    suffixes = [s[2:] for s in vocab if s.startswith("##") and s[2:].isalpha() and s[2:].isascii()]
    long_words = []
    if suffixes:  # a word WordPiece covers, at and just over TF Text's 100-byte limit
        tail = min(suffixes, key=len) * 100
        long_words = [(w + tail)[:100], (w + tail)[:101]]
    long_text = " ".join(rng.choice(common) for _ in range(3 * seq_length))
    return ["", " ".join(x.upper() for x in common[:4]), " ".join(x.capitalize() for x in common[-4:]),
            w[:vowel] + w[vowel] + "\u0301" + w[vowel + 1:], w[:vowel] + "\u00e9" + w[vowel + 1:], w.upper() + "\u0300",
            "Café, naïve résumé! (It's) 3.5 stars...", fullwidth, f"{w}ﬁ ① ß Straße İ ǅ K Σας",
            f"{w} 电影很好看 {v}", f"映画が{w}好き", f"{w} 영화 ไทย عربي", f"{w}😀 {v} 👍🏽 ❤️ 🇫🇷",
            f"{w}\x00{v}\x07{w}", f"{w}\t{v}\n{w}\r{v}\x0b{w}\x0c{v}", f"{w}\u00ad{v} {w}\u200b{v}",
            f"{w}\u200d{v} \ufeff{w} {v}\u2028{w}", f"{w}\x7f{v}\x85{w}\u0600{v}",
            f"{w}\u00a0{v}\u3000{w}\u2003{v}", "[MASK] [SEP] [CLS]", f"[UNK] {w}[PAD] [unused0]",
            f"“{w}” ‘{v}’ — {w}… ¿{v}? «{w}»", "$5.00 @user #tag ~`^|\\ a/b-c_d", f"{w}\ufffd{v}",
            *long_words, long_text, long_text.title(),
            " ".join(rng.choice(common) for _ in range(seq_length - 4)) + " !"]
