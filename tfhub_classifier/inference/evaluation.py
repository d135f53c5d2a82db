"""Evaluating a saved classifier on labelled test data: metrics, plots, its most confident mistakes."""
import json
import os

import numpy as np

import config
from tfhub_classifier import cli
from tfhub_classifier.data import imdb, user_files
from tfhub_classifier.inference import calibration, engines, plots, prediction, report, scoring, thresholds
from tfhub_classifier.model import saving


def evaluate(cfg, log=print):
    """Metrics of the saved model in cfg.model_dir on its test data (IMDB's test split, or
    --test-data) at --threshold or the model's own, with its calibration (before and after temperature
    scaling if it was applied) and its cfg.show_errors most confident mistakes with the words that drove
    them, written beside the model as evaluation.json, with plots in cfg.plots_dir."""
    model, record, precision = engines.load(cfg.model_dir, cfg.precision, cfg.engine, log)
    task = saving.task_of_record(record)
    threshold = saving.threshold_in_use(cfg.threshold, record)
    test = evaluation_split(cfg, task, log)
    log(f"Evaluating {cfg.model_dir} on {len(test):,} test texts ({task.kind}, {precision}) ...")
    logits = scoring.logits_of(model, test.texts, cfg.eval_batch_size, progress=True)
    metrics = task.report(test.labels, logits, threshold)
    prefix = os.path.basename(os.path.abspath(cfg.model_dir))
    if task.kind == "binary":
        metrics["plots"] = plots.plot_evaluation(test.labels, logits, metrics, cfg.plots_dir, prefix,
                                                     task.label_names)
    else:
        probabilities = task.probabilities(logits)
        one_hot = test.labels if task.kind == "multilabel" else np.eye(len(task.label_names))[test.labels]
        metrics["plots"] = plots.plot_one_vs_rest(one_hot, probabilities, task.label_names, cfg.plots_dir, prefix)
        if task.kind == "multiclass":
            metrics["plots"].update(plots.plot_confusion(metrics["confusion_matrix"], task.label_names,
                                                         cfg.plots_dir, prefix))
    metrics["calibration"] = calibration_report(task, test.labels, logits, saving.temperature_of_record(record))
    metrics["plots"]["reliability_diagram"] = plots.plot_reliability(
        metrics["calibration"], os.path.join(cfg.plots_dir, f"{prefix}_reliability_diagram.png"),
        metrics["calibration"].get("before_temperature"))
    metrics["threshold_source"] = ("--threshold" if cfg.threshold is not None else
                                   f"chosen for {record['threshold_choice']['metric']} at training"
                                   if "threshold" in record else "the default")
    if record.get("history", {}).get("loss"):
        metrics["plots"]["training_history"] = plots.plot_history(
            record["history"], os.path.join(cfg.plots_dir, f"{prefix}_history.png"), record.get("best_epoch"))
    errors = confident_errors(task, test, task.probabilities(logits), threshold,
                              max(cfg.show_errors, report.REPORT_ERRORS))
    if errors:
        from tfhub_classifier.inference import attribution
        explainer = attribution.Explainer.of_record(model, record, task, cfg.explain_method)
        labels = [error.pop("explained") for error in errors]
        for error, why in zip(errors, explainer.explain([error["text"] for error in errors], labels)):
            error.update(why.as_json(task.label_names))
    metrics["most_confident_errors"] = errors[:cfg.show_errors]
    metrics["precision_mode"], metrics["engine"] = precision, engines.in_use(model, cfg.engine)
    metrics["attention"] = engines.attention_in_use(model)
    metrics["task"] = {"kind": task.kind, "label_names": list(task.label_names)}
    try:
        with open(os.path.join(cfg.model_dir, "evaluation.json"), "w") as f:
            json.dump(metrics, f, indent=2)
        path = os.path.join(cfg.model_dir, report.REPORT_FILE)
        metrics["report"] = report.write(path, prefix, metrics, record, cfg.explain_method, errors)
    except OSError as error:  # a read-only model dir still gets its report on screen
        log(f"(could not write evaluation.json and {report.REPORT_FILE} beside the model: {error.strerror})")
    return metrics


def evaluation_split(cfg, task, log=print):
    """The labelled texts to evaluate on: --test-data against the model's label names, else IMDB's test split."""
    if cfg.test_data:
        split = user_files.load_split(cfg.test_data, task.label_names, task.kind, cfg.seed, log=log,
                                      **user_files.reading_options(cfg))
        return split.capped(cfg.max_examples)
    if sorted(task.label_names) != sorted(imdb.CLASS_NAMES):
        raise ValueError(f"{cfg.model_dir} was not trained on IMDB (labels {', '.join(task.label_names)}); "
                         "pass --test-data PATH with its labelled test data")
    _, _, test = imdb.load_splits(cfg, with_train=False)
    return test.with_positive_label(task.label_names[1])  # the model's positive label (--positive-label neg)


def calibration_report(task, labels, logits, temperature):
    """ECE, Brier score, NLL and reliability bins of the model's probabilities; with a temperature other
    than 1, also those of the logits before it (the saved model's logits are already divided by it)."""
    report = calibration.summary(task.kind, labels, logits)
    if temperature != 1.0:
        report["temperature"] = temperature
        report["before_temperature"] = calibration.summary(task.kind, labels, np.asarray(logits) * temperature)
    return report


def confident_errors(task, split, probabilities, threshold, count):
    """The count texts the model got wrong with the most confidence (for multi-label, any label wrong),
    each with the index of the label to explain (explained): the one wrongly given."""
    if not count:
        return []
    if task.kind == "multilabel":
        return _confident_multilabel_errors(task, split, probabilities, threshold, count)
    predicted = task.predicted_labels(probabilities, threshold)
    wrong = np.nonzero(predicted != split.labels)[0]
    if task.kind == "binary":
        confidence = np.abs(probabilities[wrong] - threshold)
    else:
        confidence = probabilities[wrong, predicted[wrong]]
    worst = wrong[np.argsort(-confidence, kind="stable")][:count]
    return [{"path": split.paths[i], "label": task.label_names[split.labels[i]],
             "predicted": task.label_names[predicted[i]],
             "score": float(probabilities[i] if task.kind == "binary" else probabilities[i, predicted[i]]),
             "text": split.texts[i], "explained": int(predicted[i])} for i in worst]


def _confident_multilabel_errors(task, split, probabilities, threshold, count):
    """Texts with a label given or withheld wrongly, the most confident such decision first; score is
    that label's probability, label and predicted the true and the given label sets; explained: that
    label (its index), whose words are shown."""
    predicted = task.predicted_labels(probabilities, threshold)
    wrong_cells = predicted != split.labels.astype(np.int64)
    margins = np.where(wrong_cells, np.abs(probabilities - threshold), -1.0)
    wrong = np.nonzero(wrong_cells.any(axis=1))[0]
    worst = wrong[np.argsort(-margins[wrong].max(axis=1), kind="stable")][:count]

    def names(row):
        return "|".join(name for name, given in zip(task.label_names, row) if given) or "-"
    return [{"path": split.paths[i], "label": names(split.labels[i]), "predicted": names(predicted[i]),
             "score": float(probabilities[i, np.argmax(margins[i])]), "text": split.texts[i],
             "explained": int(np.argmax(margins[i]))} for i in worst]


def format_metrics(metrics, colour=False):
    """The lines evaluate.py prints; colour: the words that drove each mistake in colour (a terminal)."""
    kind = metrics["task"]["kind"]
    names = metrics["task"]["label_names"]
    lines = [f"Loss: {metrics['loss']:.4f}"]
    if kind == "binary":
        (tn, fp), (fn, tp) = metrics["confusion_matrix"]
        lines += [f"Accuracy: {metrics['accuracy']:.4f}",
                  f"Positive label: {names[1]} (at threshold {metrics['threshold']:.4f}, "
                  f"{metrics.get('threshold_source', 'the default')})",
                  f"Precision: {metrics['precision']:.4f}  Recall: {metrics['recall']:.4f}  F1: {metrics['f1']:.4f}"
                  f"  (of {names[1]})",
                  f"Macro F1: {metrics['macro']['f1']:.4f}",
                  f"ROC AUC: {metrics['roc_auc']:.4f}",
                  f"Confusion matrix (rows true, columns predicted; {names[0]}, {names[1]}): "
                  f"[[{tn}, {fp}], [{fn}, {tp}]]"]
        lines += _per_label_lines(metrics)
    else:
        if kind == "multiclass":
            lines.append(f"Accuracy: {metrics['accuracy']:.4f}")
        else:
            lines.append(f"Subset accuracy: {metrics['subset_accuracy']:.4f}  "
                         f"Hamming loss: {metrics['hamming_loss']:.4f}")
            lines.append(f"Threshold: {thresholds.describe(metrics['threshold'])} "
                         f"({metrics.get('threshold_source', 'the default')})")
        for average in ("macro", "micro", "weighted"):
            scores = metrics[average]
            lines.append(f"{average.capitalize()} precision: {scores['precision']:.4f}  recall: "
                         f"{scores['recall']:.4f}  F1: {scores['f1']:.4f}")
        lines.append(f"ROC AUC (one-vs-rest, macro): {metrics['roc_auc_ovr_macro']:.4f}")
        lines += _per_label_lines(metrics)
        if kind == "multiclass":
            lines.append(f"Confusion matrix (rows true, columns predicted; {', '.join(names)}): "
                         f"{metrics['confusion_matrix']}")
    if metrics.get("absent_labels"):
        left_out = "" if kind == "multilabel" else "; the macro averages leave out those never predicted either"
        lines.append(f"No test text has the label(s): {', '.join(metrics['absent_labels'])}{left_out}")
    if metrics.get("never_predicted"):
        lines.append(f"warning: the model gives no test text the label(s): {', '.join(metrics['never_predicted'])}"
                     + ("; a lower --threshold, or a threshold chosen at training (--threshold-metric f1), may help"
                        if kind != "multiclass" else ""))
    if metrics.get("always_predicted"):
        lines.append(f"warning: the model gives every test text the label(s): {', '.join(metrics['always_predicted'])}")
    lines += _calibration_lines(metrics.get("calibration"))
    for error in metrics["most_confident_errors"]:
        snippet = " ".join(error["text"].split())[:100]
        lines.append(f"  wrong, true {error['label']}, predicted {error['predicted']} ({error['score']:.4f}): "
                     f"{snippet}")
        if "words" in error:
            lines.append(prediction.why_line(error["words"], error["weights"], error["explained_label"], colour))
    for name, path in metrics["plots"].items():
        lines.append(f"Plot ({name.replace('_', ' ')}): {path}")
    if metrics.get("report"):
        lines.append(f"Report (open in a browser): {metrics['report']}")
    return lines


def _calibration_lines(calibrated):
    if not calibrated:
        return []
    line = f"Calibration: ECE {calibrated['ece']:.4f}  Brier {calibrated['brier']:.4f}"
    if "before_temperature" in calibrated:
        before = calibrated["before_temperature"]
        line += (f" (temperature {calibrated['temperature']:.4f}; before it: ECE {before['ece']:.4f}  "
                 f"Brier {before['brier']:.4f})")
    return [line]


def _per_label_lines(metrics):
    lines = [f"{'label':<20} precision  recall  F1      support"]
    for name, row in metrics["per_label"].items():
        lines.append(f"{name[:20]:<20} {row['precision']:.4f}     {row['recall']:.4f}  {row['f1']:.4f}  "
                     f"{row['support']}")
    return lines


def evaluation_config(args):
    """The Config evaluate.py uses: the model's own recorded data settings, then the flags."""
    record = cli.read_run_record(args.model_dir or config.Config.model_dir)
    cfg = config.from_args(args, config.recorded_defaults(record), script=config.EVALUATE)
    if record and not args.test_data and cfg.test_data and not os.path.exists(cfg.test_data):
        where = "" if os.path.isabs(cfg.test_data) else " (relative to the folder train.py ran in)"
        raise ValueError(f"{cfg.test_data}, the test data {cfg.model_dir}'s run record names{where}, is not there; "
                         "pass --test-data PATH with the model's labelled test data")
    return cfg
