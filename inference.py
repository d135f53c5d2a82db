"""Using a saved classifier: evaluate it on the IMDB test split, or score any texts."""
import csv
import dataclasses
import io
import json
import os
import sys

import numpy as np

import config
import datasets
import imdb
import reporting
import runtime
import saving
import scoring
import tasks


def load_model(model_dir, precision):
    """Set the precision rewrite, then load; returns (model, run record, precision in force)."""
    precision = runtime.set_precision(precision)
    model, record = saving.load(model_dir)
    return model, record, precision


def evaluate(cfg, show_errors=0, threshold=0.5, log=print):
    """Metrics of the saved model in cfg.model_dir on its test data (IMDB's test split, or
    --test-data), written beside the model as evaluation.json, with plots in cfg.plots_dir."""
    model, record, precision = load_model(cfg.model_dir, cfg.precision)
    task = task_of_record(record)
    test = evaluation_split(cfg, task, log)
    log(f"Evaluating {cfg.model_dir} on {len(test):,} test texts ({task.kind}, {precision}) ...")
    logits = scoring.logits_of(model, test.texts, cfg.eval_batch_size, progress=True)
    metrics = task.report(test.labels, logits, threshold)
    prefix = os.path.basename(os.path.abspath(cfg.model_dir))
    if task.kind == "binary":
        metrics["plots"] = reporting.plot_evaluation(test.labels, logits, metrics, cfg.plots_dir, prefix,
                                                     task.label_names)
    elif task.kind == "multiclass":
        metrics["plots"] = reporting.plot_confusion(metrics["confusion_matrix"], task.label_names,
                                                    cfg.plots_dir, prefix)
    else:
        metrics["plots"] = {}
    metrics["most_confident_errors"] = confident_errors(task, test, task.probabilities(logits), threshold,
                                                        show_errors)
    metrics["precision_mode"] = precision
    metrics["task"] = {"kind": task.kind, "label_names": list(task.label_names)}
    try:
        with open(os.path.join(cfg.model_dir, "evaluation.json"), "w") as f:
            json.dump(metrics, f, indent=2)
    except OSError as error:  # a read-only model dir still gets its report on screen
        log(f"(could not write evaluation.json beside the model: {error.strerror})")
    return metrics


def evaluation_split(cfg, task, log=print):
    """The labelled texts to evaluate on: --test-data against the model's label names, else IMDB's test split."""
    if cfg.test_data:
        split = datasets.load_split(cfg.test_data, task.label_names, task.kind, cfg.seed, cfg.text_column,
                                    cfg.label_column, cfg.label_separator or None, cfg.no_header, log)
        if cfg.max_examples:
            split = datasets.Split(split.texts[:cfg.max_examples], split.labels[:cfg.max_examples],
                                   split.paths[:cfg.max_examples], split.label_names, split.task)
        return split
    if task.label_names != imdb.CLASS_NAMES:
        raise ValueError(f"{cfg.model_dir} was not trained on IMDB (labels {', '.join(task.label_names)}); "
                         "pass --test-data PATH with its labelled test data")
    _, _, test = imdb.load_splits(cfg, with_train=False)
    return test


def confident_errors(task, split, probabilities, threshold, count):
    """The count texts a single-label model got wrong with the most confidence."""
    if not count or task.kind == "multilabel":
        return []
    predicted = task.predicted_labels(probabilities, threshold)
    wrong = np.nonzero(predicted != split.labels)[0]
    if task.kind == "binary":
        confidence = np.abs(probabilities[wrong] - 0.5)
    else:
        confidence = probabilities[wrong, predicted[wrong]]
    worst = wrong[np.argsort(-confidence, kind="stable")][:count]
    return [{"path": split.paths[i], "label": task.label_names[split.labels[i]],
             "predicted": task.label_names[predicted[i]],
             "score": float(probabilities[i] if task.kind == "binary" else probabilities[i, predicted[i]]),
             "text": split.texts[i]} for i in worst]


def format_metrics(metrics):
    kind = metrics["task"]["kind"]
    names = metrics["task"]["label_names"]
    lines = [f"Loss: {metrics['loss']:.4f}"]
    if kind == "binary":
        (tn, fp), (fn, tp) = metrics["confusion_matrix"]
        lines += [f"Accuracy: {metrics['accuracy']:.4f}",
                  f"Precision: {metrics['precision']:.4f}  Recall: {metrics['recall']:.4f}  F1: {metrics['f1']:.4f}",
                  f"ROC AUC: {metrics['roc_auc']:.4f}",
                  f"Confusion matrix (rows true, columns predicted; {names[0]}, {names[1]}): "
                  f"[[{tn}, {fp}], [{fn}, {tp}]]"]
    else:
        if kind == "multiclass":
            lines.append(f"Accuracy: {metrics['accuracy']:.4f}")
        else:
            lines.append(f"Subset accuracy: {metrics['subset_accuracy']:.4f}  "
                         f"Hamming loss: {metrics['hamming_loss']:.4f}")
        for average in ("macro", "micro", "weighted"):
            scores = metrics[average]
            lines.append(f"{average.capitalize()} precision: {scores['precision']:.4f}  recall: "
                         f"{scores['recall']:.4f}  F1: {scores['f1']:.4f}")
        lines.append(f"ROC AUC (one-vs-rest, macro): {metrics['roc_auc_ovr_macro']:.4f}")
        lines.append(f"{'label':<20} precision  recall  F1      support")
        for name, row in metrics["per_label"].items():
            lines.append(f"{name[:20]:<20} {row['precision']:.4f}     {row['recall']:.4f}  {row['f1']:.4f}  "
                         f"{row['support']}")
        if kind == "multiclass":
            lines.append(f"Confusion matrix (rows true, columns predicted; {', '.join(names)}): "
                         f"{metrics['confusion_matrix']}")
    for error in metrics["most_confident_errors"]:
        snippet = " ".join(error["text"].split())[:100]
        lines.append(f"  wrong, true {error['label']}, predicted {error['predicted']} ({error['score']:.4f}): "
                     f"{snippet}")
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


def predict(model, task, texts, batch_size, progress=False):
    """(text, probabilities) pairs in input order, streamed window by window: a score for a binary
    task, one probability per label otherwise; progress: a bar on stderr."""
    texts = iter(texts)
    pending = []

    def remember():  # keep each text until its score comes back
        for text in texts:
            pending.append(text)
            yield text

    for logits in scoring.score_texts(model, remember(), batch_size, progress=progress):
        done, pending[:] = pending[:len(logits)], pending[len(logits):]
        yield from zip(done, task.probabilities(logits))


def task_of_record(record):
    """The Task a saved model was trained for (models from before issue 10: IMDB's neg/pos)."""
    saved = record.get("task") or {"kind": "binary", "label_names": list(imdb.CLASS_NAMES)}
    return tasks.Task(saved["kind"], tuple(saved["label_names"]))


def display_names(task):
    """Label names as predict.py prints them: IMDB's neg/pos folders as the words it always printed."""
    return imdb.DISPLAY_NAMES if task.label_names == imdb.CLASS_NAMES else task.label_names


def _as_text(text):
    return text.decode("utf-8", errors="replace") if isinstance(text, bytes) else text


def labelled(task, probabilities, threshold=0.5, top_k=1):
    """What the model says of one text, as a dict: binary, the positive label's score and the label it
    gives; multi-class, the top label and its probability, and the top_k; multi-label, every label at or
    over the threshold, and each label's probability."""
    names = display_names(task)
    if task.kind == "binary":
        score = float(probabilities)
        return {"score": round(score, 6), "label": names[int(score >= threshold)]}
    if task.kind == "multiclass":
        ranked = np.argsort(-probabilities, kind="stable")[:top_k]
        top = [{"label": names[i], "probability": round(float(probabilities[i]), 6)} for i in ranked]
        return {"label": top[0]["label"], "probability": top[0]["probability"], "top_k": top}
    return {"labels": [name for name, p in zip(names, probabilities) if p >= threshold],
            "probabilities": {name: round(float(p), 6) for name, p in zip(names, probabilities)}}


def json_result(task, probabilities, threshold=0.5, top_k=1):
    """One text's result as predict.py's JSON Lines and serve.py's predictions give it (without the text)."""
    result = labelled(task, probabilities, threshold, top_k)
    if task.kind == "multiclass" and top_k == 1:
        result.pop("top_k")  # the top label is already there
    return result


class Writer:
    """Writes each text's label(s) and probabilities as an aligned table, JSON Lines or CSV.

    binary: the positive label's score and the label it gives; multi-class: the top_k labels with
    their probabilities; multi-label: every label at or over the threshold, and each label's probability.
    """

    def __init__(self, output_format, task, threshold=0.5, top_k=1, stream=None):
        self.format, self.task, self.threshold, self.top_k = output_format, task, threshold, top_k
        self.stream = stream or sys.stdout
        self.csv = csv.writer(self.stream) if output_format == "csv" else None
        if self.csv:
            self.csv.writerow(self._csv_header())

    def _csv_header(self):
        if self.task.kind == "binary":
            return ["text", "score", "label"]
        if self.task.kind == "multiclass":
            return ["text"] + [f"{field}_{rank}" if rank > 1 else field for rank in range(1, self.top_k + 1)
                               for field in ("label", "probability")]
        return ["text", "labels"] + list(self.task.label_names)

    def write(self, text, probabilities):
        text = _as_text(text)
        if self.format == "jsonl":
            result = json_result(self.task, probabilities, self.threshold, self.top_k)
            self.stream.write(json.dumps({"text": text, **result}) + "\n")
            return
        result = labelled(self.task, probabilities, self.threshold, self.top_k)
        if self.csv:
            self.csv.writerow([text] + self._csv_fields(result))
        else:
            shown = " ".join(text.split())
            shown = shown if len(shown) <= 60 else shown[:59] + "…"
            self.stream.write(self._table_line(shown, result, probabilities) + "\n")

    def _csv_fields(self, result):
        if self.task.kind == "binary":
            return [f"{result['score']:.6f}", result["label"]]
        if self.task.kind == "multiclass":
            return [value for entry in result["top_k"] for value in (entry["label"], f"{entry['probability']:.6f}")]
        return ["|".join(result["labels"])] + [f"{p:.6f}" for p in result["probabilities"].values()]

    def _table_line(self, shown, result, probabilities):
        if self.task.kind == "binary":
            return reporting.format_scores([shown], [float(probabilities)], self.threshold,
                                           display_names(self.task))[0]
        if self.task.kind == "multiclass":
            labels = ", ".join(f"{entry['label']} ({entry['probability']:.4f})" for entry in result["top_k"])
        else:
            labels = ", ".join(f"{name} ({result['probabilities'][name]:.4f})" for name in result["labels"]) or "-"
        return f"input: {shown:<30} : {labels}"


def check_top_k(task, top_k):
    """ValueError unless --top-k suits the model: only multi-class models rank labels."""
    if top_k != 1 and task.kind != "multiclass":
        raise ValueError(f"--top-k is for multi-class models; this one is {task.kind}: "
                         + ("use --threshold" if task.kind == "multilabel" else "drop --top-k"))
    if not 1 <= top_k <= len(task.label_names):
        raise ValueError(f"--top-k must be between 1 and the model's {len(task.label_names)} labels, "
                         f"got {top_k}")
    return top_k


# What evaluate.py takes from the model's run record unless flags say otherwise: where its test data is.
EVALUATION_SETTINGS = ("data_dir", "dataset_url", "dataset_md5", "seed", "eval_batch_size", "plots_dir",
                       "train_data", "test_data", "text_column", "label_column", "label_separator", "no_header")
# How the recorded test file is read: not inherited when --test-data names another file.
READING_SETTINGS = ("text_column", "label_column", "label_separator", "no_header")


def evaluation_config(args):
    """The Config evaluate.py uses: the model's own recorded data settings, then the flags."""
    record = _recorded_run(args.model_dir or config.Config.model_dir)
    base = config.Config()
    if record:
        recorded = record.get("config", {})
        known = {f.name for f in dataclasses.fields(config.Config)}
        base = dataclasses.replace(base, **{k: v for k, v in recorded.items()
                                            if k in known and k in EVALUATION_SETTINGS
                                            and not (args.test_data and k in READING_SETTINGS)})
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
