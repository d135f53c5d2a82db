"""Progress bars go to stderr, only when there is a file to work through, and never before an error."""
import json

import evaluate
import predict
from tfhub_classifier import cli


def test_predict_file_shows_progress_on_stderr_only(trained, tmp_path, capsys):
    reviews = ["a great film", "an awful film", "fine"]
    path = tmp_path / "reviews.txt"
    path.write_text("\n".join(reviews) + "\n")
    argv = ["--model-dir", trained[0]["--model-dir"], "--file", str(path), "--format", "jsonl"]
    assert cli.run(predict.main, argv) == 0
    captured = capsys.readouterr()
    assert [json.loads(line)["text"] for line in captured.out.splitlines()] == reviews
    assert "Scoring" in captured.err and "3 texts" in captured.err
    assert "Scoring" not in captured.out


def test_predict_arguments_show_no_progress(trained, capsys):
    assert cli.run(predict.main, ["--model-dir", trained[0]["--model-dir"], "great", "awful"]) == 0
    captured = capsys.readouterr()
    assert len(captured.out.splitlines()) == 2 and captured.err == ""


def test_logits_of_counts_texts_when_asked(trained_model, capsys):
    from tfhub_classifier.inference import scoring
    texts = [f"review number {i}" for i in range(10)]
    quiet = scoring.logits_of(trained_model, texts, 4)
    assert capsys.readouterr().err == ""
    loud = scoring.logits_of(trained_model, texts, 4, progress=True)
    captured = capsys.readouterr()
    assert "10/10" in captured.err and captured.out == ""
    assert (quiet == loud).all()


def test_evaluate_shows_progress_on_stderr(trained, tmp_path, capsys):
    import shutil
    model_dir = str(tmp_path / "model")
    shutil.copytree(trained[0]["--model-dir"], model_dir)  # evaluation.json is written beside it
    argv = ["--model-dir", model_dir, "--plots-dir", str(tmp_path / "plots"), "--max-examples", "8"]
    assert cli.run(evaluate.main, argv) == 0
    captured = capsys.readouterr()
    assert "Scoring" in captured.err and "8/8" in captured.err
    assert "Scoring" not in captured.out and "Accuracy" in captured.out
