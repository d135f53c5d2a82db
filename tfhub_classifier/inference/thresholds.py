"""The operating point: the score at or above which a label is given, chosen on validation data.

`--threshold-metric f1` picks the threshold with the best F1; `precision:0.9` the one with the most
recall among those with precision at least 0.9; `recall:0.9` the one with the most precision among
those with recall at least 0.9. Binary tasks get one threshold, multi-label tasks one per label.
NumPy and scikit-learn only.
"""
import re

import numpy as np

DEFAULT = 0.5
METRIC_PATTERN = re.compile(r"f1|(precision|recall):(0?\.\d+|1(\.0*)?)")
METRIC_FORMS = "f1, precision:P or recall:R with P, R between 0 and 1 (e.g. precision:0.9)"


def check_metric(spec):
    """ValueError naming the accepted forms unless spec is one of them ('' = no choice)."""
    if spec and not METRIC_PATTERN.fullmatch(spec):
        raise ValueError(f"--threshold-metric {spec!r} is not one the suite can choose by; use {METRIC_FORMS}")
    return spec


def choose(labels, scores, spec):
    """(threshold, reason) for one label's 0/1 labels and scores: the threshold spec prefers, or
    DEFAULT with the reason none was chosen (reason is None when one was)."""
    from sklearn.metrics import precision_recall_curve
    labels, scores = np.asarray(labels, dtype=np.int64), np.asarray(scores, dtype=np.float64)
    if labels.min(initial=1) == labels.max(initial=0):
        return DEFAULT, "the validation texts have only one value of this label"
    precision, recall, thresholds = precision_recall_curve(labels, scores)
    precision, recall = precision[:-1], recall[:-1]  # the last point (recall 0) has no threshold
    if spec == "f1":
        f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros_like(precision),
                       where=precision + recall > 0)
        return float(thresholds[int(np.argmax(f1))]), None
    name, target = spec.split(":")
    target = float(target)
    reached = (precision if name == "precision" else recall) >= target
    if not reached.any():
        return DEFAULT, f"no threshold reaches {name} {target:g} on the validation texts"
    other = recall if name == "precision" else precision
    candidates = np.nonzero(reached)[0]
    return float(thresholds[candidates[np.argmax(other[candidates])]]), None


def choose_all(kind, labels, probabilities, spec):
    """(thresholds, notes): a float for binary, a list (one per label) for multi-label, and the
    reasons any label kept DEFAULT, as {label index: reason}."""
    if kind == "binary":
        threshold, reason = choose(labels, probabilities, spec)
        return threshold, ({0: reason} if reason else {})
    chosen, notes = [], {}
    labels, probabilities = np.asarray(labels), np.asarray(probabilities)
    for k in range(labels.shape[1]):
        threshold, reason = choose(labels[:, k], probabilities[:, k], spec)
        chosen.append(threshold)
        if reason:
            notes[k] = reason
    return chosen, notes


def as_array(threshold):
    """A saved threshold (a float, or a list per label) as what NumPy compares scores against."""
    return np.asarray(threshold, dtype=np.float64)


def describe(threshold):
    """A threshold as the reports print it."""
    values = np.atleast_1d(as_array(threshold))
    return f"{float(values[0]):.4f}" if values.size == 1 else "per label " + ", ".join(f"{v:.4f}" for v in values)
