"""The user's own data: multi-label cells, long texts and 0/1 vectors, read without training."""
import csv
import json

import pytest


def test_multilabel_csv_cells_long_texts_and_0_1_vectors(tmp_path):
    from tfhub_classifier.data import user_files
    path = tmp_path / "tags.csv"
    long_text = "great " * 40_000  # 240,000 characters: beyond csv's default field limit
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows([["text", "label"], [long_text, "a|b"], ["no tags at all", ""], ["x", "b"]])
    texts, labels, _ = user_files.read(str(path), label_separator="|")
    assert len(texts[0]) == len(long_text) and labels == [("a", "b"), (), ("b",)]
    with open(tmp_path / "vectors.jsonl", "w") as f:
        f.write(json.dumps({"text": "x", "label": [0, 1, 1]}) + "\n")
    with pytest.raises(ValueError, match="0/1 vector"):
        user_files.read(str(tmp_path / "vectors.jsonl"))
