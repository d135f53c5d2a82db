"""What differs between binary, multi-class and multi-label classification, in one place.

A `Task` owns the head's width, the loss and Keras metrics, logits -> probabilities ->
labels, and the report's metrics, so training, evaluation and prediction need not branch on
the kind of task themselves. Nothing here imports TensorFlow until a Keras object is asked for.
"""
from dataclasses import dataclass

import numpy as np

from tfhub_classifier.inference import metrics

KINDS = ("binary", "multiclass", "multilabel")


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


def averaged_scores(true_positives, predicted, actual):
    """Macro, micro and support-weighted precision/recall/F1, as scikit-learn averages them."""
    precision, recall, f1 = per_label_scores(true_positives, predicted, actual)
    micro_precision = _ratio(true_positives.sum(), predicted.sum())
    micro_recall = _ratio(true_positives.sum(), actual.sum())
    weights = actual / actual.sum() if actual.sum() else np.zeros_like(actual, dtype=float)
    return {
        "macro": {"precision": float(precision.mean()), "recall": float(recall.mean()), "f1": float(f1.mean())},
        "micro": {"precision": float(micro_precision), "recall": float(micro_recall),
                  "f1": float(_f1(micro_precision, micro_recall))},
        "weighted": {"precision": float(precision @ weights), "recall": float(recall @ weights),
                     "f1": float(f1 @ weights)},
    }


def _per_label_table(names, true_positives, predicted, actual):
    precision, recall, f1 = per_label_scores(true_positives, predicted, actual)
    return {name: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
            for name, p, r, f, s in zip(names, precision, recall, f1, actual)}


def roc_auc_one_vs_rest(labels_one_hot, probabilities):
    """Macro average of each label's ROC AUC against the rest (labels without both outcomes skipped)."""
    scores = [metrics.roc_auc(labels_one_hot[:, k], probabilities[:, k])
              for k in range(labels_one_hot.shape[1])]
    scores = [s for s in scores if not np.isnan(s)]
    return float(np.mean(scores)) if scores else float("nan")


@dataclass(frozen=True)
class Task:
    kind: str
    label_names: tuple

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"unknown task {self.kind!r}; use one of {', '.join(KINDS)}")
        if len(self.label_names) < 2:
            raise ValueError(f"a classifier needs at least 2 labels, got {list(self.label_names)}")
        if self.kind == "binary" and len(self.label_names) != 2:
            raise ValueError(f"a binary task has exactly 2 labels, got {len(self.label_names)}; "
                             "use --task multiclass")

    @property
    def units(self):
        """Logits the head puts out: one for binary (the tutorial's Dense(1)), one per label otherwise."""
        return 1 if self.kind == "binary" else len(self.label_names)

    def loss(self, positive_weights=None):
        """Keras' cross-entropy for the task; positive_weights (multi-label) weigh each label's positives."""
        from tfhub_classifier.runtime import keras, tf
        if self.kind == "multiclass":
            return keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        if positive_weights is None:
            return keras.losses.BinaryCrossentropy(from_logits=True)  # per label for multi-label
        weights = tf.constant(positive_weights, tf.float32)

        def weighted_binary_cross_entropy(labels, logits):
            logits = tf.cast(logits, tf.float32)
            return tf.reduce_mean(tf.nn.weighted_cross_entropy_with_logits(
                tf.cast(labels, tf.float32), logits, weights), axis=-1)
        return weighted_binary_cross_entropy

    def balanced_weights(self, labels):
        """scikit-learn's 'balanced' weights: {class: n / (classes x count)} as Keras' class_weight for
        single-label tasks; for multi-label, each label's negatives / positives as its positive weight."""
        labels = np.asarray(labels)
        if self.kind == "multilabel":
            positives = labels.sum(axis=0)
            return np.where(positives > 0, (len(labels) - positives) / np.maximum(positives, 1), 1.0)
        counts = np.bincount(labels.astype(np.int64), minlength=len(self.label_names))
        return {k: float(len(labels) / (len(counts) * count)) if count else 1.0 for k, count in enumerate(counts)}

    def class_weighting(self, labels):
        """'balanced' weights as (fit's class_weight, the loss's positive weights): Keras' class_weight
        for single-label tasks; the loss for multi-label, where class_weight can't weigh several labels a row."""
        weights = self.balanced_weights(labels)
        return (None, weights) if self.kind == "multilabel" else (weights, None)

    def metrics(self):
        from tfhub_classifier.runtime import keras
        if self.kind == "multiclass":
            return [keras.metrics.SparseCategoricalAccuracy(name="accuracy")]
        return [keras.metrics.BinaryAccuracy(threshold=0.0)]  # on logits

    def probabilities(self, logits):
        logits = np.asarray(logits, dtype=np.float64)
        if self.kind == "binary":
            return metrics.sigmoid(logits.reshape(-1))
        return softmax(logits) if self.kind == "multiclass" else metrics.sigmoid(logits)

    def predicted_labels(self, probabilities, threshold=0.5):
        """Label indexes (binary, multi-class) or a 0/1 matrix (multi-label)."""
        if self.kind == "multiclass":
            return np.argmax(probabilities, axis=-1)
        return (np.asarray(probabilities) >= threshold).astype(np.int64)

    def report(self, labels, logits, threshold=0.5):
        """The evaluation metrics of logits against true labels."""
        if self.kind == "binary":
            report = metrics.binary_metrics(labels, logits, threshold)
            matrix = np.asarray(report["confusion_matrix"])
            counts = (np.diag(matrix), matrix.sum(axis=0), matrix.sum(axis=1))
            # Both classes' scores too: on imbalanced data the second label's alone can mislead.
            return {**report, **averaged_scores(*counts), "per_label": _per_label_table(self.label_names, *counts)}
        probabilities = self.probabilities(logits)
        if self.kind == "multiclass":
            return self._multiclass_report(np.asarray(labels, dtype=np.int64), probabilities)
        return self._multilabel_report(np.asarray(labels, dtype=np.int64), np.asarray(logits, np.float64),
                                       probabilities, threshold)

    def _multiclass_report(self, labels, probabilities):
        if len(labels) == 0:
            raise ValueError("no texts to evaluate; check the test data and --max-examples")
        count = len(self.label_names)
        predicted = np.argmax(probabilities, axis=-1)
        confusion = np.zeros((count, count), dtype=np.int64)
        np.add.at(confusion, (labels, predicted), 1)
        true_positives, predicted_counts, actual = np.diag(confusion), confusion.sum(axis=0), confusion.sum(axis=1)
        return {
            "loss": float(-np.mean(np.log(np.clip(probabilities[np.arange(len(labels)), labels], 1e-12, 1)))),
            "accuracy": float(np.mean(predicted == labels)),
            **averaged_scores(true_positives, predicted_counts, actual),
            "per_label": _per_label_table(self.label_names, true_positives, predicted_counts, actual),
            "confusion_matrix": confusion.tolist(),  # rows: true label, columns: predicted
            "roc_auc_ovr_macro": roc_auc_one_vs_rest(np.eye(count, dtype=np.int64)[labels], probabilities),
            "examples": int(len(labels)),
        }

    def _multilabel_report(self, labels, logits, probabilities, threshold):
        if len(labels) == 0:
            raise ValueError("no texts to evaluate; check the test data and --max-examples")
        predicted = (probabilities >= threshold).astype(np.int64)
        true_positives = (predicted & labels).sum(axis=0)
        loss = np.mean(np.maximum(logits, 0) - logits * labels + np.log1p(np.exp(-np.abs(logits))))
        return {
            "loss": float(loss),  # sigmoid cross-entropy per label, in the stable form Keras uses
            "subset_accuracy": float(np.mean(np.all(predicted == labels, axis=1))),
            "hamming_loss": float(np.mean(predicted != labels)),
            **averaged_scores(true_positives, predicted.sum(axis=0), labels.sum(axis=0)),
            "per_label": _per_label_table(self.label_names, true_positives, predicted.sum(axis=0),
                                          labels.sum(axis=0)),
            "roc_auc_ovr_macro": roc_auc_one_vs_rest(labels, probabilities),
            "threshold": threshold,
            "examples": int(len(labels)),
        }
