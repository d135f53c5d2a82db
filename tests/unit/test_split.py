"""data/split.py: the one Split, its --max-examples cap and its validation cut."""
import numpy as np
import pytest

from tfhub_classifier.data.split import Split, shuffled_order


def numbered(count):
    texts = [f"text {i}" for i in range(count)]
    return Split(texts, np.arange(count, dtype=np.int32) % 2, [f"f.csv:{i + 2}" for i in range(count)], ("a", "b"),
                 "binary")


def test_the_cap_keeps_the_first_rows_and_zero_keeps_all():
    split = numbered(10)
    assert split.capped(3).texts == ["text 0", "text 1", "text 2"]
    assert split.capped(3).labels.tolist() == [0, 1, 0] and split.capped(3).paths[-1] == "f.csv:4"
    assert split.capped(0) is split and len(split.capped(50)) == 10


def test_the_validation_cut_is_the_last_share_as_keras_cuts_it():
    train, validation = numbered(10).held_out(0.2, "train.csv")
    assert validation.texts == ["text 8", "text 9"] and len(train) == 8
    assert (train.label_names, validation.task) == (("a", "b"), "binary")


@pytest.mark.parametrize("share", [0.05, 1.0])
def test_a_cut_that_empties_a_side_is_refused_naming_the_data(share):
    with pytest.raises(ValueError, match=r"--validation-split .* of the 10 texts in train.csv leaves none"):
        numbered(10).held_out(share, "train.csv")


def test_the_shuffle_is_the_tutorials_permutation():
    paths = [f"{i}.txt" for i in range(20)]
    expected = list(paths)
    np.random.RandomState(42).shuffle(expected)  # what text_dataset_from_directory(seed=42) does to its files
    assert [paths[i] for i in shuffled_order(20, 42)] == expected


def labelled(counts, task="multiclass"):
    labels = np.repeat(np.arange(len(counts)), counts).astype(np.int32)
    names = tuple("abcdefgh"[:len(counts)])
    return Split([f"t{i}" for i in range(len(labels))], labels, [f"f.csv:{i}" for i in range(len(labels))], names,
                 task)


def test_a_stratified_cut_keeps_each_labels_share_and_every_row_once():
    split = labelled([60, 30, 10])
    train, validation = split.held_out(0.2, "train.csv", stratify_seed=42)
    assert len(validation) == 20 and len(train) == 80  # as many as the unstratified cut
    assert np.bincount(validation.labels).tolist() == [12, 6, 2]
    assert sorted(train.texts + validation.texts, key=lambda t: int(t[1:])) == split.texts
    again = split.held_out(0.2, "train.csv", stratify_seed=42)[1]
    assert again.texts == validation.texts  # the seed fixes it
    plain = split.held_out(0.2, "train.csv")[1]  # the last rows, here all of label c and some of b
    assert np.bincount(plain.labels, minlength=3).tolist() == [0, 10, 10]


def test_a_stratified_cut_refuses_what_it_cannot_stratify():
    with pytest.raises(ValueError, match="--stratify needs at least 2 texts of each label in train.csv, and c has 1"):
        labelled([10, 10, 1]).held_out(0.2, "train.csv", stratify_seed=1)
    multilabel = Split(["x"] * 10, np.ones((10, 2), np.float32), ["p"] * 10, ("a", "b"), "multilabel")
    with pytest.raises(ValueError, match="multi-label data set has no one label per text"):
        multilabel.held_out(0.2, "train.csv", stratify_seed=1)


def test_the_positive_label_becomes_the_second_and_the_labels_follow_it():
    split = labelled([3, 2], task="binary")
    flipped = split.with_positive_label("a")
    assert flipped.label_names == ("b", "a") and flipped.labels.tolist() == [1, 1, 1, 0, 0]
    assert split.with_positive_label("b") is split
    with pytest.raises(ValueError, match=r"--positive-label 'fraud' is not one of the data's labels \(a, b\)"):
        split.with_positive_label("fraud")
    with pytest.raises(ValueError, match="--positive-label is for binary tasks; this data is multiclass"):
        labelled([3, 2, 2]).with_positive_label("a")
