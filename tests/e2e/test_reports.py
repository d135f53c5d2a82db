"""The evaluation report, batch prediction formats, run records, logs and the tfa optimizer, on trained models."""
import csv
import io
import json
import os

import numpy as np
import pytest

import evaluate
import predict
import train


def test_evaluation_report_json_plots_and_errors(trained, capsys, attention_kernel):
    flags, _ = trained
    metrics = evaluate.main(["--model-dir", flags["--model-dir"], "--show-errors", "3",
                             "--plots-dir", flags["--plots-dir"]])
    with open(os.path.join(flags["--model-dir"], "evaluation.json")) as f:
        saved = json.load(f)
    assert saved["accuracy"] == metrics["accuracy"] and saved["confusion_matrix"] == metrics["confusion_matrix"]
    assert saved["engine"] == "fused"  # the default, and what ran (a fallback would say savedmodel)
    # The kernel is float32's: chunks where it can't be built, and in bfloat16 (auto's pick where the CPU has it).
    assert saved["attention"] == ("kernel" if attention_kernel and saved["precision_mode"] == "float32" else "chunks")
    for path in metrics["plots"].values():
        with open(path, "rb") as f:
            assert f.read(4) == b"\x89PNG"
    errors = metrics["most_confident_errors"]
    assert len(errors) == min(3, sum(metrics["confusion_matrix"][0][1:]) + metrics["confusion_matrix"][1][0])
    confidences = [abs(e["score"] - 0.5) for e in errors]
    assert confidences == sorted(confidences, reverse=True)
    for error in errors:
        assert (error["score"] >= 0.5) != (error["label"] == "pos")
        assert error["explained_label"] == error["predicted"]  # why it said what it wrongly said
        assert [error["text"][start:end] for start, end in error["offsets"]] == error["words"]
        assert len(error["weights"]) == len(error["words"]) and any(error["weights"])
    out = capsys.readouterr().out
    assert "ROC AUC" in out and "Precision" in out
    assert out.count("    why ") == len(errors) and "\033[" not in out


@pytest.mark.parametrize("output_format", ["jsonl", "csv", "table"])
def test_prediction_formats_keep_input_order(trained, tmp_path, capsys, output_format):
    flags, _ = trained
    texts = ["great great film", "awful, boring", "", "brilliant, \"quoted\" acting", "dull plot"]
    reviews = tmp_path / "reviews.txt"
    reviews.write_text("\n".join(texts) + "\n")
    count = predict.main(["--model-dir", flags["--model-dir"], "--file", str(reviews), "--format",
                          output_format, "--threshold", "0.6"])
    out = capsys.readouterr().out
    scores = [predict.main(["--model-dir", flags["--model-dir"], text])[0] for text in texts]
    capsys.readouterr()
    assert count == len(texts)
    if output_format == "jsonl":
        rows = [json.loads(line) for line in out.splitlines()]
        assert [r["text"] for r in rows] == texts
        np.testing.assert_allclose([r["score"] for r in rows], scores, atol=1e-5)  # batch-mates change no score
        assert [r["label"] for r in rows] == ["positive" if s >= 0.6 else "negative" for s in scores]
        assert {r["positive_label"] for r in rows} == {"positive"}
    elif output_format == "csv":
        rows = list(csv.DictReader(io.StringIO(out)))
        assert [r["text"] for r in rows] == texts
        np.testing.assert_allclose([float(r["score"]) for r in rows], scores, atol=1e-5)
    else:
        assert [float(line.split("score: ")[1].split()[0]) for line in out.splitlines()] == pytest.approx(
            scores, abs=1e-5)


def test_standard_input(trained, monkeypatch, capsys):
    flags, _ = trained
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(b"great film\nawful film\n")))
    count = predict.main(["--model-dir", flags["--model-dir"], "--format", "jsonl"])
    assert [json.loads(line)["text"] for line in capsys.readouterr().out.splitlines()] == ["great film",
                                                                                           "awful film"]
    assert count == 2


def test_run_record_says_what_made_the_model(trained):
    flags, record = trained
    with open(os.path.join(flags["--model-dir"], "run.json")) as f:
        saved = json.load(f)
    assert saved["config"]["seq_length"] == 64 and saved["config"]["recipe"] == "official"
    assert saved["encoder"] == flags["--encoder"]
    assert set(saved["versions"]) >= {"tensorflow", "tf_keras", "tensorflow_hub", "tensorflow_text"}
    assert saved["split_sizes"] == {"train": 77, "validation": 19, "test": 48}
    assert saved["test_metrics"]["accuracy"] == record["test_metrics"]["accuracy"]
    assert len(saved["history"]["val_loss"]) == 4
    with open(os.path.join(flags["--model-dir"], "log.csv")) as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2, 3]
    assert float(rows[-1]["loss"]) == pytest.approx(saved["history"]["loss"][-1])


def test_tensorboard_logs(flags):
    train.main(flags + ["--recipe", "official", "--epochs", "1", "--batch-size", "16", "--seq-length", "32",
                        "--tensorboard"])
    model_dir = flags[flags.index("--model-dir") + 1]
    events = [f for _, _, files in os.walk(os.path.join(model_dir, "tensorboard")) for f in files
              if f.startswith("events.out.tfevents")]
    assert events


def test_tfa_optimizer(flags, capsys):
    """On the main stack, a one-line pointer to the tfa profile; on the tfa stack, training with it."""
    try:
        import tensorflow_addons  # noqa: F401
    except ImportError:
        from tfhub_classifier import cli
        assert cli.run(train.main, flags + ["--recipe", "tutorial", "--optimizer", "tfa"]) == cli.EXIT_ERROR
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "requirements-tfa.txt" in err
        return
    record = train.main(flags + ["--recipe", "tutorial", "--optimizer", "tfa", "--epochs", "1",
                                 "--seq-length", "32", "--batch-size", "16"])
    assert record["config"]["optimizer"] == "tfa" and record["optimizer_steps"] == 5
