"""Metrics from scores, and the figures: training history and evaluation plots (PNG)."""
import os

import numpy as np

import matplotlib

matplotlib.use("Agg")  # draw to files; works without a display
import matplotlib.pyplot as plt  # noqa: E402


def sigmoid(logits):
    """Probabilities from logits, in float64 so scores near 0 and 1 keep their order."""
    return 1.0 / (1.0 + np.exp(-np.asarray(logits, dtype=np.float64)))


def binary_metrics(labels, logits, threshold=0.5):
    """Loss, accuracy, precision, recall, F1, ROC AUC and confusion matrix of logits vs 0/1 labels."""
    labels = np.asarray(labels, dtype=np.int64)
    logits = np.asarray(logits, dtype=np.float64)
    if len(labels) == 0:
        raise ValueError("no reviews to evaluate; check --data-dir and --max-examples")
    scores = sigmoid(logits)
    predicted = (scores >= threshold).astype(np.int64)
    tp = int(np.sum((predicted == 1) & (labels == 1)))
    tn = int(np.sum((predicted == 0) & (labels == 0)))
    fp = int(np.sum((predicted == 1) & (labels == 0)))
    fn = int(np.sum((predicted == 0) & (labels == 1)))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    # Binary cross-entropy from logits, in the numerically stable form Keras uses.
    loss = np.mean(np.maximum(logits, 0) - logits * labels + np.log1p(np.exp(-np.abs(logits))))
    return {
        "loss": float(loss),
        "accuracy": (tp + tn) / len(labels),
        "precision": precision,
        "recall": recall,
        "f1": 2 * precision * recall / (precision + recall) if precision + recall else 0.0,
        "roc_auc": roc_auc(labels, scores),
        "confusion_matrix": [[tn, fp], [fn, tp]],  # rows: true neg, pos; columns: predicted neg, pos
        "threshold": threshold,
        "examples": int(len(labels)),
    }


def roc_auc(labels, scores):
    """Probability that a random positive outscores a random negative (ties count half)."""
    positives, negatives = int(np.sum(labels == 1)), int(np.sum(labels == 0))
    if not positives or not negatives:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores))
    sorted_scores = scores[order]
    # Average ranks over ties so equal scores count half.
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    average = first + (counts + 1) / 2.0
    ranks[order] = np.repeat(average, counts)
    return float((ranks[labels == 1].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def roc_curve(labels, scores):
    """False and true positive rates at every distinct threshold, from (0, 0) to (1, 1)."""
    order = np.argsort(-scores, kind="mergesort")
    labels, scores = labels[order], scores[order]
    distinct = np.r_[np.nonzero(np.diff(scores))[0], len(scores) - 1]
    tps = np.cumsum(labels)[distinct]
    fps = (distinct + 1) - tps
    return (np.r_[0, fps] / max(fps[-1], 1), np.r_[0, tps] / max(tps[-1], 1))


def _save(figure, path):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def plot_history(history, path, best_epoch=None):
    """The tutorial's two panels, loss and accuracy per epoch, with the kept epoch marked."""
    epochs = np.arange(1, len(history["loss"]) + 1)
    figure, (loss_axes, accuracy_axes) = plt.subplots(2, 1, figsize=(10, 6))
    accuracy = "binary_accuracy" if "binary_accuracy" in history else "accuracy"  # multi-class: accuracy
    for axes, metric, title in ((loss_axes, "loss", "Training and validation loss"),
                                (accuracy_axes, accuracy, "Training and validation accuracy")):
        axes.plot(epochs, history[metric], "r", label=f"Training {metric.split('_')[-1]}")
        if f"val_{metric}" in history:
            axes.plot(epochs, history[f"val_{metric}"], "b", label=f"Validation {metric.split('_')[-1]}")
        if best_epoch is not None:
            axes.axvline(best_epoch, color="gray", linestyle="--", label=f"kept: epoch {best_epoch}")
        axes.set_title(title)
        axes.set_xticks(epochs)
        axes.set_xlabel("Epochs")
        axes.set_ylabel(metric.split("_")[-1].capitalize())
        axes.legend()
    return _save(figure, path)


def plot_confusion(matrix, label_names, plots_dir, prefix):
    """An N x N confusion matrix as counts and as shares of each true label (rows sum to 1)."""
    matrix = np.asarray(matrix)
    shares = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    paths = {}
    for name, values, text in (("confusion_matrix", matrix, lambda v: f"{v:,}"),
                               ("confusion_matrix_normalised", shares, lambda v: f"{v:.2f}")):
        size = 2.5 + 0.6 * len(label_names)
        figure, axes = plt.subplots(figsize=(size + 1, size))
        image = axes.imshow(values, cmap="Blues", vmin=0)
        figure.colorbar(image, ax=axes)
        for (row, column), value in np.ndenumerate(values):
            axes.text(column, row, text(value), ha="center", va="center",
                      color="white" if value > values.max() / 2 else "black")
        ticks = range(len(label_names))
        axes.set_xticks(ticks, label_names, rotation=45, ha="right")
        axes.set_yticks(ticks, label_names)
        axes.set_xlabel("Predicted")
        axes.set_ylabel("True")
        axes.set_title("Confusion matrix" + (" (share of each true label)" if name.endswith("normalised") else ""))
        paths[name] = _save(figure, os.path.join(plots_dir, f"{prefix}_{name}.png"))
    return paths


def plot_evaluation(labels, logits, metrics, plots_dir, prefix, label_names=("neg", "pos")):
    """Confusion matrix, ROC curve and score histogram by true class; returns the paths."""
    labels = np.asarray(labels)
    scores = sigmoid(logits)
    paths = {}

    figure, axes = plt.subplots(figsize=(4.5, 4))
    matrix = np.asarray(metrics["confusion_matrix"])
    axes.imshow(matrix, cmap="Blues")
    for (row, column), count in np.ndenumerate(matrix):
        axes.text(column, row, f"{count:,}", ha="center", va="center",
                  color="white" if count > matrix.max() / 2 else "black")
    axes.set_xticks([0, 1], label_names)
    axes.set_yticks([0, 1], label_names)
    axes.set_xlabel("Predicted")
    axes.set_ylabel("True")
    axes.set_title(f"Confusion matrix (accuracy {metrics['accuracy']:.1%})")
    paths["confusion_matrix"] = _save(figure, os.path.join(plots_dir, f"{prefix}_confusion_matrix.png"))

    figure, axes = plt.subplots(figsize=(4.5, 4))
    false_positive_rate, true_positive_rate = roc_curve(labels, scores)
    axes.plot(false_positive_rate, true_positive_rate, label=f"AUC {metrics['roc_auc']:.4f}")
    axes.plot([0, 1], [0, 1], "k:", label="chance")
    axes.set_xlabel("False positive rate")
    axes.set_ylabel("True positive rate")
    axes.set_title("ROC curve")
    axes.legend()
    paths["roc_curve"] = _save(figure, os.path.join(plots_dir, f"{prefix}_roc_curve.png"))

    figure, axes = plt.subplots(figsize=(6, 4))
    bins = np.linspace(0, 1, 41)
    axes.hist(scores[labels == 0], bins=bins, alpha=0.6, label=f"true {label_names[0]}")
    axes.hist(scores[labels == 1], bins=bins, alpha=0.6, label=f"true {label_names[1]}")
    axes.axvline(metrics["threshold"], color="k", linestyle=":", label="threshold")
    axes.set_xlabel("Positive score")
    axes.set_ylabel("Reviews")
    axes.set_title("Scores by true class")
    axes.legend()
    paths["score_histogram"] = _save(figure, os.path.join(plots_dir, f"{prefix}_score_histogram.png"))
    return paths


def format_predictions(texts, probabilities, kind, label_names, threshold=0.5):
    """Aligned lines per text: the tutorial's score line for a binary task, else the most likely
    label (multi-class) or every label over the threshold (multi-label) with its probability."""
    if kind == "binary":
        return format_scores(texts, probabilities, threshold, label_names)
    lines = []
    for text, row in zip(texts, probabilities):
        shown = " ".join(str(text).split())
        shown = shown if len(shown) <= 30 else shown[:29] + "…"
        if kind == "multiclass":
            best = int(np.argmax(row))
            labels = f"{label_names[best]} ({row[best]:.4f})"
        else:
            labels = ", ".join(f"{name} ({p:.4f})" for name, p in zip(label_names, row) if p >= threshold) or "-"
        lines.append(f"input: {shown:<30} : {labels}")
    return lines


def format_scores(texts, scores, threshold=0.5, label_names=("neg", "pos")):
    """The tutorial's aligned lines: input, score and the label it gives."""
    return [f"input: {text!s:<30} : score: {score:.6f} ({label_names[int(score >= threshold)]})"
            for text, score in zip(texts, scores)]
