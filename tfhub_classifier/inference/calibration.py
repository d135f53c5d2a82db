"""How far the probabilities are from the frequencies they claim, and temperature scaling to close it.

Temperature scaling (Guo et al. 2017, "On Calibration of Modern Neural Networks") divides every
logit by one scalar T > 0 fitted on validation data to minimise the negative log-likelihood; it
never changes which label scores highest. Expected calibration error (ECE) is Guo's: 15 equal-width
bins of the confidence in the label given (for binary and multi-label, max(p, 1 - p) of each
decision at 0.5), weighted by their share of the decisions. NumPy and SciPy only.
"""
import numpy as np

from tfhub_classifier.inference import metrics

BINS = 15  # Guo et al.'s number of bins


def probabilities(kind, logits):
    """tasks.Task.probabilities, without the Task: sigmoid for binary and multi-label, else softmax."""
    logits = np.asarray(logits, dtype=np.float64)
    return metrics.softmax(logits) if kind == "multiclass" else metrics.sigmoid(logits)


def negative_log_likelihood(kind, labels, logits):
    """The mean cross-entropy training minimises: per text (multi-class) or per label decision."""
    logits = np.asarray(logits, dtype=np.float64)
    if kind == "multiclass":
        shifted = logits - logits.max(axis=-1, keepdims=True)
        log_probabilities = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
        return float(-np.mean(log_probabilities[np.arange(len(labels)), np.asarray(labels, dtype=np.int64)]))
    labels = np.asarray(labels, dtype=np.float64).reshape(logits.shape)
    return float(np.mean(np.maximum(logits, 0) - logits * labels + np.log1p(np.exp(-np.abs(logits)))))


def fit_temperature(kind, labels, logits):
    """The T > 0 minimising the NLL of logits / T: a bounded 1-D search on log T (SciPy's Brent)."""
    from scipy.optimize import minimize_scalar
    logits = np.asarray(logits, dtype=np.float64)
    found = minimize_scalar(lambda log_t: negative_log_likelihood(kind, labels, logits / np.exp(log_t)),
                            bounds=(np.log(0.05), np.log(20.0)), method="bounded", options={"xatol": 1e-6})
    return float(np.exp(found.x))


def decisions(kind, labels, probabilities):
    """(confidence, correct) of each decision: the top label's probability and whether it is the true
    one (multi-class); for binary and multi-label, each 0.5 decision's max(p, 1 - p)."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    if kind == "multiclass":
        given = np.argmax(probabilities, axis=-1)
        return probabilities.max(axis=-1), given == np.asarray(labels, dtype=np.int64)
    scores = probabilities.reshape(-1)
    truth = np.asarray(labels).reshape(-1).astype(np.int64)
    return np.maximum(scores, 1 - scores), (scores >= 0.5).astype(np.int64) == truth


def reliability(kind, labels, probabilities, bins=BINS):
    """Per confidence bin (equal widths over [0, 1]; the lowest bin holds its lower edge): the
    decisions' count, mean confidence and accuracy, as the reliability diagram draws them."""
    confidence, correct = decisions(kind, labels, probabilities)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, bins - 1)
    rows = []
    for b in range(bins):
        inside = which == b
        count = int(inside.sum())
        rows.append({"low": float(edges[b]), "high": float(edges[b + 1]), "count": count,
                     "confidence": float(confidence[inside].mean()) if count else None,
                     "accuracy": float(correct[inside].mean()) if count else None})
    return rows


def expected_calibration_error(kind, labels, probabilities, bins=BINS):
    """Guo et al.'s ECE: sum over bins of |accuracy - confidence|, weighted by the bin's share."""
    rows = reliability(kind, labels, probabilities, bins)
    total = sum(row["count"] for row in rows)
    return float(sum(row["count"] / total * abs(row["accuracy"] - row["confidence"]) for row in rows if row["count"]))


def brier_score(kind, labels, probabilities):
    """Mean squared error of the probabilities against the 0/1 truth: summed over the labels of a text
    for multi-class (Brier's original form, 0 to 2), per decision for binary and multi-label (0 to 1)."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    if kind == "multiclass":
        truth = np.eye(probabilities.shape[1])[np.asarray(labels, dtype=np.int64)]
        return float(np.mean(np.sum((probabilities - truth) ** 2, axis=1)))
    return float(np.mean((probabilities - np.asarray(labels, dtype=np.float64).reshape(probabilities.shape)) ** 2))


def summary(kind, labels, logits):
    """ECE, Brier score, NLL and the reliability bins of logits against labels."""
    scores = probabilities(kind, logits)
    return {"ece": expected_calibration_error(kind, labels, scores), "brier": brier_score(kind, labels, scores),
            "nll": negative_log_likelihood(kind, labels, logits), "bins": reliability(kind, labels, scores)}
