"""What scores texts: the SavedModel's graph as saved, that graph with its layers fused for oneDNN
(model/fusion.py), that fused graph with most dense layers as oneDNN int8 products
(model/quantization.py), or its token half converted to TFLite (int8 weights) and run by XNNPACK.

Every way the saved model tokenizes (TF Text, in its graph); the other engines take its token ids.
The conversion takes seconds to a minute, so it is kept beside the model (MODEL_DIR/engines/, named
for the SavedModel's fingerprint, so a retrained model never reuses another's) and made once.
"""
import contextlib
import hashlib
import os
import threading

import numpy as np

from tfhub_classifier import cli, files, hardware, runtime
from tfhub_classifier.data import tokenization
from tfhub_classifier.export import client_example, tflite
from tfhub_classifier.model import fusion, saving
from tfhub_classifier.runtime import tf

# config.ENGINES' TFLite one, and TFLite in float32 (measured, and for checks: not offered, being slower here
# than the SavedModel in float32; docs/benchmarks.md#engines). PRECISION: what a record names as the precision
# of each engine that does not run at --precision.
QUANTIZATION = {"tflite": "none", "tflite-int8": "int8"}
PRECISION = {"tflite": "float32 (TFLite)", "tflite-int8": "int8 weights (TFLite)",
             "fused-int8": "int8 dense layers (oneDNN)"}
CACHE_FOLDER = "engines"
# The fused graph's logits against the saved graph's on the probe texts: float32 differs only in the
# order of sums; bfloat16 rounds the two graphs' activations at different points.
FUSED_TOLERANCE = {"float32": 1e-4, "bfloat16": 0.1, "float16": 0.1}
# --engine fused-int8's logits against the saved graph's on the probe texts, relative to their largest
# (or to 1, if that is smaller): int8 rounding moves them a few percent, a wrong rewrite far more.
INT8_TOLERANCE = 0.1

# What --engine fused-int8's SmoothQuant scales and activation ranges are measured on: a BERT's few large
# activation channels are the model's own, whatever the text, so varied plain sentences find them; values
# beyond the ranges they set (widened by a tenth) are clipped, which PROBE_TEXTS' unusual ones check at load.
_CALIBRATION_SENTENCES = [
    "The film opens slowly, but by the second hour I could not look away from the screen.",
    "Terrible acting, a plot full of holes and a soundtrack that never stops. Avoid it.",
    "Shipping took three weeks and the box arrived damaged; the seller refunded me at once.",
    "Our quarterly revenue rose 12% while operating costs fell, the company said on Tuesday.",
    "How do I reset my password if I no longer have access to the email on my account?",
    "The patient reported mild headaches and dizziness after the second dose of the drug.",
    "Scientists observed the comet passing close to Jupiter, its tail stretching for millions of km.",
    "I loved every minute of it!!! Best concert of my life, the band was on fire :)",
    "Please find attached the signed contract; let me know if any clause needs changing.",
    "The defense held firm in the final quarter and the home team won 24-21.",
    "Add the flour, stir until smooth, then bake for 35 minutes at 180 degrees.",
    "meh. it was ok i guess, nothing special, wouldnt watch again",
    "The new law requires every landlord to register rental properties with the city by March.",
    "Battery life is excellent, but the camera struggles in low light and the screen scratches easily.",
    "After years of silence, the author returns with a quiet, moving novel about grief and family.",
    "Error 504: the server did not respond in time. Try again later or contact support.",
]
# ... and all of them as one text, so the calibration sees positions as far as the model's window reaches.
CALIBRATION_TEXTS = _CALIBRATION_SENTENCES + [" ".join(_CALIBRATION_SENTENCES * 4)]
# --engine fused-int8's int8 products: each weight column on its own scale, the activations' channels evened
# out by SmoothQuant scales and quantized over fixed ranges, both measured on CALIBRATION_TEXTS (so a text
# scores the same in any batch), and the layers reading a GELU's output (a BERT's feed-forward second layer)
# left in float32: what kept the scores within the accuracy target (docs/benchmarks.md#int8-dense-layers).
INT8_OPTIONS = {"int8": "per-column", "int8_after_gelu": False, "int8_calibration": CALIBRATION_TEXTS,
                "int8_ranges": "calibrated"}
PROBE_TEXTS = ["A probe text: the fused graph must score it as the saved one does.", "Short.",
               "see https://example.com/x?id=42 :) 😀😀 def f(x): return x**2 # ÄÖÜ ß 東京 1,234.56 !!! ???"]


class FusedClassifier:
    """A saved classifier whose classify_tokens runs model/fusion.py's rewrite of its graph (weights
    frozen in at load time); everything else is the saved model's, in `saved`."""

    def __init__(self, saved, log=print, kernel=True, gelu_weights_held=None, int8=None, int8_after_gelu=True,
                 int8_calibration=None, int8_ranges="batch"):
        """int8_calibration: texts whose activations set the int8 layers' SmoothQuant scales (None: none)
        and, with int8_ranges "calibrated", their activations' ranges."""
        self.saved = saved
        calibration = None
        if int8_calibration is not None:
            calibration = {key: value.numpy() for key, value in tokens_of(saved, int8_calibration).items()}
        self.fused = fusion.fuse(saved.classify_tokens.get_concrete_function(), log=log, kernel=kernel,
                                 gelu_weights_held=gelu_weights_held, int8=int8, int8_after_gelu=int8_after_gelu,
                                 int8_calibration=calibration, int8_ranges=int8_ranges)

    def __getattr__(self, name):
        return getattr(self.saved, name)

    def classify_tokens(self, tokens):
        return self.fused(tokens)

    def largest_difference(self):
        """(The largest logit difference from the saved graph's on the probe texts, the saved graph's largest
        |logit| there)."""
        tokens = tokens_of(self.saved, PROBE_TEXTS)
        expected = self.saved.classify_tokens(tokens).numpy()
        return float(np.max(np.abs(self.classify_tokens(tokens).numpy() - expected))), float(np.max(np.abs(expected)))


def tokens_of(model, texts):
    """The token dict model's preprocessor makes of texts, trimmed to their longest."""
    return tokenization.trim_padding(model.preprocess(tf.constant(texts)))


def in_use(model, engine):
    """The engine that scores with model, loaded for --engine engine: auto is fused, which falls back to
    savedmodel; fused-int8 falls back to fused, then savedmodel."""
    if engine in ("auto", "fused", "fused-int8"):
        if not isinstance(model, FusedClassifier):
            return "savedmodel"
        return "fused-int8" if model.fused.int8_layers else "fused"
    return engine


def attention_in_use(model):
    """How a fused graph runs attention, so a record says why speeds differ: "kernel" (the suite's C++
    op), "chunks" (TensorFlow's ops a few texts at a time: no compiler, or bfloat16), "as saved"
    (TensorFlow's ops over the whole batch: no attention the rewrite recognizes, or none it reproduced),
    or the counts where attentions run more than one way ("kernel for 5, as saved for 1"); None for the
    other engines."""
    if not isinstance(model, FusedClassifier):
        return None
    fused = model.fused
    counts = {"kernel": fused.attention_kernels, "chunks": fused.attentions_in_chunks,
              "as saved": fused.attentions_as_saved}
    ways = [way for way, count in counts.items() if count]
    if len(ways) > 1:
        return ", ".join(f"{way} for {counts[way]}" for way in ways)
    return ways[0] if ways else "as saved"


def int8_or_fused(model, log=print):
    """A FusedClassifier over model with INT8_OPTIONS' int8 products, checked on probe texts against it;
    fused_or_saved's float32 engine instead, with a note, where oneDNN's kernels are off or a GPU would
    run it, or if the rewrite fails, quantizes nothing, finds no GELU (so it can't tell which layers to
    leave in float32) or scores too far off: int8 only saves time."""
    quantized, reason = None, _int8_unavailable()
    if reason is None:
        try:  # any failure of the rewrite falls back to float32
            quantized = FusedClassifier(model, log, **INT8_OPTIONS)
            reason = _int8_refused(quantized, *quantized.largest_difference())
        except Exception as error:
            reason = f"its int8 form could not be built ({cli.error_summary(error)})"
    if reason is None:
        return quantized
    log(f"note: scoring in float32 rather than int8: {reason}")
    return fused_or_saved(model, "float32", log)


def _int8_unavailable():
    """Why no int8 product can run here, or None."""
    if runtime.onednn_enabled() is False:
        return "oneDNN's kernels are off (TF_ENABLE_ONEDNN_OPTS=0), and the int8 products are theirs"
    if tf.config.list_physical_devices("GPU"):
        return "the int8 products are oneDNN's, for CPUs, and a GPU will run it"
    return None


def _int8_refused(quantized, difference, largest):
    """Why the int8 form built is not the one measured, or scores too far off the saved graph; or None."""
    fused = quantized.fused
    if not fused.int8_layers:
        return "none of its dense layers has a form --engine fused-int8 quantizes"
    if not fused.gelus:
        return "it has no GELU in the form --engine fused-int8 finds, so no layer after one to keep in float32"
    if fused.int8_layers >= fused.dense_layers:
        return "it found no layer reading a GELU's output to keep in float32"
    if not difference <= INT8_TOLERANCE * max(1.0, largest):  # NaN included
        return f"its int8 form scores too far off (logits {difference:.2g} apart on a probe text)"
    return None


def fused_or_saved(model, precision, log=print):
    """A FusedClassifier over model, checked on probe texts against it; model itself, with a note, if
    the rewrite fails, fuses nothing, scores differently, or a GPU would run it (its fused ops are
    oneDNN's, for CPUs). The rewrite only saves time, so no encoder it doesn't foresee may cost a score."""
    if tf.config.list_physical_devices("GPU"):
        log("note: scoring with the graph as saved: --engine fused rewrites it for oneDNN on CPUs, and a GPU "
            "will run it")
        return model
    try:  # any failure of the rewrite falls back to the graph as saved
        fused = FusedClassifier(model, log)
        difference, _ = fused.largest_difference()
    except Exception as error:
        log(f"note: scoring with the graph as saved: its fused form could not be built ({cli.error_summary(error)})")
        return model
    if fused.fused.dense_layers + fused.fused.layer_norms == 0:
        log("note: scoring with the graph as saved: none of its layers has a form --engine fused rewrites")
        return model
    if not difference <= FUSED_TOLERANCE[precision]:  # NaN included
        log(f"note: scoring with the graph as saved: its fused form scores differently (logits {difference:.2g} "
            "apart on a probe text)")
        return model
    return fused


class TfliteClassifier:
    """A saved classifier whose classify_tokens runs in TFLite: the same inputs and logits as the saved
    one's, through the smallest width signature that holds the batch. Everything else (preprocess,
    text_to_tokens, the signatures) is the saved model's, in `saved`."""

    def __init__(self, saved, model_content, threads=None):
        self.saved = saved
        self.interpreter = tflite.interpreter(model_content, threads=threads or hardware.cores())
        self.runners = tflite.signature_runners(self.interpreter)
        self.widths = sorted(self.runners)
        self.lock = threading.Lock()  # an interpreter runs one call at a time (serve.py calls from two threads)

    def __getattr__(self, name):
        return getattr(self.saved, name)

    def classify_tokens(self, tokens):
        """[texts, labels] logits of token ids ([texts, length] each, their longest at most the widest signature)."""
        rows, width = client_example.fitted(tokens, self.widths)
        count = len(rows["input_word_ids"])
        if count == 0:
            return tf.zeros([0, self._labels], tf.float32)
        with self.lock:
            logits = self.runners[width](**rows)["logits"]
        return tf.constant(logits.reshape(count, -1))

    @property
    def _labels(self):
        return int(self.saved.label_names.shape[0]) if self.saved.task_kind.numpy() != b"binary" else 1


def load(model_dir, precision, engine="auto", log=print):
    """(model, run record, the precision in force, as logs and reports name it): the saved model,
    a FusedClassifier over it, or a TfliteClassifier over it (converted once, then read from MODEL_DIR/engines/)."""
    if engine == "savedmodel":
        return saving.load_model(model_dir, precision)
    if engine in ("auto", "fused"):
        model, record, precision = saving.load_model(model_dir, precision)
        return fused_or_saved(model, precision, log), record, precision
    if engine == "fused-int8":
        model, record, _ = saving.load_model(model_dir, "float32")
        scorer = int8_or_fused(model, log)
        return scorer, record, PRECISION["fused-int8"] if in_use(scorer, "fused-int8") == "fused-int8" else "float32"
    model, record, _ = saving.load_model(model_dir, "float32")  # only its tokenizer runs
    path = kept_path(model_dir, engine, record["config"]["seq_length"])
    if os.path.isfile(path):
        with open(path, "rb") as f:
            kept = f.read()
        try:
            return TfliteClassifier(model, kept), record, PRECISION[engine]
        except (ValueError, RuntimeError, KeyError) as error:  # a damaged file: TFLite refuses it
            log(f"note: {path} could not be loaded ({str(error).splitlines()[0][:120]}); converting again")
    return TfliteClassifier(model, converted(model, record, model_dir, engine, path, log)), record, PRECISION[engine]


def converted(model, record, model_dir, engine, path, log=print):
    """The engine's .tflite bytes for the model in model_dir, converted and kept at path (if its folder
    can't be written, used unkept); the engine's other kept conversions (of an earlier save of the model,
    or another TensorFlow) and leftovers of a killed write (over an hour old) are removed."""
    task = saving.task_of_record(record)
    log(f"Converting {model_dir} to {engine} (once; kept in {os.path.dirname(path)}) ...")
    content = tflite.convert(model, task.kind, record["config"]["seq_length"], QUANTIZATION[engine],
                             instead="score it with --engine savedmodel")
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        files.remove_stale_partials(os.path.dirname(path))
        files.write_bytes(path, content)
    except OSError as error:
        log(f"note: could not keep the converted model in {os.path.dirname(path)} ({error.strerror}); "
            "it will be converted again next time")
        return content
    for name in os.listdir(os.path.dirname(path)):  # conversions of an earlier save or TensorFlow: never read
        if name.startswith(f"{engine}-") and name.endswith(".tflite") and name != os.path.basename(path):
            with contextlib.suppress(OSError):  # housekeeping: the new conversion is kept either way
                os.remove(os.path.join(os.path.dirname(path), name))
    return content


def kept_path(model_dir, engine, seq_length):
    """Where the engine's conversion of the model in model_dir is kept: named for the model and for what else
    shapes the converted file (TensorFlow's version, the quantization, the input widths)."""
    conversion = (tf.__version__, QUANTIZATION[engine], *tflite.widths(seq_length))
    return os.path.join(model_dir, CACHE_FOLDER, f"{engine}-{fingerprint(model_dir, conversion)}.tflite")


def fingerprint(model_dir, conversion):
    """A short hash of the SavedModel's graph and variable index, and of conversion: it changes whenever the
    model is saved anew or would convert differently."""
    digest = hashlib.sha256(repr(tuple(conversion)).encode())
    for name in ("saved_model.pb", os.path.join("variables", "variables.index")):
        with open(os.path.join(model_dir, name), "rb") as f:
            digest.update(f.read())
    return digest.hexdigest()[:16]
