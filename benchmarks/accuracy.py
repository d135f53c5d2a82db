"""Test accuracy of the named recipes on the real IMDB reviews, with the MiniLM stand-in.

    python benchmarks/accuracy.py --protocol compare   # best, official, tutorial on a fixed subset
    python benchmarks/accuracy.py --protocol full      # best recipe, whole split (hours on 2 cores)
    python benchmarks/accuracy.py --protocol ratings   # 4 star-rating classes from CSV, vs TF-IDF + LR
    python benchmarks/accuracy.py --protocol compare --recipes best --calibrate temperature --threshold-metric f1

With --calibrate or --threshold-metric it also prints the test set's ECE and Brier score before and
after temperature scaling and, for binary tasks, F1 at 0.5 and at the threshold chosen on validation.

Runs the suite's own training code (trainer.run) and prints one line per recipe.
"""
import argparse
import os
import time

import common

PROTOCOLS = {
    # 2,000 train / 500 validation reviews from train/ (seed 42), 2,500 fixed test reviews.
    "compare": dict(caps=(2000, 500, 2500), recipes=("best", "official", "tutorial")),
    "full": dict(caps=(0, 0, 0), recipes=("best",)),
    # Your own data, multi-class: the reviews' star ratings as 4 classes, written to CSV and trained like a user's file;
    # balanced weights because the target is macro-F1, all 4 epochs (measured better, docs/benchmarks.md).
    "ratings": dict(caps=(2000, 500, 2500), recipes=("best",),
                    flags=dict(class_weight="balanced", early_stopping_patience=0)),
}
RATING_CLASSES = {1: "1-2", 2: "1-2", 3: "3-4", 4: "3-4", 7: "7-8", 8: "7-8", 9: "9-10", 10: "9-10"}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--protocol", choices=PROTOCOLS, default="compare")
    parser.add_argument("--recipes", nargs="*", help="a subset of the protocol's recipes")
    parser.add_argument("--precision", help="passed to the suite (default: each recipe's own)")
    parser.add_argument("--epochs", type=int, help="override the recipes' epochs, to fit a time budget")
    parser.add_argument("--class-weight", choices=("none", "balanced"), help="passed to the suite")
    parser.add_argument("--early-stopping-patience", type=int, help="passed to the suite (0 = keep the last epoch)")
    parser.add_argument("--calibrate", choices=("none", "temperature"), help="passed to the suite")
    parser.add_argument("--threshold-metric", help="passed to the suite, e.g. f1")
    args = parser.parse_args(argv)
    protocol = PROTOCOLS[args.protocol]
    flags = common.real_data_flags()

    import config
    from tfhub_classifier.data import imdb
    from tfhub_classifier.training import trainer
    if args.protocol == "ratings":
        return ratings(args, flags)
    results = {}
    for recipe in args.recipes or protocol["recipes"]:
        overrides = suite_overrides(args)
        cfg = config.resolve(recipe=recipe, plots_dir=f"{common.RESULTS}/plots",
                             model_dir=f"{common.RESULTS}/models/{args.protocol}_{recipe}", **flags, **overrides)
        splits = imdb.load_splits(cfg, caps=protocol["caps"])
        started = time.time()
        record = trainer.run(cfg, splits=splits)
        results[recipe] = {"epochs": cfg.epochs, "test_accuracy": record["test_metrics"]["accuracy"],
                           "test_loss": record["test_metrics"]["loss"],
                           "best_epoch": record["best_epoch"], "epochs_run": len(record["history"]["loss"]),
                           "split_sizes": record["split_sizes"], "precision": record["precision"],
                           "wall_seconds": round(time.time() - started)}
        if cfg.calibrate != "none" or cfg.threshold_metric:
            results[recipe]["operating_point"] = operating_point(cfg, splits[2], record)
        print(f"RESULT protocol={args.protocol} recipe={recipe} "
              f"test_accuracy={results[recipe]['test_accuracy']:.4f} "
              f"wall={results[recipe]['wall_seconds']}s", flush=True)
        common.save_result(f"accuracy_{args.protocol}", {"machine": common.machine(), "results": results})
    if "best" in results and "official" in results:
        gain = results["best"]["test_accuracy"] - results["official"]["test_accuracy"]
        print(f"best - official = {100 * gain:+.1f} points")
    return results


def operating_point(cfg, test, record):
    """The saved model on the test split: ECE, Brier and NLL before and after its temperature and, for a
    binary model, precision, recall and F1 at 0.5 and at its chosen threshold; printed and returned."""
    from tfhub_classifier.inference import calibration, scoring
    from tfhub_classifier.model import saving
    model, _ = saving.load(cfg.model_dir)
    task, temperature = saving.task_of_record(record), saving.temperature_of_record(record)
    logits = scoring.logits_of(model, test.texts, cfg.eval_batch_size)
    result = {"temperature": temperature, "threshold": saving.threshold_of_record(record),
              "validation": {key: record.get(key) for key in ("calibration", "threshold_choice")}}
    for name, scores in (("before", logits * temperature), ("after", logits)):
        summary = calibration.summary(task.kind, test.labels, scores)
        result[f"test_{name}_temperature"] = {key: summary[key] for key in ("ece", "brier", "nll")}
    print(f"test ECE {result['test_before_temperature']['ece']:.4f} -> {result['test_after_temperature']['ece']:.4f}, "
          f"Brier {result['test_before_temperature']['brier']:.4f} -> {result['test_after_temperature']['brier']:.4f} "
          f"(temperature {temperature:.4f})")
    if task.kind == "binary":
        for name, threshold in (("at_0.5", 0.5), ("at_chosen", result["threshold"])):
            report = task.report(test.labels, logits, threshold)
            result[f"test_{name}"] = {key: report[key] for key in ("precision", "recall", "f1", "accuracy")}
        print(f"test F1 at 0.5: {result['test_at_0.5']['f1']:.4f}; at the chosen {result['threshold']:.4f}: "
              f"{result['test_at_chosen']['f1']:.4f}")
    return result


def suite_overrides(args):
    """The suite settings given on this command line, over the recipe's own."""
    names = ("epochs", "precision", "class_weight", "early_stopping_patience", "calibrate", "threshold_metric")
    return {name: getattr(args, name) for name in names if getattr(args, name) is not None}


def write_ratings_csvs(flags, caps, out_dir):
    """train/validation/test CSVs of (text, rating class) from the real reviews: the first 2,000 and
    the next 500 of train/ in the tutorial's seed-42 shuffle, and the first 2,500 of test/ in it."""
    import csv

    from tfhub_classifier.data import imdb
    root = imdb.prepare(flags["data_dir"], flags["dataset_url"])
    train_paths, _ = imdb.list_reviews(os.path.join(root, "train"), 42)
    test_paths, _ = imdb.list_reviews(os.path.join(root, "test"), 42)
    chosen = {"train": train_paths[:caps[0]], "validation": train_paths[caps[0]:caps[0] + caps[1]],
              "test": test_paths[:caps[2]]}
    os.makedirs(out_dir, exist_ok=True)
    files = {}
    for name, paths in chosen.items():
        files[name] = os.path.join(out_dir, f"{name}.csv")
        with open(files[name], "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(["text", "label"])
            for path in paths:
                stars = int(os.path.basename(path).rsplit("_", 1)[1].split(".")[0])
                with open(path, encoding="utf-8", errors="replace") as review:
                    writer.writerow([review.read(), RATING_CLASSES[stars]])
    return files


def classical_baselines(files):
    """Macro-F1 on test of TF-IDF + logistic regression (C picked on validation) and of the majority class."""
    import csv

    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, f1_score

    def read(name):
        with open(files[name], newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
        return [r["text"] for r in rows], [r["label"] for r in rows]
    (train_x, train_y), (val_x, val_y), (test_x, test_y) = read("train"), read("validation"), read("test")
    vectorizer = TfidfVectorizer(sublinear_tf=True, ngram_range=(1, 2), min_df=2)
    train_v = vectorizer.fit_transform(train_x)
    val_v, test_v = vectorizer.transform(val_x), vectorizer.transform(test_x)
    best = max((f1_score(val_y, LogisticRegression(C=c, max_iter=2000).fit(train_v, train_y).predict(val_v),
                         average="macro"), c) for c in (0.3, 1, 3, 10, 30))
    model = LogisticRegression(C=best[1], max_iter=2000).fit(train_v, train_y)
    majority = max(set(train_y), key=train_y.count)
    return {"tfidf_logistic_regression": {"macro_f1": f1_score(test_y, model.predict(test_v), average="macro"),
                                          "accuracy": accuracy_score(test_y, model.predict(test_v)),
                                          "C": best[1]},
            "majority_class": {"macro_f1": f1_score(test_y, [majority] * len(test_y), average="macro"),
                               "accuracy": test_y.count(majority) / len(test_y), "label": majority}}


def ratings(args, flags):
    import config
    from tfhub_classifier.inference import evaluation
    from tfhub_classifier.training import trainer
    caps = PROTOCOLS["ratings"]["caps"]
    files = write_ratings_csvs(flags, caps, os.path.join(common.RESULTS, "ratings"))
    baselines = classical_baselines(files)
    overrides = {**PROTOCOLS["ratings"]["flags"], **suite_overrides(args)}
    model_dir = os.path.join(common.RESULTS, "models", "ratings_best")
    cfg = config.resolve(recipe="best", train_data=files["train"], test_data=files["test"],
                         validation_data=files["validation"], model_dir=model_dir,
                         plots_dir=os.path.join(common.RESULTS, "plots"),
                         **{k: v for k, v in flags.items() if k in ("encoder", "preprocessor")}, **overrides)
    started = time.time()
    record = trainer.run(cfg)
    metrics = evaluation.evaluate(cfg)  # the confusion matrix and reliability PNGs, from the saved model
    ours = {"macro_f1": record["test_metrics"]["macro"]["f1"], "accuracy": record["test_metrics"]["accuracy"],
            "confusion_matrix": record["test_metrics"]["confusion_matrix"], "plots": metrics["plots"],
            "precision": record["precision"], "best_epoch": record["best_epoch"], "overrides": overrides,
            "epochs_run": len(record["history"]["loss"]), "wall_seconds": round(time.time() - started),
            "calibration": {key: value for key, value in metrics["calibration"].items() if key != "bins"},
            "validation_calibration": record.get("calibration")}
    if "before_temperature" in metrics["calibration"]:
        before, after = metrics["calibration"]["before_temperature"], metrics["calibration"]
        print(f"test ECE {before['ece']:.4f} -> {after['ece']:.4f}, Brier {before['brier']:.4f} -> "
              f"{after['brier']:.4f} (temperature {after['temperature']:.4f})")
    result = {"machine": common.machine(), "split_sizes": record["split_sizes"],
              "label_names": record["task"]["label_names"], "suite_best": ours, **baselines}
    common.save_result("accuracy_ratings", result)
    print(f"{'model':<32} macro-F1  accuracy")
    for name, scores in (("suite, best recipe", ours),
                         ("TF-IDF + logistic regression", baselines["tfidf_logistic_regression"]),
                         ("majority class", baselines["majority_class"])):
        print(f"{name:<32} {scores['macro_f1']:.4f}    {scores['accuracy']:.4f}")
    gain = ours["macro_f1"] - baselines["tfidf_logistic_regression"]["macro_f1"]
    print(f"RESULT protocol=ratings macro_f1={ours['macro_f1']:.4f} "
          f"tfidf_lr={baselines['tfidf_logistic_regression']['macro_f1']:.4f} gain={100 * gain:+.1f}points", flush=True)
    return result


if __name__ == "__main__":
    main()
