"""Metrics of scores against true labels, in NumPy (no TensorFlow, no matplotlib)."""
import numpy as np


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
