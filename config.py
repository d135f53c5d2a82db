"""Every default of the suite, each with its reason, and the flags derived from them.

`Config` is the one source of defaults. Named recipes (`RECIPES`) override some of
them as a set; a flag given on the command line overrides both. Nothing here
imports TensorFlow, so `--help` and flag errors are instant.
"""
import argparse
import codecs
import dataclasses
import importlib.util
import math
import os
import re
from dataclasses import dataclass, field

from tfhub_classifier import hardware
from tfhub_classifier.data.class_folders import REPLACING_ENCODING
from tfhub_classifier.inference import thresholds

OFFICIAL_DATASET_URL = "https://ai.stanford.edu/~amaas/data/sentiment/aclImdb_v1.tar.gz"
OFFICIAL_DATASET_MD5 = "7c2ac02c03563afcf9b574c7e56c153a"

_KAGGLE_BERT = "https://www.kaggle.com/models/tensorflow/bert/TensorFlow2/"


def _small_bert_catalogue():
    """The 24 small BERTs of Turc et al. (2019): L layers x H wide, H/64 heads."""
    encoders = {}
    for layers in (2, 4, 6, 8, 10, 12):
        for width in (128, 256, 512, 768):
            shape = f"L-{layers}_H-{width}_A-{width // 64}"
            encoders[f"small_bert/bert_en_uncased_{shape}"] = (
                f"{_KAGGLE_BERT}bert-en-uncased-{shape.lower().replace('_', '-')}/2")
    return encoders


# Name -> encoder handle, as TensorFlow's "Classify text with BERT" tutorial lists them.
BERT_ENCODERS = {
    "bert_en_uncased_L-12_H-768_A-12": f"{_KAGGLE_BERT}en-uncased-l-12-h-768-a-12/3",
    "bert_en_cased_L-12_H-768_A-12": f"{_KAGGLE_BERT}en-cased-l-12-h-768-a-12/3",
    "bert_multi_cased_L-12_H-768_A-12": f"{_KAGGLE_BERT}multi-cased-l-12-h-768-a-12/3",
    **_small_bert_catalogue(),
}

# Name -> the preprocessor whose vocabulary and casing match that encoder.
BERT_PREPROCESSORS = {
    name: f"{_KAGGLE_BERT}" + (
        "en-cased-preprocess/3" if "_en_cased" in name
        else "multi-cased-preprocess/3" if "_multi_cased" in name
        else "en-uncased-preprocess/3")
    for name in BERT_ENCODERS
}

# The tutorial's other encoders, each with the preprocessor its map_model_to_preprocess gives it, as
# its tfhub.dev handles (which resolve to Kaggle Models): name -> (encoder, preprocessor).
_TFHUB = "https://tfhub.dev/"
_UNCASED_PREPROCESS = f"{_TFHUB}tensorflow/bert_en_uncased_preprocess/3"
_OTHER_ENCODERS = {
    "albert_en_base": (f"{_TFHUB}tensorflow/albert_en_base/2", f"{_TFHUB}tensorflow/albert_en_preprocess/3"),
    "electra_small": (f"{_TFHUB}google/electra_small/2", _UNCASED_PREPROCESS),
    "electra_base": (f"{_TFHUB}google/electra_base/2", _UNCASED_PREPROCESS),
    "experts_pubmed": (f"{_TFHUB}google/experts/bert/pubmed/2", _UNCASED_PREPROCESS),
    "experts_wiki_books": (f"{_TFHUB}google/experts/bert/wiki_books/2", _UNCASED_PREPROCESS),
    "talking-heads_base": (f"{_TFHUB}tensorflow/talkheads_ggelu_bert_en_base/1", _UNCASED_PREPROCESS),
}
BERT_ENCODERS.update({name: encoder for name, (encoder, _) in _OTHER_ENCODERS.items()})
BERT_PREPROCESSORS.update({name: preprocessor for name, (_, preprocessor) in _OTHER_ENCODERS.items()})

# The tutorial's five example sentences, scored after training by both the in-memory
# and the reloaded model.
EXAMPLE_SENTENCES = (
    "this is such an amazing movie!",
    "The movie was great!",
    "The movie was meh.",
    "The movie was okish.",
    "The movie was terrible...",
)

TRUNCATIONS = ("head", "tail", "head+tail")
PRECISIONS = ("auto", "float32", "bfloat16", "float16")
# No "tpu": TPUs need static shapes (every batch padded to --seq-length, strings tokenized outside
# the model), which would undo the length-sorted batching, and no TPU is here to test it on.
STRATEGIES = ("default", "mirrored", "multiworker")
OPTIMIZERS = ("adamw", "tutorial-adamw", "tfa")
SCHEDULES = ("constant", "linear")
PIPELINES = ("fast", "tutorial")
POOLINGS = ("pooled", "mean")
OUTPUT_FORMATS = ("table", "jsonl", "csv")
EXPLAIN_METHODS = ("occlusion", "integrated-gradients")
ENGINES = ("auto", "fused", "fused-int8", "savedmodel", "tflite-int8")  # TFLite float32 measured slower: not offered
INT8_ENGINES = ("fused-int8", "tflite-int8")  # their own int8 weights: no --precision rewrite, no gradients
QUANTIZATIONS = ("none", "int8", "float16")  # export.py --format tflite's weights
TASKS = ("auto", "binary", "multiclass", "multilabel")
CLASS_WEIGHTS = ("none", "balanced")
QUOTINGS = ("csv", "none")
EARLY_STOPPING_METRICS = ("val_loss", "val_accuracy", "macro_f1")
CALIBRATIONS = ("none", "temperature")


# The scripts that offer a field as a flag.
TRAIN, EVALUATE, PREDICT, SERVE, EXPORT = "train", "evaluate", "predict", "serve", "export"
SCRIPTS = (TRAIN, EVALUATE, PREDICT, SERVE, EXPORT)
USING = (PREDICT, SERVE)  # the scripts that turn probabilities into labels
READING = (TRAIN, EVALUATE, PREDICT)  # the scripts that read CSV, TSV and JSON Lines files
EVERY = SCRIPTS


def _option(default, reason, choices=None, *, scripts=(TRAIN,), at_least=None, resumes=True, recorded=None,
            data_path=False, flag=None, help_in=None, value_type=None, alias=None):
    """A Config field and the facts about it that the scripts read:

    scripts: those that offer it as a flag; at_least: its smallest valid value (ints and floats);
    resumes: whether resuming an interrupted run needs the same value (False: it changes neither the
    weights nor the data trained on); recorded: "inherited" if evaluate.py takes the value in the model's
    run record unless the flag is given (where the test data is and how it is read), None if not;
    data_path: a file or folder of data, kept absolute in the run record so evaluate.py finds it from
    any working directory; flag: {script: flag name} where it is not the
    field's name; alias: {script: another flag} that also sets it there; help_in: {script: reason} where
    a script explains it otherwise; value_type: the flag's type where the default (None) does not say it.
    """
    return field(default=default, metadata={
        "help": reason, "choices": choices, "scripts": scripts, "at_least": at_least, "resumes": resumes,
        "recorded": recorded, "data_path": data_path, "flag": flag or {}, "help_in": help_in or {},
        "value_type": value_type or type(default), "alias": alias or {}})


@dataclass(frozen=True)
class Config:
    # What to fine-tune.
    bert_model: str = _option("small_bert/bert_en_uncased_L-4_H-512_A-8",
                              "the tutorial's model: 4 layers x 512 wide, trains in minutes on a GPU")
    encoder: str = _option("", "encoder handle or local SavedModel dir; empty = the one --bert-model names")
    preprocessor: str = _option("", "preprocessor handle or local SavedModel dir; empty = the one matching "
                                "--bert-model")

    # Where things live.
    data_dir: str = _option("data", "the IMDB archive is downloaded and extracted here once",
                            scripts=(TRAIN, EVALUATE), resumes=False, recorded="inherited", data_path=True)
    dataset_url: str = _option(OFFICIAL_DATASET_URL, "any URL works, file:// included, for an offline copy",
                               scripts=(TRAIN, EVALUATE), recorded="inherited")
    dataset_md5: str = _option("", "checksum for a non-official --dataset-url; the official one is always "
                               "verified", scripts=(TRAIN, EVALUATE), recorded="inherited")
    model_dir: str = _option("models/imdb_bert", "the saved classifier and its run record", scripts=EVERY,
                             resumes=False, help_in={TRAIN: "where the classifier and its run record are saved "
                                                            "(with --train-data: models/ and the data's name)"})
    plots_dir: str = _option("plots", "history and evaluation figures, as PNG", scripts=(TRAIN, EVALUATE),
                             resumes=False, recorded="inherited")

    # Your own data instead of IMDB: a folder of class subfolders of .txt files, or a .csv, .tsv or
    # .jsonl file.
    train_data: str = _option("", "training data; empty = IMDB, downloaded as the tutorial does",
                              recorded="inherited", data_path=True)
    test_data: str = _option("", "test data, labelled like --train-data (required with it)",
                             scripts=(TRAIN, EVALUATE), recorded="inherited",
                             help_in={EVALUATE: "labelled test data with the model's labels; empty = the test "
                                                "data the model was trained with"}, data_path=True)
    validation_data: str = _option("", "validation data; empty = --validation-split of the training data",
                                   data_path=True)
    text_column: str = _option("text", "the text's column or JSON field (a 0-based index with --no-header)",
                               scripts=READING, recorded="inherited")
    label_column: str = _option("label", "the label's column or JSON field (a JSON list = several labels)",
                                scripts=(TRAIN, EVALUATE), recorded="inherited")
    label_separator: str = _option("", "splits a CSV/TSV label cell into several labels, e.g. '|'; "
                                   "empty = one label a row", scripts=(TRAIN, EVALUATE), recorded="inherited")
    encoding: str = _option("utf-8", "the data files' text encoding, any Python codec (cp1252 for Excel on "
                            "Windows, latin-1, ...); utf-8:replace reads bytes that are not UTF-8 as U+FFFD "
                            "instead of stopping", scripts=READING, recorded="inherited")
    delimiter: str = _option("", "the CSV/TSV field delimiter; empty = ',' for .csv, a tab for .tsv (';' for the "
                             "CSV Excel writes in some countries)", scripts=READING, recorded="inherited")
    quoting: str = _option("csv", "csv = double quotes enclose fields, as Excel and Python's csv write them; "
                           "none = quotes are part of the text (GLUE's TSVs)", QUOTINGS, scripts=READING,
                           recorded="inherited")
    keep_columns: str = _option("", "predict.py --file with a .csv, .tsv or .jsonl file: the columns (JSON fields) "
                                "to copy into each result, comma-separated, or all; the text is always given",
                                scripts=(PREDICT,))
    no_header: bool = _option(False, "CSV/TSV files without a header row: columns are 0-based indexes",
                              scripts=READING, recorded="inherited")
    task: str = _option("auto", "auto = decided from the data (and printed); binary keeps IMDB's Dense(1)",
                        TASKS)
    positive_label: str = _option("", "binary: the label whose precision, recall and F1 are reported and whose "
                                  "probability is the score (e.g. fraud); empty = the second in sorted order "
                                  "(IMDB: pos)")
    class_weight: str = _option("none", "balanced = weigh each class (or each label's positives) by its "
                                "rarity, for imbalanced data", CLASS_WEIGHTS)

    # The data split, as in the tutorial.
    seed: int = _option(42, "the tutorial's seed: the same 80/20 split of train/ and the same shuffles",
                        recorded="inherited")
    validation_split: float = _option(0.2, "the tutorial holds out 20%% of train/ for validation")
    max_examples: int = _option(0, "cap each split at N texts for a quick run; 0 = all",
                                scripts=(TRAIN, EVALUATE), at_least=0)

    # The training recipe; --recipe sets these as a group.
    recipe: str = _option("best", "named set of the options below; best = these defaults, official and "
                          "tutorial change the values their help lists")
    epochs: int = _option(4, "passes over the training data; early stopping usually ends sooner", at_least=1)
    batch_size: int = _option(32, "per device; 32 is the tutorial's and BERT's usual fine-tuning batch",
                              at_least=1)
    learning_rate: float = _option(5e-5, "peak rate; BERT's paper picks among 5e-5, 3e-5, 2e-5, "
                                   "the highest measured best for this small model")
    schedule: str = _option("linear", "linear = warm-up, then decay to 0 at the last step (tf-models' "
                            "create_optimizer); constant = seed tutorial",
                            SCHEDULES)
    warmup_fraction: float = _option(0.1, "share of steps spent warming up, as BERT does")
    optimizer: str = _option("adamw", "adamw = decay scaled by rate, not on LayerNorm/bias; "
                             "tutorial-adamw = tfa's semantics; tfa = tensorflow-addons itself", OPTIMIZERS)
    weight_decay: float = _option(0.01, "BERT's decoupled weight-decay rate")
    epsilon: float = _option(1e-6, "BERT's Adam epsilon")
    clip_norm: float = _option(1.0, "clip gradients to this global norm, as BERT does; 0 = off")
    seq_length: int = _option(512, "tokens per text incl. [CLS]/[SEP]; most IMDB reviews are longer than 128")
    truncation: str = _option("head+tail", "which tokens of a long text to keep; head+tail = the first "
                              "128 and last 382 (Sun et al. 2019)", TRUNCATIONS)
    dropout: float = _option(0.1, "the tutorial's dropout before the classifier")
    pooling: str = _option("mean", "pooled = the encoder's [CLS] pooled_output; mean = masked mean of "
                           "every token (measured better here)",
                           POOLINGS)
    early_stopping_patience: int = _option(1, "stop after N epochs without a better validation score (see "
                                           "--early-stopping-metric) and keep the best epoch's weights; 0 = off",
                                           at_least=0)
    early_stopping_metric: str = _option("val_loss", "what early stopping watches on the validation data: "
                                         "val_loss, val_accuracy, or macro_f1 when that is the target (one "
                                         "more pass over the validation texts an epoch)", EARLY_STOPPING_METRICS)
    stratify: bool = _option(False, "your own data: cut --validation-split so each label keeps its share "
                             "(single-label data); off = the last share of the shuffled texts, as Keras cuts")

    # After training, on the validation data: saved with the model, so every consumer uses them.
    calibrate: str = _option("none", "temperature = divide the logits by one scalar fitted on the validation "
                             "data, so probabilities match frequencies (Guo et al. 2017)", CALIBRATIONS,
                             resumes=False)
    threshold_metric: str = _option("", "binary and multi-label: choose the threshold on the validation data "
                                    "for f1, precision:P (the most recall with precision >= P) or recall:R; "
                                    "empty = keep 0.5 and report what f1's would give", resumes=False)

    # How to run it.
    pipeline: str = _option("fast", "fast = tokenize in tf.data, pad per batch; tutorial = strings into the "
                            "model", PIPELINES)
    eval_batch_size: int = _option(128, "evaluation needs no gradients, so larger batches pay",
                                   scripts=(TRAIN, EVALUATE, PREDICT), at_least=1, resumes=False,
                                   recorded="inherited", flag={EVALUATE: "batch-size", PREDICT: "batch-size"},
                                   help_in={EVALUATE: "texts per batch (independent of training's)",
                                            PREDICT: "texts per batch"})
    precision: str = _option("auto", "auto = bfloat16 on CPUs with AVX512-BF16/AMX (measured faster, as "
                             "accurate), else float32; bfloat16/float16 rewrite the graph", PRECISIONS,
                             scripts=(TRAIN, EVALUATE, PREDICT))
    engine: str = _option("auto", "what scores texts: fused = the saved graph with each dense layer, GELU and "
                          "layer normalization run as one oneDNN kernel (scores within 1e-4 in float32, checked "
                          "at load; faster, but built in seconds at load); savedmodel = the saved graph as it is; "
                          "both at "
                          "--precision. auto = fused, but savedmodel for predict.py's texts given on the command "
                          "line, too few to repay the build. fused-int8 = fused in float32 (whatever --precision "
                          "auto picks), with the dense layers not reading GELU's output as oneDNN int8 products, "
                          "their activations' ranges measured at load on built-in English sentences (so a "
                          "text scores the same in any batch; values beyond them are clipped, so check "
                          "texts unlike those with evaluate.py first): measured faster on an AVX2 CPU; "
                          "scores slightly off; float32 with a note where it can't run "
                          "(docs/benchmarks.md#int8-dense-layers). tflite-int8 = the token classifier in TFLite "
                          "(XNNPACK) with int8 weights, scores slightly off, converted once and kept in "
                          "MODEL_DIR/engines/: what the int8 .tflite export scores, to check it before deploying "
                          "(docs/benchmarks.md#engines)", ENGINES,
                          scripts=(EVALUATE, PREDICT, SERVE))
    jit_compile: bool = _option(False, "XLA-compile the encoder and head")
    strategy: str = _option("default", "tf.distribute strategy: mirrored = several GPUs, multiworker = "
                            "TF_CONFIG", STRATEGIES)
    require_gpu: bool = _option(False, "fail instead of training on the CPU", resumes=False)
    collective_timeout_s: float = _option(120.0, "--strategy multiworker: a gradient exchange that waits this "
                                          "long for a lost worker fails, and every surviving worker stops with a "
                                          "line naming it (relaunch all with the same command to resume); 0 = "
                                          "wait forever", at_least=0, resumes=False)
    checkpoint_every: int = _option(200, "also checkpoint every N steps so a killed run resumes; 0 = per "
                                    "epoch only", at_least=0, resumes=False)
    tensorboard: bool = _option(False, "write TensorBoard logs under the model dir", resumes=False)
    deterministic: bool = _option(False, "identical weights run to run (TensorFlow's op determinism), at "
                                  "some cost in speed")
    restart: bool = _option(False, "start over even if MODEL_DIR.training/ holds an interrupted run "
                            "with other settings (deleting its checkpoint)", resumes=False)
    debug: bool = _option(False, "on an unexpected error, show the whole traceback (or set "
                          "BERT_SUITE_DEBUG=1)", scripts=EVERY, resumes=False)

    # Serving (serve.py): TensorFlow Serving's REST API, with concurrent requests batched.
    host: str = _option("127.0.0.1", "only this machine can connect; 0.0.0.0 = every interface (put a "
                        "proxy or firewall in front)", scripts=(SERVE,))
    port: int = _option(8501, "TensorFlow Serving's REST port, so its clients need no change", scripts=(SERVE,))
    model_name: str = _option("", "the NAME in /v1/models/NAME:predict; empty = the model dir's base name",
                              scripts=(SERVE,))
    serve_batch_size: int = _option(32, "most texts one model call scores, gathered from concurrent "
                                    "requests; 1 = no batching (one text per call); TF Serving's name for it "
                                    "(--batch-size also works)", scripts=(SERVE,), at_least=1,
                                    flag={SERVE: "max-batch-size"}, alias={SERVE: "batch-size"})
    serve_precision: str = _option("float32", "float32 = the scores of the saved serving_default (what TF "
                                   "Serving and the core-ops export give; within 1e-4 through the fused graph, "
                                   "exactly with --engine savedmodel); bfloat16 = faster on CPUs with "
                                   "AVX512-BF16/AMX, scores off by up to about 0.02 (docs/benchmarks.md)",
                                   PRECISIONS[1:], scripts=(SERVE,), flag={SERVE: "precision"})
    batch_timeout_ms: float = _option(5.0, "longest a text waits for others to share its model call: small "
                                      "against a call's tens of milliseconds", scripts=(SERVE,))
    max_request_bytes: int = _option(4 * 2**20, "larger request bodies get 413 without being kept in memory",
                                     scripts=(SERVE,), at_least=1)
    max_text_chars: int = _option(100_000, "longer texts get 400: IMDB's longest review has ~14k characters, "
                                  "and BERT reads only the model's sequence length in tokens", scripts=(SERVE,),
                                  at_least=1)
    read_timeout_s: float = _option(10.0, "a request must arrive whole (headers and body) within this many seconds "
                                    "of its first byte, and a new connection send one as soon, else it is closed; an "
                                    "answer left unread as long also closes it: slow and stalled clients hold no "
                                    "connection or shutdown for long", scripts=(SERVE,))
    keep_alive_timeout_s: float = _option(5.0, "an idle keep-alive connection is closed after this many seconds",
                                          scripts=(SERVE,))
    max_connections: int = _option(512, "open connections at most, kept under the descriptor limit: past it an idle "
                                   "connection is closed to make room (the longest-silent first, those whose "
                                   "request has come unread last), or, if every one has a request running, the "
                                   "new one gets 503", scripts=(SERVE,), at_least=1)
    drain_timeout_s: float = _option(30.0, "on SIGTERM, how long in-flight requests may run before they are "
                                     "cut off (Kubernetes' default grace period)", scripts=(SERVE,))
    max_texts_per_request: int = _option(256, "requests with more texts get 400: TF Serving clients send "
                                         "small batches, and bulk scoring is predict.py's job",
                                         scripts=(SERVE,), at_least=1)
    version_label: str = _option("", "a TensorFlow Serving version label that names the served model, so "
                                 "/v1/models/NAME/labels/LABEL routes reach it; others get TF Serving's 400",
                                 scripts=(SERVE,))
    allowed_hosts: str = _option("", "Host header names accepted besides localhost, 127.0.0.1, [::1] and --host, "
                                 "comma-separated (the names clients use to reach this server); * = any. Others "
                                 "get 400, so a web page can't reach the server by DNS rebinding",
                                 scripts=(SERVE,))
    cors_origin: str = _option("", "a web origin allowed to call the API from a browser (CORS), e.g. "
                               "https://app.example.com; empty = none", scripts=(SERVE,))
    expose_record: bool = _option(False, "answer /record with the task, labelling settings and the run record "
                                  "(local paths and URL credentials removed)", scripts=(SERVE,))
    max_explain_texts: int = _option(8, ":explain: most texts a request may ask to explain; each costs a model "
                                     "call per word, on the thread :predict uses", scripts=(SERVE,), at_least=1)
    max_queued_texts: int = _option(2048, "texts waiting for a model call; past it a request gets 503 at "
                                    "once, as TF Serving's max_enqueued_batches does, instead of a long wait",
                                    scripts=(SERVE,), at_least=1)

    # How a model's probabilities become labels.
    threshold: float = _option(None, "binary: score at or above which a text gets the positive label; "
                               "multi-label: probability at or above which a label is given; empty = the "
                               "model's own (chosen on the validation data at training), else 0.5",
                               scripts=(EVALUATE, *USING), value_type=float)
    top_k: int = _option(1, "multi-class: give the K most likely labels, each with its probability",
                         scripts=USING, at_least=1)

    # Explanations: which words drove a label (tfhub_classifier/inference/attribution.py).
    explain: bool = _option(False, "give each text's words a weight toward its label (JSON Lines: words, "
                            "offsets, weights; the table: the top words)", scripts=(PREDICT,))
    explain_label: str = _option("", "explain this label instead of the one given (or, multi-label, the most "
                                 "likely)", scripts=(PREDICT,))
    explain_method: str = _option("occlusion", "occlusion = how much the label's probability falls when each "
                                  "word alone is deleted (the more faithful on real reviews); integrated-gradients "
                                  "= gradients along a path from no words (docs/benchmarks.md#explanations)",
                                  EXPLAIN_METHODS, scripts=(EVALUATE, PREDICT))
    show_errors: int = _option(0, "print the K most confident mistakes, each with the words that drove it",
                               scripts=(EVALUATE,), at_least=0)

    def encoder_handle(self):
        return self.encoder or BERT_ENCODERS[self.bert_model]

    def preprocessor_handle(self):
        return self.preprocessor or BERT_PREPROCESSORS[self.bert_model]

    def validate(self, script=None):
        """Raise ValueError, naming the fix, for any value the suite can't use among the fields that
        script offers (None: every field)."""
        offered = set(field_names(script))
        for spec in dataclasses.fields(self):
            least, value = spec.metadata["at_least"], getattr(self, spec.name)
            if spec.name in offered and isinstance(value, float) and not math.isfinite(value):
                raise ValueError(f"--{flag_name(spec.name, script)} must be a finite number, got {value}")
            if spec.name in offered and least is not None and value < least:
                bound = "at least 1" if least == 1 else f"{least} or more"
                raise ValueError(f"--{flag_name(spec.name, script)} must be {bound}, got {value}")
        if "threshold" in offered and self.threshold is not None and not 0 <= self.threshold <= 1:
            raise ValueError(f"--threshold must be between 0 and 1, got {self.threshold}")
        precisions = {getattr(self, name) for name in ("precision", "serve_precision") if name in offered}
        if "bfloat16" in precisions and not hardware.cpu_supports_bfloat16():
            raise ValueError("--precision bfloat16 needs a CPU with AVX512-BF16 or AMX, which this one lacks "
                             "(it would run float32 and be slower); use --precision float32")
        if "engine" in offered and self.engine in INT8_ENGINES and precisions & {"bfloat16", "float16"}:
            why = ("its int8 products run in float32" if self.engine == "fused-int8" else
                   "--precision rewrites the SavedModel's graph, which it does not run")
            raise ValueError(f"--engine {self.engine} takes no --precision {(precisions - {'auto', 'float32'}).pop()}: "
                             f"{why}; drop --precision, or use --engine fused")
        if "engine" in offered and self.engine in INT8_ENGINES and self.explain_method == "integrated-gradients":
            raise ValueError("--explain-method integrated-gradients follows the SavedModel's float32 gradients, "
                             f"not --engine {self.engine}'s int8 weights, so its weights would not explain the "
                             "scores shown; use --explain-method occlusion, or --engine fused")
        if "encoding" in offered and self.encoding != REPLACING_ENCODING:
            try:
                if not codecs.lookup(self.encoding)._is_text_encoding:  # base64, zlib, ...: bytes to bytes
                    raise LookupError(self.encoding)
            except LookupError:
                raise ValueError(f"unknown --encoding {self.encoding!r}; name a Python codec such as utf-8, cp1252 "
                                 f"or latin-1, or {REPLACING_ENCODING}") from None
        if "delimiter" in offered and len(self.delimiter) > 1:
            raise ValueError(f"--delimiter takes one character, got {self.delimiter!r}; use a tab for .tsv files "
                             "(their default)")
        if "label_column" in offered and self.text_column == self.label_column:
            raise ValueError(f"--text-column and --label-column both name {self.text_column!r}; name the column "
                             "that holds the labels with --label-column")
        if "no_header" in offered and self.no_header and not (self.text_column.isdigit() and (
                "label_column" not in offered or self.label_column.isdigit())):
            if "label_column" not in offered:
                raise ValueError("with --no-header, --text-column is a 0-based column index, e.g. --text-column 1 "
                                 f"(got {self.text_column!r})")
            raise ValueError("with --no-header, --text-column and --label-column are 0-based column "
                             f"indexes, e.g. --text-column 1 --label-column 0 (got {self.text_column!r}, "
                             f"{self.label_column!r})")
        if script in (None, TRAIN):
            self._validate_training()
        if script in (None, SERVE):
            self._validate_serving()
        return self

    def _validate_training(self):
        if self.strategy != "multiworker" and self.collective_timeout_s != Config.collective_timeout_s:
            raise ValueError("--collective-timeout-s bounds the waits of --strategy multiworker; add "
                             "--strategy multiworker, or drop --collective-timeout-s")
        if not (self.encoder and self.preprocessor) and self.bert_model not in BERT_ENCODERS:
            raise ValueError(f"unknown --bert-model {self.bert_model!r}; run `python train.py --list-models` "
                             "for the names, or pass --encoder and --preprocessor")
        if self.recipe not in RECIPES:
            raise ValueError(f"unknown --recipe {self.recipe!r}; use one of {', '.join(RECIPES)}")
        thresholds.check_metric(self.threshold_metric)
        if not 0 < self.validation_split < 1:
            raise ValueError(f"--validation-split must be between 0 and 1 (the tutorial uses 0.2), "
                             f"got {self.validation_split}")
        if not self.learning_rate > 0:
            raise ValueError(f"--learning-rate must be positive, got {self.learning_rate}")
        if not 0 <= self.warmup_fraction < 1:
            raise ValueError(f"--warmup-fraction must be in [0, 1), got {self.warmup_fraction}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"--dropout must be in [0, 1), got {self.dropout}")
        if self.weight_decay < 0 or self.clip_norm < 0 or not self.epsilon > 0:
            raise ValueError("--weight-decay and --clip-norm must be 0 or more and --epsilon positive")
        if self.seq_length < MIN_SEQ_LENGTH:
            raise ValueError(f"Cannot use --seq-length {self.seq_length}: [CLS] and [SEP] alone take 2 "
                             f"tokens; use at least {MIN_SEQ_LENGTH}")
        self._validate_combinations()

    def _validate_serving(self):
        if not 1 <= self.port <= 65535:
            raise ValueError(f"--port must be between 1 and 65535 (TensorFlow Serving's REST port is 8501), "
                             f"got {self.port}")
        if self.batch_timeout_ms < 0 or self.drain_timeout_s < 0:
            raise ValueError("--batch-timeout-ms and --drain-timeout-s must be 0 or more")
        if not (self.read_timeout_s > 0 and self.keep_alive_timeout_s > 0):
            raise ValueError("--read-timeout-s and --keep-alive-timeout-s must be more than 0")
        if self.max_queued_texts < self.max_texts_per_request:
            raise ValueError(f"--max-queued-texts {self.max_queued_texts} is below --max-texts-per-request "
                             f"{self.max_texts_per_request}, so the largest requests could never be queued; "
                             "raise it or lower --max-texts-per-request")
        if self.model_name and not MODEL_NAME_PATTERN.fullmatch(self.model_name):
            raise ValueError(f"--model-name {self.model_name!r} can't be part of a URL path; use letters, "
                             "digits, '.', '_' and '-'")

    def validate_training_data(self):
        """What train.py needs of the data flags (evaluate.py takes --test-data alone)."""
        if bool(self.train_data) != bool(self.test_data):
            raise ValueError("--train-data and --test-data go together: give both (and optionally "
                             "--validation-data), or neither for IMDB")
        if self.validation_data and not self.train_data:
            raise ValueError("--validation-data needs --train-data and --test-data")
        if self.stratify and not self.train_data:
            raise ValueError("--stratify is for your own --train-data; IMDB's validation split stays the tutorial's")
        if self.stratify and self.validation_data:
            raise ValueError("--stratify cuts --validation-split from the training data; with --validation-data "
                             "there is no cut: drop one of them")
        if not self.train_data and self.task not in ("auto", "binary"):
            raise ValueError(f"IMDB is a binary task; --task {self.task} needs your own --train-data and --test-data")
        return self

    def _validate_combinations(self):
        """Settings that are fine alone but can't run together, or not on this machine."""
        if self.optimizer != "adamw" and self.schedule != "constant":
            raise ValueError(f"--optimizer {self.optimizer} decays weights by a fixed amount per step, as "
                             "the tutorial does, which needs --schedule constant (or use --optimizer adamw)")
        if self.optimizer == "tfa" and importlib.util.find_spec("tensorflow_addons") is None:
            raise ValueError("--optimizer tfa needs tensorflow-addons, which only runs on TensorFlow 2.15: "
                             "in a Python 3.9-3.11 venv, `pip install -r requirements-tfa.txt` "
                             "(see docs/tfa-profile.md), or use --optimizer tutorial-adamw for the same semantics")
        if self.jit_compile and self.pipeline == "tutorial":
            raise ValueError("--jit-compile can't compile the tutorial pipeline's string ops; "
                             "use --pipeline fast or drop --jit-compile")


MIN_SEQ_LENGTH = 8
# What a model's name in /v1/models/NAME may hold: no '/' or ':', which the URL's paths use.
MODEL_NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
# Named recipes: what each changes from the Config defaults above (which are `best`, the best
# measured here: docs/benchmarks.md, benchmarks/accuracy.py); explicit flags override a recipe.
RECIPES = {
    "best": {},
    # TensorFlow's official BERT fine-tuning recipe (tf-models' create_optimizer): 128 head
    # tokens, the [CLS] pooled output, all 5 epochs.
    "official": dict(learning_rate=3e-5, epochs=5, seq_length=128, truncation="head", pooling="pooled",
                     early_stopping_patience=0),
    # The seed tutorial exactly: strings into the model, random batches of 4 padded to 128 tokens,
    # float32, a constant rate, tfa's AdamW decaying every variable by 1e-4 per step, all 5 epochs.
    "tutorial": dict(batch_size=4, learning_rate=3e-5, schedule="constant", warmup_fraction=0.0,
                     optimizer="tutorial-adamw", weight_decay=1e-4, epsilon=1e-7, clip_norm=0.0,
                     epochs=5, seq_length=128, truncation="head", pooling="pooled",
                     early_stopping_patience=0, pipeline="tutorial", precision="float32"),
}


def field_names(script=None, **facts):
    """Names of the Config fields that script offers as flags (None: every field) whose facts (see
    _option) have the values given, e.g. field_names(resumes=False)."""
    return [spec.name for spec in dataclasses.fields(Config)
            if (script is None or script in spec.metadata["scripts"])
            and all(spec.metadata[fact] == value for fact, value in facts.items())]


def flag_name(name, script=None):
    """The command-line flag of a Config field in a script, without its leading --: serve.py's
    serve_batch_size -> max-batch-size; with no script, its flag in the first script that offers it."""
    spec = {spec.name: spec for spec in dataclasses.fields(Config)}[name]
    script = script or spec.metadata["scripts"][0]
    return spec.metadata["flag"].get(script, name.replace("_", "-"))


def add_flags(parser, script):
    """Add `--flag` for each Config field that script offers, with its reason and default in --help
    (and, for train.py, what each recipe sets).

    Flags default to None so `from_args` can tell what the user set from what a
    recipe may fill in.
    """
    for spec in dataclasses.fields(Config):
        if script not in spec.metadata["scripts"]:
            continue
        flag = flag_name(spec.name, script)
        by_recipe = ", ".join(f"{recipe}: {values[spec.name]!r}" for recipe, values in RECIPES.items()
                              if spec.name in values) if script == TRAIN else ""
        reason = spec.metadata["help_in"].get(script, spec.metadata["help"])
        help_text = reason if spec.default is None else (
            f"{reason} (default: {spec.default!r}" + (f"; --recipe {by_recipe})" if by_recipe else ")"))
        kwargs = dict(default=None, help=help_text, dest=spec.name)
        if spec.metadata["choices"]:
            kwargs["choices"] = spec.metadata["choices"]  # shown in --help as {a,b,c}
        if isinstance(spec.default, bool) and spec.name.startswith("no_"):
            kwargs.update(action="store_const", const=True)  # --no-header: argparse would read --no- as False
        elif isinstance(spec.default, bool):
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs["type"] = spec.metadata["value_type"]
            if not spec.metadata["choices"]:
                kwargs["metavar"] = flag.upper().replace("-", "_")
        alias = spec.metadata["alias"].get(script)
        parser.add_argument(f"--{flag}", *([f"--{alias}"] if alias else []), **kwargs)
    return parser


def from_args(args, base=None, script=None):
    """Defaults (or base), then the chosen recipe, then what the user set; validated for script."""
    given = {k: v for k, v in vars(args).items() if v is not None and k in field_names()}
    if script == TRAIN and given.get("train_data") and "model_dir" not in given:
        given["model_dir"] = default_model_dir(given["train_data"])
    config = base or Config()
    recipe = given.get("recipe", config.recipe)
    if recipe not in RECIPES:
        raise ValueError(f"unknown --recipe {recipe!r}; use one of {', '.join(RECIPES)}")
    return dataclasses.replace(config, **{**RECIPES[recipe], **given}).validate(script)


def recorded_defaults(record):
    """The defaults evaluate.py and predict.py start from: a saved model's recorded settings where a
    field is marked recorded="inherited" (where its data is and how it was read), else Config's."""
    base = Config()
    if not record:
        return base
    recorded = record.get("config", {})
    inherited = field_names(recorded="inherited")
    base = dataclasses.replace(base, **{k: v for k, v in recorded.items() if k in inherited})
    if "encoding" not in recorded:  # a model saved before --encoding read bad bytes as U+FFFD
        base = dataclasses.replace(base, encoding=REPLACING_ENCODING)
    return base


GENERIC_DATA_NAMES = ("train", "training", "data", "dataset", "train_data")


def default_model_dir(train_data):
    """Where train.py saves a model of your own data: models/ and the training file's or folder's stem,
    so a second data set never lands on the IMDB model's folder."""
    path = os.path.abspath(train_data)
    stem = os.path.splitext(os.path.basename(path))[0]
    if stem.lower() in GENERIC_DATA_NAMES:  # data/imdb/train.csv -> models/imdb_train
        stem = f"{os.path.basename(os.path.dirname(path))}_{stem}"
    return os.path.join("models", stem)


def resolve(**overrides):
    """A validated Config as the command line would make it, for code and tests."""
    return from_args(argparse.Namespace(**overrides))


def hub_cache_dir():
    """Where TF-Hub models are kept: $TFHUB_CACHE_DIR, else a user cache that is not purged."""
    return os.environ.get("TFHUB_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "tfhub_modules")
