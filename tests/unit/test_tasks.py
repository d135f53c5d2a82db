"""Each task's metrics agree with scikit-learn's on random predictions."""
import numpy as np
import pytest
from sklearn import metrics as skm

from tfhub_classifier import tasks

NAMES = ("anger", "joy", "fear", "surprise")


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_multiclass_report_matches_scikit_learn(seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 4, size=300)
    logits = rng.normal(size=(300, 4)) + 1.5 * np.eye(4)[labels] * rng.random((300, 1))
    task = tasks.Task("multiclass", NAMES)
    report = task.report(labels, logits)
    probabilities = task.probabilities(logits)
    predicted = probabilities.argmax(axis=1)
    assert report["accuracy"] == pytest.approx(skm.accuracy_score(labels, predicted))
    assert report["loss"] == pytest.approx(skm.log_loss(labels, probabilities, labels=[0, 1, 2, 3]))
    for average in ("macro", "micro", "weighted"):
        p, r, f, _ = skm.precision_recall_fscore_support(labels, predicted, average=average, zero_division=0)
        assert report[average] == pytest.approx({"precision": p, "recall": r, "f1": f}), average
    p, r, f, s = skm.precision_recall_fscore_support(labels, predicted, zero_division=0)
    assert [report["per_label"][n]["f1"] for n in NAMES] == pytest.approx(f)
    assert [report["per_label"][n]["support"] for n in NAMES] == list(s)
    assert report["confusion_matrix"] == skm.confusion_matrix(labels, predicted).tolist()
    assert report["roc_auc_ovr_macro"] == pytest.approx(
        skm.roc_auc_score(labels, probabilities, multi_class="ovr", average="macro"))


def test_multiclass_with_a_class_never_predicted():
    labels = np.array([0, 1, 2, 2])
    logits = np.array([[5, 0, 0], [0, 5, 0], [0, 5, 0], [0, 5, 0]], dtype=float)
    report = tasks.Task("multiclass", NAMES[:3]).report(labels, logits)
    p, r, f, _ = skm.precision_recall_fscore_support(labels, logits.argmax(1), average="macro", zero_division=0)
    assert report["macro"] == pytest.approx({"precision": p, "recall": r, "f1": f})


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_multilabel_report_matches_scikit_learn(seed):
    rng = np.random.default_rng(seed)
    labels = (rng.random((200, 4)) < 0.3).astype(int)
    logits = rng.normal(size=(200, 4)) + 2.0 * (labels - 0.5) * rng.random((200, 1))
    task = tasks.Task("multilabel", NAMES)
    report = task.report(labels, logits, threshold=0.5)
    probabilities = task.probabilities(logits)
    predicted = (probabilities >= 0.5).astype(int)
    assert report["subset_accuracy"] == pytest.approx(skm.accuracy_score(labels, predicted))
    assert report["hamming_loss"] == pytest.approx(skm.hamming_loss(labels, predicted))
    for average in ("macro", "micro", "weighted"):
        p, r, f, _ = skm.precision_recall_fscore_support(labels, predicted, average=average, zero_division=0)
        assert report[average] == pytest.approx({"precision": p, "recall": r, "f1": f}), average
    _, _, f, s = skm.precision_recall_fscore_support(labels, predicted, zero_division=0)
    assert [report["per_label"][n]["f1"] for n in NAMES] == pytest.approx(f)
    assert report["roc_auc_ovr_macro"] == pytest.approx(skm.roc_auc_score(labels, probabilities, average="macro"))
    expected_loss = np.mean(-(labels * np.log(probabilities) + (1 - labels) * np.log(1 - probabilities)))
    assert report["loss"] == pytest.approx(expected_loss)


def test_binary_keeps_the_tutorials_single_logit():
    task = tasks.Task("binary", ("neg", "pos"))
    assert task.units == 1
    logits = np.array([[-2.0], [0.0], [3.0]])
    np.testing.assert_allclose(task.probabilities(logits), 1 / (1 + np.exp(-logits.reshape(-1))))
    assert task.predicted_labels(task.probabilities(logits)).tolist() == [0, 1, 1]
    assert tasks.Task("multiclass", NAMES).units == 4 and tasks.Task("multilabel", NAMES).units == 4


@pytest.mark.parametrize("kind, names, needle", [
    ("binary", ("a", "b", "c"), "--task multiclass"),
    ("multiclass", ("a",), "at least 2"),
    ("regression", ("a", "b"), "unknown task"),
])
def test_bad_tasks_are_refused(kind, names, needle):
    with pytest.raises(ValueError, match=needle):
        tasks.Task(kind, names)


def test_binary_report_also_scores_both_classes():
    """On imbalanced binary data, the minority's F1 and the macro average are there, not only label 1's."""
    rng = np.random.default_rng(3)
    labels = (rng.random(300) < 0.1).astype(int)
    logits = rng.normal(size=300) + 2 * labels
    report = tasks.Task("binary", ("abuse", "normal")).report(labels, logits)
    predicted = (1 / (1 + np.exp(-logits)) >= 0.5).astype(int)
    p, r, f, _ = skm.precision_recall_fscore_support(labels, predicted, average="macro", zero_division=0)
    assert report["macro"] == pytest.approx({"precision": p, "recall": r, "f1": f})
    _, _, f, _ = skm.precision_recall_fscore_support(labels, predicted, zero_division=0)
    assert [report["per_label"][n]["f1"] for n in ("abuse", "normal")] == pytest.approx(f)
    assert report["f1"] == pytest.approx(f[1])  # the tutorial-style keys stay


def test_balanced_class_weights_are_scikit_learns_exactly():
    """--class-weight balanced: single-label weights are compute_class_weight("balanced"); each label's
    positive weight (multi-label) is the ratio of that label's balanced positive and negative weights."""
    from sklearn.utils.class_weight import compute_class_weight
    rng = np.random.default_rng(4)
    labels = rng.choice(4, size=97, p=[0.6, 0.25, 0.1, 0.05])
    weights = tasks.Task("multiclass", NAMES).balanced_weights(labels)
    assert list(weights) == [0, 1, 2, 3]
    assert list(weights.values()) == pytest.approx(compute_class_weight("balanced", classes=np.arange(4), y=labels),
                                                   rel=1e-12)
    binary = (rng.random(50) < 0.2).astype(int)
    expected = compute_class_weight("balanced", classes=np.arange(2), y=binary)
    assert list(tasks.Task("binary", ("neg", "pos")).balanced_weights(binary).values()) == pytest.approx(
        expected, rel=1e-12)
    matrix = (rng.random((80, 4)) < [0.5, 0.3, 0.1, 0.05]).astype(np.float32)
    positive_weights = tasks.Task("multilabel", NAMES).balanced_weights(matrix)
    for k in range(4):
        negative, positive = compute_class_weight("balanced", classes=np.arange(2), y=matrix[:, k].astype(int))
        assert positive_weights[k] == pytest.approx(positive / negative, rel=1e-6)  # float32, as the loss uses


def test_balanced_class_weights_count_only_the_classes_present():
    """A class absent from the training split neither dilutes the others' weights nor gets one of its own."""
    from sklearn.utils.class_weight import compute_class_weight
    labels = np.array([0] * 6 + [1] * 3 + [3] * 1)  # "fear" (2) never appears
    weights = tasks.Task("multiclass", NAMES).balanced_weights(labels)
    expected = compute_class_weight("balanced", classes=np.array([0, 1, 3]), y=labels)
    assert [weights[k] for k in (0, 1, 3)] == pytest.approx(expected, rel=1e-12)
    assert weights[2] == 1.0


def test_macro_averages_leave_out_a_class_the_test_data_lacks_as_scikit_learn_does():
    """A class no test text has and the model never predicts is not averaged in as F1 = 0; it is named."""
    from tfhub_classifier.inference import evaluation
    labels = np.array([0, 0, 1, 1, 1, 3, 3])  # no "fear" (2) in the test data
    logits = np.eye(4)[[0, 1, 1, 1, 1, 3, 0]] * 5.0  # and the model never predicts it
    report = tasks.Task("multiclass", NAMES).report(labels, logits)
    predicted = logits.argmax(axis=1)
    for average in ("macro", "micro", "weighted"):
        p, r, f, _ = skm.precision_recall_fscore_support(labels, predicted, average=average, zero_division=0)
        assert report[average] == pytest.approx({"precision": p, "recall": r, "f1": f}), average
    assert report["absent_labels"] == ["fear"]
    shown = evaluation.format_metrics({**report, "task": {"kind": "multiclass", "label_names": list(NAMES)},
                                       "most_confident_errors": [], "plots": {}})
    assert any(line.startswith("No test text has the label(s): fear;") for line in shown)
