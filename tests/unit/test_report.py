"""evaluate.py's report.html, built from metrics and figures as evaluate.py computes them (no model), read as
text and opened in headless Chromium: self-contained, readable offline, hostile texts shown, never run."""
import html
import os
import re

import numpy as np
import pytest
from browser import loaded_resources

from tfhub_classifier import tasks
from tfhub_classifier.data.split import Split
from tfhub_classifier.inference import attribution, evaluation, plots, report

HOSTILE = '<script>window.hacked = 1</script><img src=x onerror="window.hacked = 2"> a great film & "quotes"'


def evaluated(tmp_path, kind="binary"):
    """(metrics, run record) as evaluate.py makes them, for 40 texts with made-up scores."""
    rng = np.random.default_rng(0)
    names = ("neg", "pos") if kind == "binary" else ("anger", "joy", "fear")
    task = tasks.Task(kind, names)
    labels = rng.integers(0, len(names), 40)
    logits = (rng.normal(size=40) + 2 * (labels - 0.5)) if kind == "binary" else rng.normal(size=(40, 3)) + np.eye(3)[
        labels] * 2
    texts = [HOSTILE if i == 0 else f"text {i} was fine" for i in range(40)]
    test = Split(texts, labels, [f"test.csv:{i + 2}" for i in range(40)], names, kind)
    metrics = task.report(labels, logits, 0.5)
    if kind == "binary":
        metrics["plots"] = plots.plot_evaluation(labels, logits, metrics, str(tmp_path), "m", names)
    else:
        metrics["plots"] = plots.plot_one_vs_rest(np.eye(3)[labels], task.probabilities(logits), names,
                                                  str(tmp_path), "m")
    metrics["calibration"] = evaluation.calibration_report(task, labels, logits, 1.0)
    metrics["plots"]["reliability_diagram"] = plots.plot_reliability(metrics["calibration"],
                                                                     str(tmp_path / "m_reliability.png"))
    history = {"loss": [0.6, 0.4], "val_loss": [0.5, 0.45], "binary_accuracy": [0.7, 0.8],
               "val_binary_accuracy": [0.75, 0.78]}
    metrics["plots"]["training_history"] = plots.plot_history(history, str(tmp_path / "m_history.png"), 2)
    errors = evaluation.confident_errors(task, test, task.probabilities(logits), 0.5, 5)
    errors = [error for error in errors if error["text"] == HOSTILE] or errors[:1]
    errors[0]["text"] = HOSTILE
    for error in errors:
        spans = attribution.word_spans(error["text"], True)
        explained = error.pop("explained")
        why = attribution.Explanation(explained, [error["text"][a:b] for a, b in spans], spans,
                                      [(-1) ** i * (i + 1) / 10 for i in range(len(spans))], error["score"])
        error.update(why.as_json(names))
    metrics.update(most_confident_errors=errors, threshold_source="the default",
                   precision_mode="float32", task={"kind": kind, "label_names": list(names)})
    record = {"config": {"recipe": "best", "seq_length": 512, "truncation": "head+tail", "epochs": 4},
              "encoder": "https://tfhub.dev/tensorflow/small_bert/2", "split_sizes": {"train": 160, "validation": 40},
              "best_epoch": 2, "history": history}
    return metrics, record


@pytest.mark.parametrize("kind", ["binary", "multiclass"])
def test_the_report_is_one_self_contained_file_that_runs_no_script(tmp_path, kind, monkeypatch):
    metrics, record = evaluated(tmp_path, kind)
    path = report.write(str(tmp_path / "report.html"), "tickets", metrics, record, "occlusion",
                        metrics["most_confident_errors"])
    with open(path, encoding="utf-8") as f:
        page = f.read()
    assert "<script" not in page.lower() and "onerror=" not in page  # the hostile text is only escaped text
    mistake = re.search(r'<p class="text">(.*?)</p>', page, re.S).group(1)
    assert html.unescape(re.sub(r"<[^>]+>", "", mistake)) == HOSTILE  # the words' markup aside, the text itself
    sources = re.findall(r'(?:src|href)="([^"]*)"', page)
    assert sources and all(source.startswith("data:image/png;base64,") for source in sources)
    assert len(sources) == len(metrics["plots"])  # every figure inlined
    for name, row in metrics["per_label"].items():
        assert f"<td>{name}</td>" in page and f"{row['f1']:.4f}" in page
    assert f"{metrics['loss']:.4f}" in page and "head+tail" in page and "small_bert" in page
    assert not [name for name in os.listdir(tmp_path) if name.endswith(".partial")]  # nothing half-written

    def disk_full(source, target):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(os, "replace", disk_full)
    with pytest.raises(OSError):
        report.write(path, "tickets", metrics, record, "occlusion", [])
    with open(path, encoding="utf-8") as f:
        assert f.read() == page  # a failed rewrite keeps the report that was there
    assert not [name for name in os.listdir(tmp_path) if name.endswith(".partial")]


def test_the_report_in_a_browser_shows_figures_metrics_and_the_words_of_each_mistake(tmp_path, chromium):
    from selenium.webdriver.common.by import By
    metrics, record = evaluated(tmp_path)
    path = report.write(str(tmp_path / "report.html"), "imdb_bert", metrics, record, "occlusion",
                        metrics["most_confident_errors"])
    chromium.get("file://" + path)
    assert chromium.title == "imdb_bert: evaluation"
    images = chromium.find_elements(By.TAG_NAME, "img")
    assert len(images) == len(metrics["plots"])
    assert all(chromium.execute_script("return arguments[0].complete && arguments[0].naturalWidth > 100", image)
               for image in images)  # decoded, from the file alone
    assert all(url.startswith("data:") for url in loaded_resources(chromium))  # nothing fetched
    assert chromium.execute_script("return window.hacked === undefined")  # the hostile text did not run
    mistake = chromium.find_element(By.CSS_SELECTOR, ".error p.text")
    assert HOSTILE in mistake.text  # shown as the text it is
    shaded = mistake.find_elements(By.CSS_SELECTOR, "span[title]")
    words = [word for word, weight in zip(metrics["most_confident_errors"][0]["words"],
                                          metrics["most_confident_errors"][0]["weights"]) if weight]
    assert [span.text for span in shaded] == words
    assert "Accuracy" in chromium.find_element(By.TAG_NAME, "body").text or "accuracy" in chromium.page_source
    chromium.save_screenshot(str(tmp_path / "report.png"))
    assert (tmp_path / "report.png").stat().st_size > 10_000
