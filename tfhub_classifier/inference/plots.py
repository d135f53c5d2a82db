"""The figures: training history and evaluation plots, as PNG files."""
import os

import matplotlib
import numpy as np

from tfhub_classifier.inference.metrics import pr_curve, roc_curve, sigmoid

matplotlib.use("Agg")  # draw to files; works without a display
import matplotlib.pyplot as plt  # noqa: E402


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
    """Confusion matrix, ROC and precision-recall curves, and score histogram by true class; returns the paths."""
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

    figure, axes = plt.subplots(figsize=(4.5, 4))
    recall, precision, average = pr_curve(labels, scores)
    axes.plot(recall, precision, label=f"average precision {average:.4f}")
    axes.axhline(labels.mean(), color="k", linestyle=":", label="chance")
    axes.set_xlabel(f"Recall (of {label_names[1]})")
    axes.set_ylabel("Precision")
    axes.set_title("Precision-recall curve")
    axes.legend()
    paths["pr_curve"] = _save(figure, os.path.join(plots_dir, f"{prefix}_pr_curve.png"))

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


def plot_one_vs_rest(labels_one_hot, probabilities, label_names, plots_dir, prefix):
    """Multi-class and multi-label models: each label's ROC and precision-recall curve against the rest."""
    labels_one_hot, probabilities = np.asarray(labels_one_hot), np.asarray(probabilities)
    figures = {name: plt.subplots(figsize=(5.5, 4.5)) for name in ("roc_curves", "pr_curves")}
    for index, name in enumerate(label_names):
        truth, scores = labels_one_hot[:, index], probabilities[:, index]
        if truth.min() == truth.max():  # a label no test text has, or every one: no curve to draw
            continue
        figures["roc_curves"][1].plot(*roc_curve(truth, scores), label=name)
        recall, precision, average = pr_curve(truth, scores)
        figures["pr_curves"][1].plot(recall, precision, label=f"{name} (AP {average:.3f})")
    for name, (_, axes) in figures.items():
        roc = name == "roc_curves"
        if roc:
            axes.plot([0, 1], [0, 1], "k:", label="chance")
        axes.set_xlabel("False positive rate" if roc else "Recall")
        axes.set_ylabel("True positive rate" if roc else "Precision")
        axes.set_title(("ROC" if roc else "Precision-recall") + " curves, each label against the rest")
        axes.legend(fontsize="small")
    return {name: _save(figure, os.path.join(plots_dir, f"{prefix}_{name}.png"))
            for name, (figure, _) in figures.items()}


def plot_reliability(calibrated, path, uncalibrated=None):
    """The reliability diagram: each confidence bin's accuracy against its mean confidence (the
    diagonal is perfect calibration), with the uncalibrated bins beside when temperature scaling was
    applied. Each argument is calibration.summary's output."""
    figure, axes = plt.subplots(figsize=(5, 5))
    axes.plot([0, 1], [0, 1], "k:", label="perfectly calibrated")
    after = "after temperature scaling" if uncalibrated is not None else "model"
    for summary, style, name in ((uncalibrated, "s--", "before temperature scaling"), (calibrated, "o-", after)):
        if summary is None:
            continue
        filled = [row for row in summary["bins"] if row["count"]]
        axes.plot([row["confidence"] for row in filled], [row["accuracy"] for row in filled], style,
                  label=f"{name} (ECE {summary['ece']:.4f})")
    axes.set_xlim(0, 1)
    axes.set_ylim(0, 1)
    axes.set_xlabel("Confidence in the label given")
    axes.set_ylabel("Share of those labels that are right")
    axes.set_title("Reliability diagram")
    axes.legend(loc="upper left", fontsize="small")
    return _save(figure, path)
