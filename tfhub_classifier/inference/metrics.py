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


def softmax(logits):
    logits = np.asarray(logits, dtype=np.float64)
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


def _ratio(numerator, denominator):
    """numerator / denominator, 0 where the denominator is 0 (scikit-learn's zero_division=0)."""
    numerator, denominator = np.asarray(numerator, float), np.asarray(denominator, float)
    return np.divide(numerator, denominator, out=np.zeros_like(numerator), where=denominator > 0)


def _f1(precision, recall):
    return _ratio(2 * precision * recall, precision + recall)


def per_label_scores(true_positives, predicted, actual):
    """Precision, recall and F1 per label from counts of true positives, predictions and truths."""
    precision, recall = _ratio(true_positives, predicted), _ratio(true_positives, actual)
    return precision, recall, _f1(precision, recall)


def averaged_scores(true_positives, predicted, actual, every_label=False):
    """Macro, micro and support-weighted precision/recall/F1, as scikit-learn averages them: for one
    label a text, the macro average is over the labels in the truth or the predictions (a label neither
    is not scored 0); every_label (multi-label) averages over all of them, as scikit-learn does there."""
    precision, recall, f1 = per_label_scores(true_positives, predicted, actual)
    micro_precision = _ratio(true_positives.sum(), predicted.sum())
    micro_recall = _ratio(true_positives.sum(), actual.sum())
    weights = actual / actual.sum() if actual.sum() else np.zeros_like(actual, dtype=float)
    scored = np.ones(len(f1), bool) if every_label else (np.asarray(actual) + np.asarray(predicted)) > 0
    return {
        "macro": {"precision": float(precision[scored].mean()), "recall": float(recall[scored].mean()),
                  "f1": float(f1[scored].mean())},
        "micro": {"precision": float(micro_precision), "recall": float(micro_recall),
                  "f1": float(_f1(micro_precision, micro_recall))},
        "weighted": {"precision": float(precision @ weights), "recall": float(recall @ weights),
                     "f1": float(f1 @ weights)},
    }


def _absent(names, actual):
    """The labels no test text has, by name."""
    return [name for name, count in zip(names, actual) if not count]


def _per_label_table(names, true_positives, predicted, actual):
    precision, recall, f1 = per_label_scores(true_positives, predicted, actual)
    return {name: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
            for name, p, r, f, s in zip(names, precision, recall, f1, actual)}


def roc_auc_one_vs_rest(labels_one_hot, probabilities):
    """Macro average of each label's ROC AUC against the rest (labels without both outcomes skipped)."""
    scores = [roc_auc(labels_one_hot[:, k], probabilities[:, k])
              for k in range(labels_one_hot.shape[1])]
    scores = [s for s in scores if not np.isnan(s)]
    return float(np.mean(scores)) if scores else float("nan")


def binary_report(label_names, labels, logits, threshold=0.5):
    """binary_metrics, plus both classes' scores and their averages: on imbalanced data the second
    label's alone can mislead."""
    report = binary_metrics(labels, logits, threshold)
    matrix = np.asarray(report["confusion_matrix"])
    counts = (np.diag(matrix), matrix.sum(axis=0), matrix.sum(axis=1))
    return {**report, **averaged_scores(*counts), "per_label": _per_label_table(label_names, *counts),
            "absent_labels": _absent(label_names, counts[2])}


def multiclass_report(label_names, labels, probabilities):
    labels = np.asarray(labels, dtype=np.int64)
    if len(labels) == 0:
        raise ValueError("no texts to evaluate; check the test data and --max-examples")
    count = len(label_names)
    predicted = np.argmax(probabilities, axis=-1)
    confusion = np.zeros((count, count), dtype=np.int64)
    np.add.at(confusion, (labels, predicted), 1)
    true_positives, predicted_counts, actual = np.diag(confusion), confusion.sum(axis=0), confusion.sum(axis=1)
    return {
        "loss": float(-np.mean(np.log(np.clip(probabilities[np.arange(len(labels)), labels], 1e-12, 1)))),
        "accuracy": float(np.mean(predicted == labels)),
        **averaged_scores(true_positives, predicted_counts, actual),
        "absent_labels": _absent(label_names, actual),
        "per_label": _per_label_table(label_names, true_positives, predicted_counts, actual),
        "confusion_matrix": confusion.tolist(),  # rows: true label, columns: predicted
        "roc_auc_ovr_macro": roc_auc_one_vs_rest(np.eye(count, dtype=np.int64)[labels], probabilities),
        "examples": int(len(labels)),
    }


def multilabel_report(label_names, labels, logits, probabilities, threshold):
    labels, logits = np.asarray(labels, dtype=np.int64), np.asarray(logits, np.float64)
    if len(labels) == 0:
        raise ValueError("no texts to evaluate; check the test data and --max-examples")
    predicted = (probabilities >= threshold).astype(np.int64)
    true_positives = (predicted & labels).sum(axis=0)
    loss = np.mean(np.maximum(logits, 0) - logits * labels + np.log1p(np.exp(-np.abs(logits))))
    return {
        "loss": float(loss),  # sigmoid cross-entropy per label, in the stable form Keras uses
        "subset_accuracy": float(np.mean(np.all(predicted == labels, axis=1))),
        "hamming_loss": float(np.mean(predicted != labels)),
        **averaged_scores(true_positives, predicted.sum(axis=0), labels.sum(axis=0), every_label=True),
        "absent_labels": _absent(label_names, labels.sum(axis=0)),
        "per_label": _per_label_table(label_names, true_positives, predicted.sum(axis=0), labels.sum(axis=0)),
        "roc_auc_ovr_macro": roc_auc_one_vs_rest(labels, probabilities),
        "threshold": threshold,
        "examples": int(len(labels)),
    }
