"""What differs between binary, multi-class and multi-label classification, in one place.

A `Task` owns the head's width, the loss and Keras metrics, logits -> probabilities ->
labels, and the report's metrics, so training, evaluation and prediction need not branch on
the kind of task themselves. Nothing here imports TensorFlow until a Keras object is asked for.
"""
from dataclasses import dataclass

import numpy as np

from tfhub_classifier.inference import metrics

KINDS = ("binary", "multiclass", "multilabel")


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
        """scikit-learn's 'balanced' weights: {class: n / (classes present x count)} as Keras' class_weight
        for single-label tasks (1.0 for a class absent from labels); for multi-label, each label's
        negatives / positives as its positive weight."""
        labels = np.asarray(labels)
        if self.kind == "multilabel":
            positives = labels.sum(axis=0)
            return np.where(positives > 0, (len(labels) - positives) / np.maximum(positives, 1), 1.0)
        counts = np.bincount(labels.astype(np.int64), minlength=len(self.label_names))
        present = int(np.count_nonzero(counts))  # compute_class_weight counts only the classes in y
        return {k: float(len(labels) / (present * count)) if count else 1.0 for k, count in enumerate(counts)}

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
        return metrics.softmax(logits) if self.kind == "multiclass" else metrics.sigmoid(logits)

    def predicted_labels(self, probabilities, threshold=0.5):
        """Label indexes (binary, multi-class) or a 0/1 matrix (multi-label)."""
        if self.kind == "multiclass":
            return np.argmax(probabilities, axis=-1)
        return (np.asarray(probabilities) >= threshold).astype(np.int64)

    def report(self, labels, logits, threshold=0.5):
        """The evaluation metrics of logits against true labels."""
        if self.kind == "binary":
            return metrics.binary_report(self.label_names, labels, logits, threshold)
        if self.kind == "multiclass":
            return metrics.multiclass_report(self.label_names, labels, self.probabilities(logits))
        return metrics.multilabel_report(self.label_names, labels, logits, self.probabilities(logits), threshold)
