"""The operating point chosen on validation data and saved with the model: a named positive label,
a threshold chosen for F1, temperature scaling, and early stopping on macro-F1, through train.py,
evaluate.py and predict.py."""
import json
import os
import random
import shutil

import numpy as np
import pytest
from helpers import QUICK
from sklearn import metrics as skm
from tiny_hub import FILLER_WORDS, NEGATIVE_WORDS, POSITIVE_WORDS

import config
import evaluate
import predict
import train


def fraud_rows(count, seed):
    """Binary data, 70/30 legit/fraud, with label noise so the scores are not all near 0 or 1."""
    rng = random.Random(seed)
    rows = []
    for _ in range(count):
        fraud = rng.random() < 0.3
        cue = NEGATIVE_WORDS if fraud else POSITIVE_WORDS
        words = [rng.choice(FILLER_WORDS) for _ in range(rng.randint(3, 8))] + [rng.choice(cue)]
        if rng.random() < 0.25:  # a cue of the other class too
            words.append(rng.choice(POSITIVE_WORDS if fraud else NEGATIVE_WORDS))
        rng.shuffle(words)
        rows.append((" ".join(words), "fraud" if fraud else "legit"))
    return rows


def write_csv(path, rows):
    import csv
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label"])
        writer.writerows(rows)
    return str(path)


@pytest.fixture(scope="module")
def fraud_run(hub_models, tmp_path_factory):
    """A binary model whose positive label sorts first, with every operating-point option on: (flags, run
    record, folder, the callbacks fit ran with)."""
    tmp = tmp_path_factory.mktemp("fraud")
    flags = ["--encoder", hub_models[1], "--preprocessor", hub_models[0], "--model-dir", str(tmp / "model"),
             "--plots-dir", str(tmp / "plots"), "--train-data", write_csv(tmp / "train.csv", fraud_rows(400, 1)),
             "--test-data", write_csv(tmp / "test.csv", fraud_rows(200, 2)), "--positive-label", "fraud",
             "--threshold-metric", "f1", "--calibrate", "temperature", "--early-stopping-metric", "macro_f1",
             "--early-stopping-patience", "1", "--stratify"]
    from tfhub_classifier.training import trainer
    real_callbacks, made = trainer.Session.callbacks, []
    with pytest.MonkeyPatch.context() as patch:  # keep the callbacks fit ran with
        patch.setattr(trainer.Session, "callbacks", lambda *args: made.extend(real_callbacks(*args)) or made)
        record = train.main(flags + QUICK + ["--epochs", "3", "--learning-rate", "3e-3"])
    return flags, record, tmp, made


def model_dir(run):
    return run[0][run[0].index("--model-dir") + 1]


def validation_logits(run):
    """The validation split train.py cut, and the saved model's (calibrated) logits of it, as train.py and
    evaluate.py score it: through the fused graph, at the run's precision."""
    from tfhub_classifier.inference import engines, scoring
    from tfhub_classifier.training import trainer
    record = run[1]
    cfg = config.resolve(**{k: v for k, v in record["config"].items()})
    _, validation, _ = trainer.load_data(cfg, log=lambda line: None)
    model, _, _ = engines.load(model_dir(run), record["precision"])
    assert isinstance(model, engines.FusedClassifier)
    return validation, scoring.logits_of(model, validation.texts, 64)


def test_the_positive_label_is_the_one_named_though_it_sorts_first(fraud_run):
    record = fraud_run[1]
    assert record["task"] == {"kind": "binary", "label_names": ["legit", "fraud"]}
    test = trainer_test_split(fraud_run)
    assert test.label_names == ("legit", "fraud") and int(test.labels.sum()) == sum(
        label == "fraud" for _, label in fraud_rows(200, 2))


def trainer_test_split(run):
    from tfhub_classifier.training import trainer
    cfg = config.resolve(**run[1]["config"])
    return trainer.load_data(cfg, log=lambda line: None)[2]


def test_the_threshold_is_the_best_f1_on_the_validation_split_and_is_saved(fraud_run):
    record = fraud_run[1]
    threshold = record["threshold"]
    assert record["threshold_choice"]["metric"] == "f1"
    validation, logits = validation_logits(fraud_run)
    scores = 1 / (1 + np.exp(-logits.astype(np.float64)))
    f1_at = {t: skm.f1_score(validation.labels, scores >= t) for t in np.unique(scores)}
    best = max(f1_at.values())
    assert skm.f1_score(validation.labels, scores >= threshold) == pytest.approx(best, abs=1e-9)
    assert record["threshold_choice"]["validation"]["chosen"]["f1"] == pytest.approx(best, abs=1e-9)
    from tfhub_classifier.model import saving
    model, _ = saving.load(model_dir(fraud_run))
    assert model.threshold.numpy().tolist() == pytest.approx([threshold], abs=1e-6)


def test_the_temperature_minimises_validation_nll_and_every_consumer_gets_it(fraud_run):
    from tfhub_classifier.inference import calibration
    from tfhub_classifier.model import saving
    record = fraud_run[1]
    temperature = record["calibration"]["temperature"]
    model, _ = saving.load(model_dir(fraud_run))
    assert float(model.temperature.numpy()) == pytest.approx(temperature, rel=1e-6)
    validation, calibrated = validation_logits(fraud_run)
    from tfhub_classifier.inference import scoring
    model.temperature.assign(1.0)  # the same saved network, uncalibrated
    raw = scoring.logits_of(model, validation.texts, 64)
    np.testing.assert_allclose(calibrated, raw / temperature, rtol=1e-5, atol=1e-6)  # what every consumer gets
    assert abs(temperature - 1) > 0.01

    def nll(t):
        return calibration.negative_log_likelihood("binary", validation.labels, raw / t)
    assert nll(temperature) <= min(nll(temperature * 1.05), nll(temperature / 1.05), nll(1.0)) + 1e-9
    after = record["calibration"]["validation"]["after"]
    assert after["nll"] == pytest.approx(nll(temperature), abs=1e-4)


def test_evaluate_uses_the_saved_threshold_names_the_positive_label_and_reports_calibration(fraud_run, capsys):
    record = fraud_run[1]
    metrics = evaluate.main(["--model-dir", model_dir(fraud_run), "--precision", "float32"])
    shown = capsys.readouterr().out
    threshold = record["threshold"]
    assert f"Positive label: fraud (at threshold {threshold:.4f}, chosen for f1 at training)" in shown
    assert "Macro F1:" in shown and any(line.startswith("fraud ") for line in shown.splitlines())
    assert "before it: ECE" in shown
    test = trainer_test_split(fraud_run)
    from tfhub_classifier.inference import scoring
    from tfhub_classifier.model import saving
    model, _ = saving.load(model_dir(fraud_run))
    scores = 1 / (1 + np.exp(-scoring.logits_of(model, test.texts, 64).astype(np.float64)))
    predicted = (scores >= threshold).astype(int)
    assert metrics["recall"] == pytest.approx(skm.recall_score(test.labels, predicted))  # of fraud, label 1
    assert metrics["per_label"]["legit"]["recall"] == pytest.approx(skm.recall_score(test.labels, predicted,
                                                                                     pos_label=0))
    assert metrics["macro"]["f1"] == pytest.approx(skm.f1_score(test.labels, predicted, average="macro"))
    assert metrics["f1"] == pytest.approx(record["test_metrics"]["f1"], abs=1e-6)
    assert os.path.isfile(metrics["plots"]["reliability_diagram"])
    # Calibration before the temperature is computed from the logits it divided.
    from tfhub_classifier.inference import calibration
    raw = np.log(scores / (1 - scores)) * record["calibration"]["temperature"]
    before = calibration.expected_calibration_error("binary", test.labels, 1 / (1 + np.exp(-raw)))
    assert metrics["calibration"]["before_temperature"]["ece"] == pytest.approx(before, abs=1e-6)
    at_half = evaluate.main(["--model-dir", model_dir(fraud_run), "--precision", "float32", "--threshold", "0.5"])
    assert at_half["recall"] == pytest.approx(skm.recall_score(test.labels, (scores >= 0.5).astype(int)))
    assert "at threshold 0.5000, --threshold" in capsys.readouterr().out


def test_predict_labels_at_the_saved_threshold_and_says_which_label_the_score_is(fraud_run, tmp_path, capsys):
    """A copy of the model whose record holds another threshold labels by that one: the threshold comes
    from the model, not from a default."""
    copy = str(tmp_path / "copy")
    shutil.copytree(model_dir(fraud_run), copy)
    with open(os.path.join(copy, "run.json")) as f:
        record = json.load(f)
    record["threshold"] = 0.999
    with open(os.path.join(copy, "run.json"), "w") as f:
        json.dump(record, f)
    texts = [text for text, _ in fraud_rows(20, 3)]
    predict.main(["--model-dir", copy, "--format", "jsonl", "--precision", "float32", *texts])
    results = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert all(r["positive_label"] == "fraud" for r in results)
    assert [r["label"] for r in results] == ["fraud" if r["score"] >= 0.999 else "legit" for r in results]
    assert any(0.5 <= r["score"] < 0.999 for r in results)  # texts 0.5 would have labelled fraud


def test_early_stopping_on_macro_f1_keeps_its_best_epoch(fraud_run):
    from tfhub_classifier.training import checkpoints
    stopping = [c for c in fraud_run[3] if isinstance(c, checkpoints.ResumableEarlyStopping)]
    assert [(c.monitor, c.monitor_op.__name__) for c in stopping] == [("val_macro_f1", "greater")]  # mode max
    history, best_epoch = fraud_run[1]["history"], fraud_run[1]["best_epoch"]
    assert len(history["val_macro_f1"]) == len(history["loss"])
    assert best_epoch == 1 + int(np.argmax(history["val_macro_f1"]))


def test_serving_and_the_export_label_and_score_as_predict_does(fraud_run, tmp_path, capsys):
    """serve.py's model and the core-ops export (with its client) use the saved temperature and threshold."""
    import importlib.util

    import export
    from tfhub_classifier.serving.servable import Servable
    record, texts = fraud_run[1], [text for text, _ in fraud_rows(12, 4)]
    predict.main(["--model-dir", model_dir(fraud_run), "--format", "jsonl", "--precision", "float32", *texts])
    expected = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    servable = Servable.load(config.resolve(model_dir=model_dir(fraud_run), precision="float32"), log=lambda _: None)
    assert servable.threshold == record["threshold"]
    served = servable.score(texts)
    assert [(r["label"], r["positive_label"]) for r in served] == [(r["label"], r["positive_label"]) for r in expected]
    assert [r["probabilities"] for r in served] == pytest.approx([r["score"] for r in expected], abs=1e-5)
    out = tmp_path / "export"
    export.main(["--model-dir", model_dir(fraud_run), "--out", str(out)])
    with open(out / "labels.json") as f:
        labels = json.load(f)
    assert labels["threshold"] == record["threshold"]
    spec = importlib.util.spec_from_file_location("client_example", out / "client_example.py")
    client = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(client)
    capsys.readouterr()
    results = client.main(texts)
    assert [r["label"] for r in results] == [r["label"] for r in expected]
    assert [r["score"] for r in results] == pytest.approx([r["score"] for r in expected], abs=1e-5)  # calibrated
    labels["threshold"] = 0.999  # the client's default threshold is the one labels.json holds
    with open(out / "labels.json", "w") as f:
        json.dump(labels, f)
    assert [r["label"] for r in client.main(texts)] == ["fraud" if r["score"] >= 0.999 else "legit" for r in results]
