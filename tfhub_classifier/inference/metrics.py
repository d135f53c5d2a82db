"""The evaluation report's metrics: scikit-learn's, on NumPy arrays (no TensorFlow, no matplotlib).

Averages are scikit-learn's: for one label a text, the macro average is over the labels in the truth
or the predictions (a label in neither is not scored 0; it is named in absent_labels); for multi-label,
over every label. Precision, recall and F1 with nothing to divide are 0 (zero_division=0).
"""
import numpy as np
from sklearn import metrics as skm


def sigmoid(logits):
    """Probabilities from logits, in float64 so scores near 0 and 1 keep their order."""
    return 1.0 / (1.0 + np.exp(-np.asarray(logits, dtype=np.float64)))


def softmax(logits):
    logits = np.asarray(logits, dtype=np.float64)
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


def sigmoid_cross_entropy(labels, logits):
    """Binary cross-entropy from logits in the stable form Keras uses: scikit-learn's log_loss takes
    probabilities, which saturate to 0 or 1 for confident logits and would be clipped."""
    labels, logits = np.asarray(labels, dtype=np.float64), np.asarray(logits, dtype=np.float64)
    return float(np.mean(np.maximum(logits, 0) - logits * labels + np.log1p(np.exp(-np.abs(logits)))))


def roc_auc(labels, scores):
    """ROC AUC, NaN when the labels hold only one class (it is undefined then)."""
    labels = np.asarray(labels)
    if labels.min(initial=1) == labels.max(initial=0):
        return float("nan")
    return float(skm.roc_auc_score(labels, scores))


def roc_curve(labels, scores):
    """False and true positive rates at every distinct threshold, from (0, 0) to (1, 1)."""
    false_positive_rate, true_positive_rate, _ = skm.roc_curve(labels, scores)
    return false_positive_rate, true_positive_rate


def pr_curve(labels, scores):
    """Recall and precision at every distinct threshold, and the average precision (the area under it)."""
    precision, recall, _ = skm.precision_recall_curve(labels, scores)
    return recall, precision, float(skm.average_precision_score(labels, scores))


def _require_texts(labels):
    if len(labels) == 0:
        raise ValueError("no texts to evaluate; check the test data and --max-examples")


def binary_metrics(labels, logits, threshold=0.5):
    """Loss, accuracy, precision, recall and F1 of the positive (second) label, ROC AUC and the
    confusion matrix of logits vs 0/1 labels, at threshold."""
    labels = np.asarray(labels, dtype=np.int64)
    _require_texts(labels)
    scores = sigmoid(np.asarray(logits, dtype=np.float64))
    predicted = (scores >= threshold).astype(np.int64)
    precision, recall, f1, _ = skm.precision_recall_fscore_support(labels, predicted, average="binary",
                                                                   zero_division=0)
    return {
        "loss": sigmoid_cross_entropy(labels, logits),
        "accuracy": float(skm.accuracy_score(labels, predicted)),
        "precision": float(precision),
        "recall": float(recall),
        "f1": float(f1),
        "roc_auc": roc_auc(labels, scores),
        # rows: true first, second label; columns: predicted first, second
        "confusion_matrix": skm.confusion_matrix(labels, predicted, labels=[0, 1]).tolist(),
        "threshold": threshold,
        "examples": int(len(labels)),
    }


def _label_scores(label_names, labels, predicted):
    """The macro, micro and weighted averages, the per-label table and the labels no test text has."""
    indexes = list(range(len(label_names)))
    report = {}
    for average in ("macro", "micro", "weighted"):
        # macro for one label a text: over the labels present in truth or prediction, as scikit-learn's
        # default labels=None gives; multi-label indicator matrices average over every label.
        precision, recall, f1, _ = skm.precision_recall_fscore_support(labels, predicted, average=average,
                                                                       zero_division=0)
        report[average] = {"precision": float(precision), "recall": float(recall), "f1": float(f1)}
    precision, recall, f1, support = skm.precision_recall_fscore_support(labels, predicted, labels=indexes,
                                                                         average=None, zero_division=0)
    report["per_label"] = {name: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
                           for name, p, r, f, s in zip(label_names, precision, recall, f1, support)}
    report["absent_labels"] = [name for name, count in zip(label_names, support) if not count]
    predicted = np.asarray(predicted)
    given = predicted.sum(axis=0) if predicted.ndim == 2 else np.bincount(predicted, minlength=len(label_names))
    report["never_predicted"] = [name for name, count in zip(label_names, given) if not count]
    # One label a text: a label given to every text shows as the others never given.
    report["always_predicted"] = [name for name, count in zip(label_names, given)
                                  if predicted.ndim == 2 and count == len(predicted)]
    return report


def roc_auc_one_vs_rest(labels_one_hot, probabilities):
    """Macro average of each label's ROC AUC against the rest (labels without both outcomes skipped)."""
    scores = [roc_auc(labels_one_hot[:, k], probabilities[:, k]) for k in range(labels_one_hot.shape[1])]
    scores = [s for s in scores if not np.isnan(s)]
    return float(np.mean(scores)) if scores else float("nan")


def binary_report(label_names, labels, logits, threshold=0.5):
    """binary_metrics, plus both labels' scores and their averages: on imbalanced data the positive
    label's alone can mislead."""
    report = binary_metrics(labels, logits, threshold)
    predicted = (sigmoid(logits) >= threshold).astype(np.int64)
    return {**report, **_label_scores(label_names, np.asarray(labels, dtype=np.int64), predicted)}


def multiclass_report(label_names, labels, probabilities):
    labels = np.asarray(labels, dtype=np.int64)
    _require_texts(labels)
    indexes = list(range(len(label_names)))
    predicted = np.argmax(probabilities, axis=-1)
    return {
        "loss": float(skm.log_loss(labels, probabilities, labels=indexes)),
        "accuracy": float(skm.accuracy_score(labels, predicted)),
        **_label_scores(label_names, labels, predicted),
        "confusion_matrix": skm.confusion_matrix(labels, predicted, labels=indexes).tolist(),  # rows: true
        "roc_auc_ovr_macro": roc_auc_one_vs_rest(np.eye(len(label_names), dtype=np.int64)[labels], probabilities),
        "examples": int(len(labels)),
    }


def multilabel_report(label_names, labels, logits, probabilities, threshold):
    """threshold: one for every label, or a list with one per label."""
    labels = np.asarray(labels, dtype=np.int64)
    _require_texts(labels)
    predicted = (probabilities >= np.asarray(threshold, dtype=np.float64)).astype(np.int64)
    return {
        "loss": sigmoid_cross_entropy(labels, logits),  # per label, as training's loss
        "subset_accuracy": float(skm.accuracy_score(labels, predicted)),
        "hamming_loss": float(skm.hamming_loss(labels, predicted)),
        **_label_scores(label_names, labels, predicted),
        "roc_auc_ovr_macro": roc_auc_one_vs_rest(labels, probabilities),
        "threshold": threshold,
        "examples": int(len(labels)),
    }
