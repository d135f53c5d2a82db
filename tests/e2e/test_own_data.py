"""The user's own data (CSV, TSV, JSON Lines, class folders), multi-class and multi-label, through
train.py, evaluate.py and predict.py."""
import csv
import json
import os
import random

import pytest
from helpers import QUICK, assert_evaluate_agrees_with_the_run
from tiny_hub import FILLER_WORDS, NEGATIVE_WORDS, POSITIVE_WORDS

import evaluate
import predict
import train

FAST = QUICK + ["--epochs", "8", "--learning-rate", "5e-3"]


def sentiment_text(kind, rng):
    """A text whose class shows in its words: positive, negative, or neither (neutral)."""
    words = [rng.choice(FILLER_WORDS) for _ in range(rng.randint(3, 8))]
    cues = {"positive": POSITIVE_WORDS, "negative": NEGATIVE_WORDS, "neutral": []}[kind]
    words += [rng.choice(cues) for _ in range(rng.randint(1, 3))] if cues else []
    rng.shuffle(words)
    return " ".join(words)


def multiclass_rows(count, seed):
    rng = random.Random(seed)
    kinds = ["positive", "negative", "neutral"]
    return [(sentiment_text(kinds[i % 3], rng), kinds[i % 3]) for i in range(count)]


def write_csv(path, rows, header=("id", "text", "label")):
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        for number, (text, label) in enumerate(rows):
            writer.writerow([number, text, label])
    return str(path)


def model_flags(flags):
    return ["--model-dir", flags[flags.index("--model-dir") + 1]]


@pytest.fixture(scope="module")
def multiclass_run(hub_models, tmp_path_factory):
    """A multi-class model trained from CSV files, as a user would."""
    tmp = tmp_path_factory.mktemp("multiclass")
    train_csv = write_csv(tmp / "train.csv", multiclass_rows(150, 1))
    test_csv = write_csv(tmp / "test.csv", multiclass_rows(45, 2))
    flags = ["--encoder", hub_models[1], "--preprocessor", hub_models[0], "--model-dir", str(tmp / "model"),
             "--plots-dir", str(tmp / "plots"), "--train-data", train_csv, "--test-data", test_csv]
    return flags, train.main(flags + FAST)


def test_multiclass_from_csv_learns_and_records_its_labels(multiclass_run):
    flags, record = multiclass_run
    assert record["task"] == {"kind": "multiclass", "label_names": ["negative", "neutral", "positive"]}
    assert record["split_sizes"] == {"train": 120, "validation": 30, "test": 45}
    assert record["test_metrics"]["accuracy"] >= 0.8
    from tfhub_classifier.model import saving
    model, _ = saving.load(flags[flags.index("--model-dir") + 1])
    assert [name.decode() for name in model.label_names.numpy()] == ["negative", "neutral", "positive"]


def test_a_model_of_your_own_data_is_saved_apart_and_evaluated_from_any_folder(hub_models, tmp_path, monkeypatch):
    """train.py run on relative paths saves to models/<data's name>, its run record keeps the data's
    absolute paths, and evaluate.py --model-dir finds the test data from another folder."""
    project = tmp_path / "project"
    project.mkdir()
    write_csv(project / "tickets.csv", multiclass_rows(60, 3))
    write_csv(project / "tickets_test.csv", multiclass_rows(15, 4))
    monkeypatch.chdir(project)
    record = train.main(["--encoder", hub_models[1], "--preprocessor", hub_models[0], "--train-data", "tickets.csv",
                         "--test-data", "tickets_test.csv", "--plots-dir", str(tmp_path / "plots")]
                        + QUICK + ["--epochs", "1"])
    assert record["config"]["model_dir"] == os.path.join("models", "tickets")
    assert record["config"]["test_data"] == str(project / "tickets_test.csv")
    monkeypatch.chdir(tmp_path)
    metrics = evaluate.main(["--model-dir", str(project / "models" / "tickets"), "--plots-dir", str(tmp_path)])
    assert metrics["examples"] == 15 and metrics["accuracy"] == pytest.approx(record["test_metrics"]["accuracy"])


def test_evaluate_multiclass_needs_only_the_model_dir(multiclass_run, capsys):
    flags, record = multiclass_run
    metrics = evaluate.main(model_flags(flags))
    out = capsys.readouterr().out
    assert metrics["accuracy"] == pytest.approx(record["test_metrics"]["accuracy"])
    assert len(metrics["confusion_matrix"]) == 3 and sum(map(sum, metrics["confusion_matrix"])) == 45
    assert {"macro", "micro", "weighted", "per_label", "roc_auc_ovr_macro"} <= set(metrics)
    assert "Macro precision" in out and "neutral" in out
    for name in ("confusion_matrix", "confusion_matrix_normalised"):
        with open(metrics["plots"][name], "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    with open(os.path.join(flags[flags.index("--model-dir") + 1], "evaluation.json")) as f:
        assert json.load(f)["task"]["kind"] == "multiclass"


def test_predict_multiclass_top_k_in_input_order(multiclass_run, capsys):
    flags, _ = multiclass_run
    texts = ["great wonderful film", "awful boring plot", "the movie was a film"]
    results = predict.main(model_flags(flags) + ["--format", "jsonl", "--top-k", "2", *texts])
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [row["text"] for row in rows] == texts
    assert [row["label"] for row in rows] == ["positive", "negative", "neutral"]
    for row, probabilities in zip(rows, results):
        assert len(row["top_k"]) == 2 and row["top_k"][0]["label"] == row["label"]
        assert row["top_k"][0]["probability"] >= row["top_k"][1]["probability"]
        assert sum(probabilities) == pytest.approx(1.0, abs=1e-5)
    predict.main(model_flags(flags) + ["--format", "csv", "--top-k", "2", *texts])
    lines = list(csv.reader(capsys.readouterr().out.splitlines()))
    assert lines[0] == ["text", "label", "probability", "label_2", "probability_2"]
    assert [line[1] for line in lines[1:]] == ["positive", "negative", "neutral"]


def test_top_k_beyond_the_labels_is_refused(multiclass_run, capsys):
    from helpers import fails_with
    flags, _ = multiclass_run
    fails_with(predict.main, model_flags(flags) + ["--top-k", "4", "great"], capsys, "--top-k", "3 labels")


def multilabel_rows(count, seed):
    """Texts with positive words are 'good', with negative words 'bad'; some both, some neither."""
    rng = random.Random(seed)
    rows = []
    for i in range(count):
        good, bad = i % 4 in (0, 2), i % 4 in (1, 2)
        words = [rng.choice(FILLER_WORDS) for _ in range(rng.randint(3, 8))]
        words += [rng.choice(POSITIVE_WORDS)] * good + [rng.choice(NEGATIVE_WORDS)] * bad
        rng.shuffle(words)
        rows.append({"text": " ".join(words), "labels": ["good"] * good + ["bad"] * bad})
    return rows


def test_multilabel_from_json_lines(hub_models, tmp_path, capsys):
    for name, rows in (("train", multilabel_rows(160, 3)), ("test", multilabel_rows(40, 4))):
        with open(tmp_path / f"{name}.jsonl", "w") as f:
            f.writelines(json.dumps(row) + "\n" for row in rows)
    flags = ["--encoder", hub_models[1], "--preprocessor", hub_models[0], "--model-dir", str(tmp_path / "model"),
             "--plots-dir", str(tmp_path / "plots"), "--train-data", str(tmp_path / "train.jsonl"),
             "--test-data", str(tmp_path / "test.jsonl"), "--label-column", "labels", "--threshold-metric", "f1"]
    record = train.main(flags + FAST)
    assert record["task"] == {"kind": "multilabel", "label_names": ["bad", "good"]}
    assert record["test_metrics"]["subset_accuracy"] >= 0.7
    thresholds = record["threshold"]  # one per label, chosen on the validation texts
    assert len(thresholds) == 2 and record["test_metrics"]["threshold"] == thresholds
    metrics = evaluate.main(model_flags(flags))
    assert {"subset_accuracy", "hamming_loss", "micro", "macro", "per_label"} <= set(metrics)
    assert metrics["subset_accuracy"] == pytest.approx(record["test_metrics"]["subset_accuracy"])
    assert f"Threshold: per label {thresholds[0]:.4f}, {thresholds[1]:.4f} (chosen for f1 at training)" in (
        capsys.readouterr().out)
    texts = ["great film awful plot", "the movie was a film", "wonderful"]
    predict.main(model_flags(flags) + ["--format", "jsonl", *texts])
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [row["text"] for row in rows] == texts
    assert [sorted(row["labels"]) for row in rows] == [["bad", "good"], [], ["good"]]
    assert all(set(row["probabilities"]) == {"bad", "good"} for row in rows)
    assert [row["labels"] for row in rows] == [[name for name, limit in zip(("bad", "good"), thresholds)
                                                if row["probabilities"][name] >= limit] for row in rows]


def write_class_folders(root, rows):
    for text, label in rows:
        folder = root / label
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{len(os.listdir(folder))}.txt").write_text(text)
    return str(root)


def write_headerless_tsv(path, rows):
    with open(path, "w") as f:
        f.writelines(f"{label}\t{text}\n" for text, label in rows)  # label first, as many public TSVs
    return str(path)


@pytest.mark.parametrize("layout", ["class folders", "headerless TSV"])
def test_class_folders_and_headerless_tsv(hub_models, tmp_path, layout):
    if layout == "class folders":
        data = [write_class_folders(tmp_path / name, multiclass_rows(count, seed))
                for name, count, seed in (("train", 90, 5), ("test", 30, 6))]
        extra = []
    else:
        data = [write_headerless_tsv(tmp_path / f"{name}.tsv", multiclass_rows(count, seed))
                for name, count, seed in (("train", 90, 5), ("test", 30, 6))]
        extra = ["--no-header", "--text-column", "1", "--label-column", "0"]
    record = train.main(["--encoder", hub_models[1], "--preprocessor", hub_models[0],
                         "--model-dir", str(tmp_path / "model"), "--plots-dir", str(tmp_path / "plots"),
                         "--train-data", data[0], "--test-data", data[1], *extra] + QUICK + ["--epochs", "1"])
    assert record["task"]["label_names"] == ["negative", "neutral", "positive"]
    assert record["split_sizes"] == {"train": 72, "validation": 18, "test": 30}


def imbalanced_rows(count, seed, minority_share=0.05):
    """Binary data, 95/5 by default: the minority shows in its words, but is rarely seen."""
    rng = random.Random(seed)
    rows = []
    for _ in range(count):
        minority = rng.random() < minority_share
        words = [rng.choice(FILLER_WORDS) for _ in range(rng.randint(3, 8))]
        words += [rng.choice(NEGATIVE_WORDS if minority else POSITIVE_WORDS) for _ in range(2)]
        rng.shuffle(words)
        rows.append((" ".join(words), "rare" if minority else "common"))
    return rows


def test_balanced_class_weight_raises_the_minority_recall(hub_models, tmp_path):
    train_csv = write_csv(tmp_path / "train.csv", imbalanced_rows(1000, 7))
    test_csv = write_csv(tmp_path / "test.csv", imbalanced_rows(400, 8, minority_share=0.5))
    matrices = {}
    for weighting in ("none", "balanced"):
        record = train.main(["--encoder", hub_models[1], "--preprocessor", hub_models[0],
                             "--model-dir", str(tmp_path / weighting), "--plots-dir", str(tmp_path / "plots"),
                             "--train-data", train_csv, "--test-data", test_csv, "--class-weight", weighting]
                            + QUICK + ["--epochs", "1", "--learning-rate", "1e-3", "--clip-norm", "0"])
        matrices[weighting] = record["test_metrics"]["confusion_matrix"]
    # label names sort as ("common", "rare"): "rare" is the positive class, row 1 of the matrix
    rare_recall = {k: m[1][1] / max(m[1][0] + m[1][1], 1) for k, m in matrices.items()}
    assert rare_recall["balanced"] > rare_recall["none"] + 0.1, rare_recall


def test_tutorial_pipeline_and_balanced_weights_hold_for_multiclass_and_multilabel(hub_models, tmp_path):
    train_csv = write_csv(tmp_path / "train.csv", multiclass_rows(60, 9))
    test_csv = write_csv(tmp_path / "test.csv", multiclass_rows(15, 10))
    common = ["--encoder", hub_models[1], "--preprocessor", hub_models[0], "--plots-dir", str(tmp_path / "plots")]
    record = train.main(common + ["--model-dir", str(tmp_path / "tutorial"), "--train-data", train_csv,
                                  "--test-data", test_csv, "--recipe", "tutorial", "--epochs", "1",
                                  "--seq-length", "32", "--class-weight", "balanced"])
    assert record["config"]["pipeline"] == "tutorial" and record["task"]["kind"] == "multiclass"
    assert_evaluate_agrees_with_the_run(str(tmp_path / "tutorial"), record)
    rows = multilabel_rows(60, 11)
    with open(tmp_path / "train.jsonl", "w") as f:
        f.writelines(json.dumps(row) + "\n" for row in rows)
    record = train.main(common + ["--model-dir", str(tmp_path / "multilabel"), "--train-data",
                                  str(tmp_path / "train.jsonl"), "--test-data", str(tmp_path / "train.jsonl"),
                                  "--label-column", "labels", "--class-weight", "balanced"] + QUICK
                        + ["--epochs", "1"])
    assert record["task"]["kind"] == "multilabel"
    assert_evaluate_agrees_with_the_run(str(tmp_path / "multilabel"), record)


def test_resume_on_other_data_is_refused(hub_models, tmp_path, monkeypatch, capsys):
    from helpers import interrupted_after_first_epoch

    from tfhub_classifier import cli
    train_csv = write_csv(tmp_path / "train.csv", multiclass_rows(60, 12))
    argv = ["--encoder", hub_models[1], "--preprocessor", hub_models[0], "--model-dir", str(tmp_path / "model"),
            "--plots-dir", str(tmp_path / "plots"), "--train-data", train_csv,
            "--test-data", write_csv(tmp_path / "test.csv", multiclass_rows(15, 13))] + QUICK + ["--epochs", "2"]
    interrupted_after_first_epoch(monkeypatch, argv)
    write_csv(tmp_path / "train.csv", multiclass_rows(60, 12) + [("a brand new kind", "sarcastic")] * 3)
    capsys.readouterr()
    assert cli.run(train.main, argv) == cli.EXIT_ERROR
    printed = capsys.readouterr()
    error = printed.err.strip().splitlines()
    assert len(error) == 1 and "other data" in error[0] and "sarcastic" in error[0] and "--restart" in error[0]
    assert "Resuming" not in printed.out  # the refusal is the only word on the interrupted run
    assert os.path.isdir(str(tmp_path / "model") + ".training")  # nothing thrown away


def test_a_record_without_a_task_predicts_positive_and_negative(trained, tmp_path, capsys):
    import shutil
    model_dir = str(tmp_path / "old_model")
    shutil.copytree(trained[0]["--model-dir"], model_dir)
    with open(os.path.join(model_dir, "run.json")) as f:
        record = json.load(f)
    del record["task"]
    with open(os.path.join(model_dir, "run.json"), "w") as f:
        json.dump(record, f)
    scores = predict.main(["--model-dir", model_dir, "--format", "jsonl", "great wonderful", "awful boring"])
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [row["label"] for row in rows] == ["positive" if s >= 0.5 else "negative" for s in scores]


def test_predict_reads_the_training_format_and_keeps_the_columns_asked_for(multiclass_run, tmp_path, capsys):
    """A CSV like the training file is labelled row by row, its id copied through so results join back."""
    flags, _ = multiclass_run
    rows = multiclass_rows(7, 20)
    path = write_csv(tmp_path / "new.csv", rows)
    count = predict.main(model_flags(flags) + ["--file", path, "--keep-columns", "id", "--format", "jsonl"])
    results = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert count == 7 and [(r["id"], r["text"]) for r in results] == [(str(i), text) for i, (text, _) in
                                                                        enumerate(rows)]
    # The same texts given on the command line, through the same graph (auto would take the saved one).
    alone = predict.main(model_flags(flags) + ["--engine", "fused", "--format", "jsonl", *[text for text, _ in rows]])
    capsys.readouterr()
    assert [r["probability"] for r in results] == pytest.approx([max(p) for p in alone], abs=1e-5)
    predict.main(model_flags(flags) + ["--file", path, "--keep-columns", "all", "--format", "csv"])
    table = list(csv.DictReader(capsys.readouterr().out.splitlines()))
    # The file's own label column is kept as input_label beside the model's label.
    assert list(table[0])[:4] == ["id", "input_label", "text", "label"]
    assert [row["input_label"] for row in table] == [label for _, label in rows]


def test_predict_takes_the_models_text_column_and_reads_json_lines_and_headerless_tsv(multiclass_run, tmp_path,
                                                                                      capsys):
    flags, _ = multiclass_run
    copy = tmp_path / "model"
    import shutil
    shutil.copytree(model_flags(flags)[1], copy)
    with open(copy / "run.json") as f:
        record = json.load(f)
    record["config"]["text_column"] = "body"  # as if trained with --text-column body
    with open(copy / "run.json", "w") as f:
        json.dump(record, f)
    texts = [text for text, _ in multiclass_rows(4, 21)]
    with open(tmp_path / "new.jsonl", "w") as f:
        f.writelines(json.dumps({"ref": f"r{i}", "body": text}) + "\n" for i, text in enumerate(texts))
    predict.main(["--model-dir", str(copy), "--file", str(tmp_path / "new.jsonl"), "--keep-columns", "ref",
                  "--format", "jsonl"])
    out, err = capsys.readouterr()
    results = [json.loads(line) for line in out.splitlines()]
    assert (f"Reading {tmp_path / 'new.jsonl'} as the model's training data was read: --text-column 'body' "
            "(give flags to read it otherwise)") in err
    assert [(r["ref"], r["text"]) for r in results] == [(f"r{i}", text) for i, text in enumerate(texts)]
    (tmp_path / "new.tsv").write_text("".join(f"{i}\t{text}\n" for i, text in enumerate(texts)))
    predict.main(["--model-dir", str(copy), "--file", str(tmp_path / "new.tsv"), "--no-header", "--text-column", "1",
                  "--keep-columns", "0", "--format", "jsonl"])
    again = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(r["0"], r["text"], r["label"]) for r in again] == [(str(i), r["text"], r["label"])
                                                                  for i, r in enumerate(results)]


def test_predict_names_a_missing_column_and_refuses_table_flags_for_plain_lines(multiclass_run, tmp_path, capsys):
    from helpers import fails_with
    flags, _ = multiclass_run
    path = write_csv(tmp_path / "new.csv", multiclass_rows(3, 22))
    fails_with(predict.main, model_flags(flags) + ["--file", path, "--keep-columns", "id,date", "--format", "csv"],
               capsys,
               "no column 'date' in the header", "--keep-columns")
    fails_with(predict.main, model_flags(flags) + ["--file", path, "--text-column", "body"], capsys,
               "no column 'body' in the header", "--text-column")
    fails_with(predict.main, model_flags(flags) + ["--text-column", "body", "a text"], capsys,
               "--text-column is for a .csv, .tsv or .jsonl --file")
    fails_with(predict.main, model_flags(flags) + ["--file", path, "--keep-columns", "id"], capsys,
               "--keep-columns copies columns into JSON Lines or CSV results; add --format jsonl or --format csv")
