"""Choosing the threshold and fitting the temperature on validation scores, against brute force and
scikit-learn."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn import metrics as skm

import config
from tfhub_classifier.inference import calibration, evaluation, thresholds


def scored(seed, count=60):
    """0/1 labels and noisy scores that mostly rank them."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, count)
    labels[:2] = [0, 1]
    scores = np.clip(0.3 * labels + 0.35 + rng.normal(0, 0.2, count), 0.001, 0.999).round(3)
    return labels, scores


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1))
def test_the_f1_threshold_is_the_best_of_every_candidate(seed):
    labels, scores = scored(seed)
    threshold, reason = thresholds.choose(labels, scores, "f1")
    best = max(skm.f1_score(labels, scores >= t) for t in np.unique(scores))
    assert reason is None and skm.f1_score(labels, scores >= threshold) == pytest.approx(best)


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), target=st.sampled_from([0.6, 0.7, 0.8]),
       name=st.sampled_from(["precision", "recall"]))
def test_a_precision_or_recall_target_is_met_with_the_most_of_the_other(seed, target, name):
    labels, scores = scored(seed)
    threshold, reason = thresholds.choose(labels, scores, f"{name}:{target}")
    measure = {"precision": skm.precision_score, "recall": skm.recall_score}
    other = measure["recall" if name == "precision" else "precision"]
    meeting = [t for t in np.unique(scores) if measure[name](labels, scores >= t, zero_division=0) >= target]
    if not meeting:
        assert (threshold, reason) == (0.5, f"no threshold reaches {name} {target:g} on the validation texts")
        return
    assert measure[name](labels, scores >= threshold, zero_division=0) >= target
    assert other(labels, scores >= threshold, zero_division=0) == pytest.approx(
        max(other(labels, scores >= t, zero_division=0) for t in meeting))


def test_multilabel_thresholds_are_chosen_per_label_and_a_label_without_both_values_keeps_half():
    labels_a, scores_a = scored(1)
    labels = np.stack([labels_a, np.zeros_like(labels_a)], axis=1)
    scores = np.stack([scores_a, scores_a], axis=1)
    chosen, kept = thresholds.choose_all("multilabel", labels, scores, "f1")
    assert chosen[0] == thresholds.choose(labels_a, scores_a, "f1")[0] and chosen[1] == 0.5
    assert kept == {1: "the validation texts have only one value of this label"}


@pytest.mark.parametrize("spec", ["f2", "precision", "precision:1.5", "recall:-0.1", "accuracy:0.9"])
def test_a_threshold_metric_the_suite_cannot_choose_by_is_refused(spec):
    with pytest.raises(ValueError, match="is not one the suite can choose by; use f1, precision:P or recall:R"):
        config.resolve(threshold_metric=spec)


@pytest.mark.parametrize("spec", ["f1", "precision:0.9", "recall:.85", "recall:1"])
def test_the_threshold_metrics_offered_are_accepted(spec):
    assert config.resolve(threshold_metric=spec).threshold_metric == spec


@pytest.mark.parametrize("kind", ["binary", "multiclass", "multilabel"])
def test_the_temperature_is_the_minimum_of_the_negative_log_likelihood(kind):
    rng = np.random.default_rng(0)
    shape = {"binary": (200,), "multiclass": (200, 4), "multilabel": (200, 3)}[kind]
    logits = rng.normal(0, 4, shape)  # overconfident: T > 1 helps
    if kind == "multiclass":
        labels = np.where(rng.random(200) < 0.7, logits.argmax(axis=1), rng.integers(0, 4, 200))
    else:
        labels = ((logits + rng.normal(0, 3, shape)) > 0).astype(int)
    temperature = calibration.fit_temperature(kind, labels, logits)
    grid = np.exp(np.linspace(np.log(0.05), np.log(20), 4001))
    nll = [calibration.negative_log_likelihood(kind, labels, logits / t) for t in grid]
    assert temperature == pytest.approx(grid[int(np.argmin(nll))], rel=5e-3)
    assert temperature > 1


def test_the_negative_log_likelihood_is_scikit_learns_log_loss():
    rng = np.random.default_rng(1)
    logits, labels = rng.normal(0, 2, (50, 3)), rng.integers(0, 3, 50)
    assert calibration.negative_log_likelihood("multiclass", labels, logits) == pytest.approx(
        skm.log_loss(labels, calibration.probabilities("multiclass", logits), labels=[0, 1, 2]))
    binary_logits, binary_labels = rng.normal(0, 2, 50), rng.integers(0, 2, 50)
    assert calibration.negative_log_likelihood("binary", binary_labels, binary_logits) == pytest.approx(
        skm.log_loss(binary_labels, calibration.probabilities("binary", binary_logits)))


def test_ece_is_the_weighted_gap_between_confidence_and_accuracy():
    # Multi-class: 10 texts at confidence 0.9, half right; 10 at 0.6, all right.
    probabilities = np.array([[0.9, 0.1]] * 10 + [[0.4, 0.6]] * 10)
    labels = np.array([0] * 5 + [1] * 5 + [1] * 10)
    assert calibration.expected_calibration_error("multiclass", labels, probabilities) == pytest.approx(
        0.5 * abs(0.5 - 0.9) + 0.5 * abs(1.0 - 0.6))
    # Binary: a score of 0.2 is a confident 0.8 for the negative label.
    scores, truth = np.array([0.2, 0.2, 0.2, 0.2, 0.7]), np.array([0, 0, 0, 1, 1])
    assert calibration.expected_calibration_error("binary", truth, scores) == pytest.approx(
        0.8 * abs(0.75 - 0.8) + 0.2 * abs(1.0 - 0.7))
    bins = calibration.reliability("binary", truth, scores)
    assert sum(row["count"] for row in bins) == 5 and len(bins) == calibration.BINS


def test_brier_scores_are_scikit_learns():
    rng = np.random.default_rng(2)
    scores, labels = rng.random(40), rng.integers(0, 2, 40)
    assert calibration.brier_score("binary", labels, scores) == pytest.approx(skm.brier_score_loss(labels, scores))
    probabilities = rng.dirichlet(np.ones(3), 40)
    classes = rng.integers(0, 3, 40)
    one_hot = np.eye(3)[classes]
    assert calibration.brier_score("multiclass", classes, probabilities) == pytest.approx(
        sum(skm.brier_score_loss(one_hot[:, k], probabilities[:, k]) for k in range(3)))


def test_a_binary_report_names_its_positive_label_and_lists_both_classes():
    from tfhub_classifier import tasks
    labels = np.array([1] * 10 + [0] * 90)  # 10 frauds, 1 caught
    logits = np.array([3.0] + [-3.0] * 9 + [-3.0] * 90)
    report = tasks.Task("binary", ("legit", "fraud")).report(labels, logits, 0.5)
    shown = evaluation.format_metrics({**report, "task": {"kind": "binary", "label_names": ["legit", "fraud"]},
                                       "most_confident_errors": [], "plots": {}, "threshold_source": "the default"})
    assert "Positive label: fraud (at threshold 0.5000, the default)" in shown
    assert "Precision: 1.0000  Recall: 0.1000  F1: 0.1818  (of fraud)" in shown
    predicted = (logits > 0).astype(int)
    assert f"Macro F1: {skm.f1_score(labels, predicted, average='macro'):.4f}" in shown
    assert any(line.startswith("legit") and line.split()[2] == "1.0000" for line in shown)  # legit's recall


def test_a_label_the_model_never_gives_or_always_gives_is_warned_of():
    from tfhub_classifier import tasks
    labels = np.array([1] * 10 + [0] * 90)
    everything_fraud = tasks.Task("binary", ("legit", "fraud")).report(labels, np.full(100, 2.0), 0.5)
    shown = evaluation.format_metrics({**everything_fraud, "most_confident_errors": [], "plots": {},
                                       "task": {"kind": "binary", "label_names": ["legit", "fraud"]}})
    assert any(line.startswith("warning: the model gives no test text the label(s): legit;") for line in shown)
    multilabel = tasks.Task("multilabel", ("a", "b", "c"))
    report = multilabel.report(np.array([[1, 0, 0], [0, 1, 0]]), np.array([[3.0, -3, 3], [3, 3, 3]]), 0.5)
    assert (report["never_predicted"], report["always_predicted"]) == ([], ["a", "c"])
    shown = evaluation.format_metrics({**report, "most_confident_errors": [], "plots": {},
                                       "task": {"kind": "multilabel", "label_names": ["a", "b", "c"]}})
    assert "warning: the model gives every test text the label(s): a, c" in shown
