"""What evaluate.py takes from a model's run record, and the figures it draws, without a trained model."""
import json

import numpy as np
import pytest

import config
import evaluate
from tfhub_classifier.inference import evaluation, plots

RECORDED = {"test_data": "tickets_test.csv", "text_column": "body", "label_column": "team", "no_header": False,
            "label_separator": "|", "seed": 7, "eval_batch_size": 64, "plots_dir": "their_plots",
            "data_dir": "their_data", "max_examples": 5, "learning_rate": 1e-3, "train_data": "tickets.csv"}


def model_dir_with_record(tmp_path):
    """A model folder whose run record names test data that exists (train.py records it absolute)."""
    folder = tmp_path / "model"
    folder.mkdir()
    (tmp_path / "tickets_test.csv").write_text("body,team\nlogin fails,it\n")
    recorded = {**RECORDED, "test_data": str(tmp_path / "tickets_test.csv")}
    (folder / "run.json").write_text(json.dumps({"config": recorded}))
    return str(folder)


def test_evaluate_reads_the_models_own_test_data_as_it_was_read(tmp_path):
    cfg = evaluation.evaluation_config(evaluate.parse(["--model-dir", model_dir_with_record(tmp_path)]))
    assert (cfg.test_data, cfg.text_column, cfg.label_column, cfg.label_separator) == (
        str(tmp_path / "tickets_test.csv"), "body", "team", "|")
    assert (cfg.seed, cfg.eval_batch_size, cfg.plots_dir, cfg.data_dir) == (7, 64, "their_plots", "their_data")
    # Not where the test data is: the run's own cap and training settings stay the defaults.
    assert (cfg.max_examples, cfg.learning_rate) == (0, config.Config.learning_rate)


def test_new_test_data_is_read_as_the_model_read_its_own_unless_flags_say_otherwise(tmp_path):
    """A model trained with --text-column body reads a new --test-data file's body column too."""
    argv = ["--model-dir", model_dir_with_record(tmp_path), "--test-data", "other.jsonl", "--batch-size", "3"]
    cfg = evaluation.evaluation_config(evaluate.parse(argv))
    assert (cfg.test_data, cfg.text_column, cfg.label_column, cfg.label_separator) == (
        "other.jsonl", "body", "team", "|")
    assert (cfg.seed, cfg.eval_batch_size) == (7, 3)  # the split's seed still the model's; a flag beats both
    cfg = evaluation.evaluation_config(evaluate.parse(argv + ["--text-column", "review", "--label-separator", ","]))
    assert (cfg.text_column, cfg.label_column, cfg.label_separator) == ("review", "team", ",")


def test_figures_are_written_as_png(tmp_path):
    history = {"loss": [0.7, 0.5, 0.6], "val_loss": [0.6, 0.55, 0.7], "binary_accuracy": [0.5, 0.7, 0.8],
               "val_binary_accuracy": [0.55, 0.6, 0.58]}
    written = [plots.plot_history(history, str(tmp_path / "history.png"), best_epoch=2)]
    written += plots.plot_confusion(np.array([[5, 1, 0], [2, 3, 1], [0, 0, 4]]), ("a", "b", "c"), str(tmp_path),
                                    "m").values()
    assert [path.rsplit("/", 1)[1] for path in written] == [
        "history.png", "m_confusion_matrix.png", "m_confusion_matrix_normalised.png"]
    for path in written:
        with open(path, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_recorded_test_data_that_is_gone_is_named_with_the_fix(tmp_path):
    record = {"config": {**RECORDED, "test_data": str(tmp_path / "moved_away.csv")}}
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "run.json").write_text(json.dumps(record))
    try:
        evaluation.evaluation_config(evaluate.parse(["--model-dir", str(tmp_path / "model")]))
    except ValueError as error:
        assert "moved_away.csv, the test data" in str(error) and "run record names, is not there" in str(error)
        assert "--test-data PATH" in str(error)
    else:
        raise AssertionError("a recorded test file that is gone must be refused, naming the fix")


def test_show_errors_lists_a_multilabel_models_most_confident_mistakes():
    from tfhub_classifier import tasks
    from tfhub_classifier.data.split import Split
    task = tasks.Task("multilabel", ("action", "comedy", "drama"))
    labels = np.array([[1, 0, 0], [0, 1, 1], [1, 1, 0], [0, 0, 1]], dtype=np.float32)
    probabilities = np.array([[0.9, 0.1, 0.2],    # right
                              [0.2, 0.8, 0.45],   # drama withheld, narrowly
                              [0.7, 0.02, 0.97],  # comedy withheld and drama given, both confidently
                              [0.1, 0.6, 0.9]])   # comedy given, mildly
    split = Split(["a", "b", "c", "d"], labels, ["f:2", "f:3", "f:4", "f:5"], task.label_names, "multilabel")
    errors = evaluation.confident_errors(task, split, probabilities, 0.5, 2)
    assert [(e["text"], e["label"], e["predicted"]) for e in errors] == [
        ("c", "action|comedy", "action|drama"), ("d", "drama", "comedy|drama")]
    assert errors[0]["score"] == pytest.approx(0.02)
    assert [e["explained"] for e in errors] == [1, 1]  # the label decided wrongly with the most confidence
