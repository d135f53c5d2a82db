"""Using a saved classifier: evaluate it on the IMDB test split, or score any texts."""
import csv
import dataclasses
import io
import json
import os
import sys

import numpy as np

import reporting
import saving
import scoring
import config
import imdb
import runtime


def load_model(model_dir, precision):
    """Set the precision rewrite, then load; returns (model, run record, precision in force)."""
    precision = runtime.set_precision(precision)
    model, record = saving.load(model_dir)
    return model, record, precision


def evaluate(cfg, show_errors=0, threshold=0.5, log=print):
    """Metrics of the saved model in cfg.model_dir on the test split, written beside the model
    as evaluation.json, with plots in cfg.plots_dir."""
    model, record, precision = load_model(cfg.model_dir, cfg.precision)
    _, _, test = imdb.load_splits(cfg, with_train=False)
    log(f"Evaluating {cfg.model_dir} on {len(test):,} test reviews ({precision}) ...")
    logits = scoring.logits_of(model, test.texts, cfg.eval_batch_size, progress=True)
    metrics = reporting.binary_metrics(test.labels, logits, threshold)
    prefix = os.path.basename(os.path.abspath(cfg.model_dir))
    metrics["plots"] = reporting.plot_evaluation(test.labels, logits, metrics, cfg.plots_dir, prefix)
    metrics["most_confident_errors"] = confident_errors(test, logits, threshold, show_errors)
    metrics["precision_mode"] = precision
    try:
        with open(os.path.join(cfg.model_dir, "evaluation.json"), "w") as f:
            json.dump(metrics, f, indent=2)
    except OSError as error:  # a read-only model dir still gets its report on screen
        log(f"(could not write evaluation.json beside the model: {error.strerror})")
    return metrics


def confident_errors(split, logits, threshold, count):
    """The count reviews the model got wrong with the most confidence."""
    if not count:
        return []
    scores = reporting.sigmoid(logits)
    wrong = np.nonzero((scores >= threshold).astype(int) != split.labels)[0]
    worst = wrong[np.argsort(-np.abs(scores[wrong] - 0.5), kind="stable")][:count]
    return [{"path": split.paths[i], "label": imdb.CLASS_NAMES[split.labels[i]],
             "score": float(scores[i]), "text": split.texts[i]} for i in worst]


def format_metrics(metrics):
    (tn, fp), (fn, tp) = metrics["confusion_matrix"]
    lines = [f"Loss: {metrics['loss']:.4f}",
             f"Accuracy: {metrics['accuracy']:.4f}",
             f"Precision: {metrics['precision']:.4f}  Recall: {metrics['recall']:.4f}  F1: {metrics['f1']:.4f}",
             f"ROC AUC: {metrics['roc_auc']:.4f}",
             f"Confusion matrix (rows true, columns predicted; neg, pos): [[{tn}, {fp}], [{fn}, {tp}]]"]
    for error in metrics["most_confident_errors"]:
        snippet = " ".join(error["text"].split())[:100]
        lines.append(f"  wrong, true {error['label']}, score {error['score']:.4f}: {snippet}")
    for name, path in metrics["plots"].items():
        lines.append(f"Plot ({name.replace('_', ' ')}): {path}")
    return lines


# ---------------------------------------------------------------- prediction

def read_lines(path):
    """Reviews from a file (one a line) or '-' for standard input, lazily; ValueError if binary."""
    stream = sys.stdin.buffer if path == "-" else open(path, "rb")
    try:
        for number, line in enumerate(stream, start=1):
            if b"\x00" in line:
                raise ValueError(f"{'standard input' if path == '-' else path} looks binary (NUL byte on line "
                                 f"{number}); give a text file with one review per line")
            yield line.rstrip(b"\r\n")
    finally:
        if stream is not sys.stdin.buffer:
            stream.close()


def predict(model, texts, batch_size, progress=False):
    """(text, score) pairs in input order, streamed window by window; progress: a bar on stderr."""
    texts = iter(texts)
    pending = []

    def remember():  # keep each text until its score comes back
        for text in texts:
            pending.append(text)
            yield text

    for logits in scoring.score_texts(model, remember(), batch_size, progress=progress):
        done, pending[:] = pending[:len(logits)], pending[len(logits):]
        yield from zip(done, reporting.sigmoid(logits))


def _as_text(text):
    return text.decode("utf-8", errors="replace") if isinstance(text, bytes) else text


class Writer:
    """Writes scored texts as an aligned table, JSON Lines or CSV."""

    def __init__(self, output_format, threshold, stream=None):
        self.format, self.threshold = output_format, threshold
        self.stream = stream or sys.stdout
        self.csv = csv.writer(self.stream) if output_format == "csv" else None
        if self.csv:
            self.csv.writerow(["text", "score", "label"])

    def write(self, text, score):
        text = _as_text(text)
        label = "positive" if score >= self.threshold else "negative"
        if self.format == "jsonl":
            self.stream.write(json.dumps({"text": text, "score": round(float(score), 6), "label": label}) + "\n")
        elif self.csv:
            self.csv.writerow([text, f"{score:.6f}", label])
        else:
            shown = " ".join(text.split())
            shown = shown if len(shown) <= 60 else shown[:59] + "…"
            self.stream.write(reporting.format_scores([shown], [score], self.threshold)[0] + "\n")


def check_threshold(threshold):
    if not 0 <= threshold <= 1:
        raise ValueError(f"--threshold must be between 0 and 1, got {threshold}")
    return threshold


def evaluation_config(args):
    """The Config evaluate.py uses: the model's own recorded data settings, then the flags."""
    record = _recorded_run(args.model_dir or config.Config.model_dir)
    base = config.Config()
    if record:
        recorded = record.get("config", {})
        known = {f.name for f in dataclasses.fields(config.Config)}
        base = dataclasses.replace(base, **{k: v for k, v in recorded.items()
                                            if k in known and k in ("data_dir", "dataset_url", "dataset_md5",
                                                                    "seed", "eval_batch_size", "plots_dir")})
    return config.from_args(args, base)


def _recorded_run(model_dir):
    """The run record beside a saved model, or None if it can't be read (load() says why)."""
    try:
        with open(os.path.join(model_dir, saving.RUN_RECORD)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def stdout_text():
    """stdout that never fails on characters the terminal's encoding lacks."""
    if isinstance(sys.stdout, io.TextIOWrapper):
        sys.stdout.reconfigure(errors="replace")
    return sys.stdout
