"""The evaluation as one HTML page people read: the model, its metrics, its figures and its mistakes with
the words behind them. Self-contained (figures inlined as PNG data URIs, styles inline, no scripts), so
it opens offline and can be mailed; every text from the data is escaped (Jinja2's autoescape)."""
import base64
import datetime
import os

import jinja2

from tfhub_classifier import files

REPORT_FILE = "report.html"
REPORT_ERRORS = 5  # mistakes the report explains when --show-errors asks for fewer
CAPTIONS = {"roc_curve": "ROC curve", "pr_curve": "Precision-recall curve", "roc_curves": "ROC curves",
            "pr_curves": "Precision-recall curves"}

TEMPLATES = jinja2.Environment(loader=jinja2.FileSystemLoader(os.path.join(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))), "templates")), autoescape=True, undefined=jinja2.StrictUndefined)


def write(path, name, metrics, record, method, errors):
    """Write the report of metrics (evaluation.evaluate's) for the model whose run record is record, with
    errors: its most confident mistakes, explained (evaluation.confident_errors, with the words)."""
    html_text = TEMPLATES.get_template(REPORT_FILE).render(
        name=name, when=datetime.datetime.now().strftime("%Y-%m-%d %H:%M"), test_size=metrics["examples"],
        model_rows=_model_rows(metrics, record), metric_rows=_metric_rows(metrics), warnings=_warnings(metrics),
        per_label=list(metrics["per_label"].items()), figures=_figures(metrics["plots"]),
        errors=[{**error, "pieces": highlighted(error["text"], error.get("offsets", []), error.get("weights", []))}
                for error in errors], method=method)
    return files.write_bytes(path, html_text.encode("utf-8"))  # never a half-written report


def highlighted(text, offsets, weights):
    """(piece of text, CSS style, title) in order, words shaded by weight (the largest full strength)."""
    largest = max((abs(w) for w in weights if w), default=0.0) or 1.0
    pieces, last = [], 0
    for (start, end), weight in zip(offsets, weights):
        if start > last:
            pieces.append((text[last:start], "", ""))
        if weight:
            colour = "0, 150, 0" if weight > 0 else "220, 0, 0"
            pieces.append((text[start:end], f"background: rgba({colour}, {0.1 + 0.6 * abs(weight) / largest:.2f})",
                           f"{weight:+.4f}"))
        else:
            pieces.append((text[start:end], "", "" if weight is None else "0"))
        last = end
    pieces.append((text[last:], "", ""))
    return pieces


def _model_rows(metrics, record):
    config = record.get("config", {})
    task = metrics["task"]
    sizes = record.get("split_sizes", {})
    rows = [("task", task["kind"]), ("labels", ", ".join(task["label_names"]))]
    if task["kind"] == "binary":
        rows.append(("positive label", task["label_names"][1]))
    rows += [("encoder", record.get("encoder", "")), ("recipe", config.get("recipe", "")),
             ("tokens", f"{config.get('seq_length', '')} ({config.get('truncation', '')})"),
             ("trained on", ", ".join(f"{count:,} {split}" for split, count in sizes.items() if split != "test")),
             ("tested on", f"{metrics['examples']:,} texts"),
             ("precision", metrics.get("precision_mode", ""))]
    if "threshold" in metrics:  # binary and multi-label; multi-class takes the most likely label
        rows.append(("threshold", f"{_threshold(metrics['threshold'])} "
                                  f"({metrics.get('threshold_source', 'the default')})"))
    if "temperature" in metrics.get("calibration", {}):
        rows.append(("temperature", f"{metrics['calibration']['temperature']:.4f}"))
    if record.get("best_epoch"):
        rows.append(("epochs", f"{config.get('epochs', '')} (kept: {record['best_epoch']})"))
    return [(key, value) for key, value in rows if value not in ("", None)]


def _threshold(value):
    return ", ".join(f"{v:.4f}" for v in value) if isinstance(value, list) else f"{value:.4f}"


def _metric_rows(metrics):
    kind = metrics["task"]["kind"]
    rows = [("loss", metrics["loss"])]
    if kind == "binary":
        positive = metrics["task"]["label_names"][1]
        rows += [("accuracy", metrics["accuracy"]), (f"precision (of {positive})", metrics["precision"]),
                 (f"recall (of {positive})", metrics["recall"]), (f"F1 (of {positive})", metrics["f1"]),
                 ("macro F1", metrics["macro"]["f1"]), ("ROC AUC", metrics["roc_auc"])]
    else:
        rows += ([("accuracy", metrics["accuracy"])] if kind == "multiclass" else
                 [("subset accuracy", metrics["subset_accuracy"]), ("Hamming loss", metrics["hamming_loss"])])
        for average in ("macro", "micro", "weighted"):
            rows += [(f"{average} {name}", metrics[average][name]) for name in ("precision", "recall", "f1")]
        rows.append(("ROC AUC (one-vs-rest, macro)", metrics["roc_auc_ovr_macro"]))
    calibrated = metrics.get("calibration") or {}
    if calibrated:
        rows += [("calibration: ECE", calibrated["ece"]), ("calibration: Brier", calibrated["brier"])]
    return [(key, f"{value:.4f}") for key, value in rows]


def _warnings(metrics):
    lines = []
    if metrics.get("never_predicted"):
        lines.append(f"The model gives no test text the label(s): {', '.join(metrics['never_predicted'])}.")
    if metrics.get("always_predicted"):
        lines.append(f"The model gives every test text the label(s): {', '.join(metrics['always_predicted'])}.")
    if metrics.get("absent_labels"):
        lines.append(f"No test text has the label(s): {', '.join(metrics['absent_labels'])}.")
    return lines


def _figures(plots):
    """(caption, data URI) of each figure file that exists."""
    figures = []
    for name, path in plots.items():
        if path and os.path.isfile(path):
            with open(path, "rb") as f:
                figures.append((CAPTIONS.get(name, name.replace("_", " ").capitalize()),
                                "data:image/png;base64," + base64.b64encode(f.read()).decode()))
    return figures
