"""The core-ops export: a saved classifier's token half as a SavedModel that any TensorFlow runtime
loads (stock TF Serving, TF.js's converter, ...), with what a client needs to tokenize for it.

The full SavedModel tokenizes inside its graph with TF Text ops, which stock TF Serving lacks; the
token classifier behind it (the TF-Hub encoder and the head) uses core ops only, so it is exported
alone and the client tokenizes with the same vocabulary and settings (see export_client.py).
"""
import itertools
import json
import os
import random
import shutil

import numpy as np

import export_client
import inference
import saving
import tokenization
from runtime import tf

TRUNCATIONS = ("head", "tail", "head+tail")


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
    """ValueError if out holds anything: an export never replaces files."""
    if os.path.exists(out) and (not os.path.isdir(out) or os.listdir(out)):
        raise ValueError(f"--out {out} already exists and is not empty; give a new folder (nothing was "
                         "overwritten)")
    return out


def export_core_ops(model_dir, out, log=print):
    """Write the core-ops export of the classifier in model_dir to out (atomically); returns what
    was written: the folder, the tokenizer settings, the task."""
    require_new_folder(out)
    model, record = saving.load(model_dir)
    task = inference.task_of_record(record)
    settings, vocab_file = tokenizer_settings(model, model_dir, record)
    module = CoreOpsClassifier(model.classify_tokens, task.kind)

    def write(staging):
        tf.saved_model.save(module, staging, signatures={saving.SERVING_SIGNATURE: module.serve})
        shutil.copy(vocab_file, os.path.join(staging, "vocab.txt"))
        with open(os.path.join(staging, "tokenizer.json"), "w") as f:
            json.dump(settings, f, indent=2)
        with open(os.path.join(staging, "labels.json"), "w") as f:
            json.dump({"task": task.kind, "label_names": list(task.label_names)}, f, indent=2)
        with open(os.path.join(staging, "labels.txt"), "w") as f:
            f.write("".join(f"{name}\n" for name in task.label_names))
        shutil.copy(export_client.__file__, os.path.join(staging, "client_example.py"))

    out = saving.write_atomically(out, write)
    log(f"Core-ops export of {model_dir} ({task.kind}: {', '.join(task.label_names)}) written to {out}: "
        "saved_model.pb (serving_default: input_word_ids, input_mask, input_type_ids -> probabilities, "
        "logits), vocab.txt, tokenizer.json, labels.json, labels.txt, client_example.py")
    return {"out": out, "format": "core-ops", "tokenizer": settings,
            "task": {"kind": task.kind, "label_names": list(task.label_names)}}


def tokenizer_settings(model, model_dir, record):
    """The settings and vocabulary with which export_client.Tokenizer makes exactly the token ids the
    model's preprocess makes, found by trying them on probe texts; ValueError if none does."""
    empty = model.preprocess(tf.constant([""]))["input_word_ids"].numpy()[0]
    seq_length = len(empty)
    base = {"seq_length": seq_length, "cls_id": int(empty[0]), "sep_id": int(empty[1]), "pad_id": 0,
            "head_tokens": int(round((seq_length - 2) * tokenization.HEAD_SHARE))}
    recorded = record.get("config", {}).get("truncation")
    truncations = sorted(TRUNCATIONS, key=lambda t: t != recorded)  # the recorded one first
    for vocab_file in vocabulary_candidates(model_dir):
        probes = probe_texts(vocab_file, seq_length)
        expected = {key: value.numpy() for key, value in model.preprocess(tf.constant(probes)).items()}
        for lower_case, truncation in itertools.product((True, False), truncations):
            settings = {**base, "lower_case": lower_case, "truncation": truncation}
            tokens = export_client.Tokenizer(vocab_file, **settings)(probes)
            if all(np.array_equal(tokens[key], expected[key]) for key in tokenization.TOKEN_KEYS):
                return settings, vocab_file
    raise ValueError(f"{model_dir}: no vocabulary among its assets reproduces its tokenization with a "
                     "WordPiece (BERT) tokenizer, so a core-ops export could not tokenize like it; "
                     "serve the full model with a TF Serving build that includes TF Text")


def vocabulary_candidates(model_dir):
    """The saved model's text assets, likely vocabularies (vocab*.txt) first."""
    assets = os.path.join(model_dir, "assets")
    names = sorted(os.listdir(assets)) if os.path.isdir(assets) else []
    names.sort(key=lambda name: not name.lower().startswith("vocab"))
    return [os.path.join(assets, name) for name in names if os.path.isfile(os.path.join(assets, name))]


def probe_texts(vocab_file, seq_length, seed=0):
    """Texts that tell the tokenizer settings apart: capitalised and accented words (casing),
    punctuation, an empty text, and texts longer than seq_length (truncation)."""
    with open(vocab_file, encoding="utf-8") as f:
        words = [line.strip() for line in f if line.strip().isalpha() and line.strip().isascii()]
    if not words:
        raise ValueError(f"{vocab_file} has no plain words, so it is not a BERT vocabulary")
    rng = random.Random(seed)
    common = words[:200]
    long_text = " ".join(rng.choice(common) for _ in range(3 * seq_length))
    return ["", " ".join(w.upper() for w in common[:8]), " ".join(w.capitalize() for w in common[-8:]),
            "Café, naïve résumé! (It's) 3.5 stars...", long_text, long_text.title(),
            " ".join(rng.choice(common) for _ in range(seq_length - 4)) + " !"]
