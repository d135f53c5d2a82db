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
