"""One formatter of a prediction: the table line, and the export's client held to the suite's labelled();
and the files predict.py reads."""
import io
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tfhub_classifier import cli, tasks
from tfhub_classifier.export import client_example
from tfhub_classifier.inference import prediction

NAMES = ("anger", "fear", "joy", "surprise")


@settings(max_examples=200, deadline=None)
@given(kind=st.sampled_from(["binary", "multiclass", "multilabel"]), seed=st.integers(0, 2**32 - 1),
       threshold=st.floats(0.05, 0.95), top_k=st.integers(1, 4), ties=st.booleans(), per_label=st.booleans())
def test_the_shipped_client_labels_as_the_suite_does(kind, seed, threshold, top_k, ties, per_label):
    """client_example.py keeps its own copy of labelled() (it can't import the suite): the two agree,
    multi-label thresholds chosen per label included."""
    names = NAMES[:2] if kind == "binary" else NAMES
    rng = np.random.default_rng(seed)
    if kind == "binary":
        probabilities = np.float64(rng.random())
    else:
        probabilities = rng.random(len(names))
        if ties:
            probabilities[1] = probabilities[0]  # equal probabilities rank in label order in both
        if kind == "multiclass":
            probabilities /= probabilities.sum()
    top_k = top_k if kind == "multiclass" else 1
    if kind == "multilabel" and per_label:  # as a saved model's run.json lists them
        threshold = [float(t) for t in rng.random(len(names))]
    ours = prediction.labelled(tasks.Task(kind, names), probabilities, threshold, top_k)
    shipped = client_example.labelled(probabilities, kind, list(names), threshold, top_k)
    assert ours == shipped


def test_a_multilabel_model_gives_each_label_at_its_own_threshold():
    task = tasks.Task("multilabel", NAMES)
    result = prediction.labelled(task, np.array([0.3, 0.3, 0.8, 0.8]), threshold=[0.2, 0.5, 0.9, 0.5])
    assert result["labels"] == ["anger", "surprise"]


def test_imdb_labels_are_shown_as_words_in_either_order():
    assert prediction.display_names(tasks.Task("binary", ("neg", "pos"))) == ("negative", "positive")
    assert prediction.display_names(tasks.Task("binary", ("pos", "neg"))) == ("positive", "negative")
    assert prediction.display_names(tasks.Task("binary", ("legit", "fraud"))) == ("legit", "fraud")


def test_a_binary_result_names_the_label_its_score_is_for():
    result = prediction.labelled(tasks.Task("binary", ("legit", "fraud")), np.float64(0.3), 0.25)
    assert result == {"score": 0.3, "positive_label": "fraud", "label": "fraud"}


def test_table_lines_for_each_task():
    binary = prediction.labelled(tasks.Task("binary", ("neg", "pos")), np.float64(0.8125), 0.5)
    assert prediction.table_line("The movie was great!", binary) == (
        "input: The movie was great!           : positive score: 0.812500 (positive)")
    fraud = prediction.labelled(tasks.Task("binary", ("legit", "fraud")), np.float64(0.25), 0.5)
    assert prediction.table_line("a refund request", fraud) == (
        "input: a refund request               : fraud score: 0.250000 (legit)")
    multiclass = tasks.Task("multiclass", NAMES)
    ranked = prediction.labelled(multiclass, np.array([0.1, 0.2, 0.6, 0.1]), top_k=2)
    assert prediction.table_line("so   happy\ttoday", ranked) == (
        "input: so happy today                 : joy (0.6000), fear (0.2000)")
    multilabel = tasks.Task("multilabel", NAMES)
    none = prediction.labelled(multilabel, np.array([0.1, 0.2, 0.3, 0.4]), threshold=0.5)
    assert prediction.table_line("x" * 80, none) == f"input: {'x' * 59}… : -"


def test_lines_drop_a_leading_bom_and_blank_ones_are_reported(tmp_path):
    path = tmp_path / "texts.txt"
    path.write_bytes(b"\xef\xbb\xbfgreat film\r\n\nawful\n   \n")
    logs = []
    lines = list(prediction.read_lines(str(path), log=logs.append))
    assert lines == [b"great film", b"", b"awful", b"   "]  # every line keeps its place
    assert logs == [f"warning: {path}: 2 blank line(s), the first line 2, were scored as empty texts; remove them "
                    "if they hold no text"]


def test_a_table_is_read_row_by_row_as_it_is_scored(tmp_path):
    """The rows stream: a broken row far down the file is found only when reading reaches it, and an
    empty text is reported at the end."""
    path = tmp_path / "big.csv"
    path.write_text("id,text\n" + "".join(f"{i},text {i}\n" for i in range(5000)) + "5000,\n" + "5001,a,b\n")
    logs = []
    names, rows = prediction.table_rows(str(path), keep_columns="id", log=logs.append)
    assert names == ["id"] and next(rows) == ("text 0", ["0"])
    with pytest.raises(ValueError, match="big.csv:5003: 3 fields where the header has 2"):
        for _ in rows:
            pass
    path.write_text("id,text\n1,\n2,fine\n")
    names, rows = prediction.table_rows(str(path), keep_columns="all", log=logs.append)
    assert names == ["id"] and list(rows) == [("", ["1"]), ("fine", ["2"])]
    assert logs[-1] == (f"warning: {path}: 1 row(s) with an empty text, the first at {path}:2, were scored as "
                        "empty texts")


def test_json_lines_fields_kept_are_checked_against_the_whole_file(tmp_path):
    path = tmp_path / "new.jsonl"
    path.write_text('{"text": "a", "id": 1}\n{"text": "b", "id": 2, "date": "today"}\n')
    logs = []
    names, rows = prediction.table_rows(str(path), keep_columns="id,idd", log=logs.append)
    assert names == ["id", "idd"] and list(rows) == [("a", [1, None]), ("b", [2, None])]
    assert logs == [f"warning: {path}: no line has the field(s) idd named in --keep-columns; their values were "
                    "written as null"]
    logs.clear()
    names, rows = prediction.table_rows(str(path), keep_columns="all", log=logs.append)
    assert names == ["id"] and list(rows) == [("a", [1]), ("b", [2])]
    assert logs == [f"warning: {path}: --keep-columns all kept the first line's fields; 1 other field(s), e.g. "
                    f"'date' from {path}:2, were not copied: name them in --keep-columns"]
    with pytest.raises(ValueError, match="--keep-columns names 'id' twice"):
        prediction.table_rows(str(path), keep_columns="id,id")


def test_kept_columns_named_like_the_results_fields_are_renamed_apart():
    import io
    stream = io.StringIO()
    writer = prediction.Writer("csv", tasks.Task("binary", ("legit", "fraud")), stream=stream,
                               kept_columns=["label", "input_label", "id"])
    writer.write("a text", np.float64(0.75), ["fraud", "x", "7"])
    header, row = stream.getvalue().splitlines()
    assert header == "input_input_label,input_label,id,text,score,positive_label,label"
    assert row == "fraud,x,7,a text,0.750000,fraud,fraud"


def test_predictions_show_what_the_terminal_cannot_as_question_marks(monkeypatch):
    """Run as predict.py runs (cli.run's stdout), on a terminal whose encoding lacks a text's characters."""
    terminal = io.BytesIO()
    monkeypatch.setattr(sys, "stdout", io.TextIOWrapper(terminal, encoding="ascii"))

    def main(argv):
        print("positive  0.93  café", file=prediction.stdout_text())
    assert cli.run(main, []) == 0
    sys.stdout.flush()
    assert terminal.getvalue() == b"positive  0.93  caf?\n"
