"""Word attributions (predict.py --explain) on the tiny models: integrated gradients complete and leaving the
model as it was, occlusion exact, pieces merged into the text's words with their offsets."""
import json

import helpers
import numpy as np
import pytest

import predict
from tfhub_classifier import tasks

LABELS = {"binary": ("neg", "pos"), "multiclass": ("anger", "joy", "fear"), "multilabel": ("plot", "acting", "music")}
TEXTS = ["The movie was great! I loved it, wonderfully acted.", "terrible , boring and dull",
         "a film", "", " ".join(["the"] * 10 + ["great"] + ["movie"] * 30 + ["awful"])]


@pytest.fixture(scope="module")
def saved(hub_models, tmp_path_factory):
    """{kind: model dir} of untrained classifiers (24 tokens, head+tail): attributions' properties hold for any
    weights."""
    return {kind: helpers.untrained_classifier(tmp_path_factory.mktemp(kind), *hub_models, tasks.Task(kind, labels),
                                               "head+tail") for kind, labels in LABELS.items()}


def loaded(model_dir):
    from tfhub_classifier.model import saving
    model, record = saving.load(model_dir)
    return model, record, saving.task_of_record(record)


def label_probabilities(model, task, texts, labels):
    """Each text's label's probability as predict.py scores the text (the saved model's own tokenizer)."""
    from tfhub_classifier.inference import scoring
    probabilities = np.asarray(task.probabilities(scoring.logits_of(model, texts, 8)))
    if task.kind == "binary":
        return np.where(np.asarray(labels) == 1, probabilities, 1 - probabilities)
    return probabilities[np.arange(len(texts)), labels]


def test_words_are_the_texts_own_with_their_offsets():
    from tfhub_classifier.inference.attribution import word_spans
    text = "The movie  was great!Wonderfully,\treally. 好电影"
    spans = word_spans(text, pieces_split_words=True)
    assert [text[start:end] for start, end in spans] == [
        "The", "movie", "was", "great", "!", "Wonderfully", ",", "really", ".", "好", "电", "影"]
    assert [text[start:end] for start, end in word_spans(text, pieces_split_words=False)] == [
        "The", "movie", "was", "great!Wonderfully,", "really.", "好电影"]
    assert word_spans(" \n ", True) == []


@pytest.mark.parametrize("kind", LABELS)
def test_integrated_gradients_sum_to_the_change_from_the_baseline_and_leave_the_model_as_it_was(saved, kind):
    from tfhub_classifier.inference import attribution
    model, record, task = loaded(saved[kind])
    before = label_probabilities(model, task, TEXTS, [1] * len(TEXTS))
    explainer = attribution.Explainer.of_record(model, record, task, "integrated-gradients")
    labels = [1, 0, 1, 0, 1]
    explanations = explainer.explain(TEXTS, labels)
    for text, label, explanation in zip(TEXTS, labels, explanations):
        assert explanation.label == label
        total = sum(weight for weight in explanation.weights if weight is not None)
        change = explanation.probability - explanation.baseline
        gap = abs(total - change) / max(abs(change), 0.01)
        assert gap <= attribution.COMPLETENESS and gap == pytest.approx(explanation.completeness_gap, abs=1e-4), text
        assert explanation.steps in (32, 64, 128)
    assert max(abs(e.probability - e.baseline) for e in explanations) > 0.01  # completeness was put to the test
    assert [e.probability for e in explanations] == pytest.approx(
        label_probabilities(model, task, TEXTS, labels).tolist(), abs=1e-5)
    assert np.array_equal(label_probabilities(model, task, TEXTS, [1] * len(TEXTS)), before)  # embeddings put back


def test_an_error_midway_still_puts_the_embeddings_back(saved, monkeypatch):
    from tfhub_classifier.inference import attribution
    model, record, task = loaded(saved["binary"])
    before = label_probabilities(model, task, TEXTS, [1] * len(TEXTS))
    explainer = attribution.Explainer.of_record(model, record, task, "integrated-gradients")
    calls = []

    def failing(tokens, labels):
        calls.append(1)
        if len(calls) == 3:
            raise MemoryError("out of memory, say")
        return attribution.Explainer._gradient(explainer, tokens, labels)

    monkeypatch.setattr(explainer, "_gradient", failing)
    with pytest.raises(MemoryError):
        explainer.explain(TEXTS, [1] * len(TEXTS))
    assert np.array_equal(label_probabilities(model, task, TEXTS, [1] * len(TEXTS)), before)


@pytest.mark.parametrize("kind", LABELS)
def test_occlusion_weighs_each_word_by_the_fall_when_it_alone_is_deleted(saved, kind):
    from tfhub_classifier.inference import attribution
    model, record, task = loaded(saved[kind])
    explainer = attribution.Explainer.of_record(model, record, task, "occlusion")
    text = TEXTS[0]
    explanation, = explainer.explain([text], [2 if kind != "binary" else 1])
    assert [text[start:end] for start, end in explanation.offsets] == explanation.words
    variants = [attribution.without(text, [span]) for span in explanation.offsets]
    own = label_probabilities(model, task, [text, *variants], [explanation.label] * (len(variants) + 1))
    assert explanation.probability == pytest.approx(own[0], abs=1e-5)
    assert explanation.weights == pytest.approx((own[0] - own[1:]).tolist(), abs=1e-5)


def test_a_words_pieces_add_up_and_words_outside_the_window_have_no_weight(saved):
    """'wonderfully' is two pieces (wonderful ##ly): its weight is theirs summed; of the long text, 24 tokens
    keep the head and the tail, so the middle words were never seen and get None, not 0."""
    from tfhub_classifier.inference import attribution
    model, record, task = loaded(saved["binary"])
    explainer = attribution.Explainer.of_record(model, record, task, "integrated-gradients")
    text = "wonderfully great"
    explanation, = explainer.explain([text], [1])
    tokens = explainer.tokens([text])
    attributions, _, _ = explainer.integrated_gradients(tokens, [1])
    assert explanation.words == ["wonderfully", "great"]
    assert explanation.weights == pytest.approx([attributions[0, 1] + attributions[0, 2], attributions[0, 3]],
                                                abs=1e-6)
    long_text = TEXTS[4]
    explanation, = explainer.explain([long_text], [1])
    seen = [weight is not None for weight in explanation.weights]
    assert seen[:6] == [True] * 6 and seen[-16:] == [True] * 16 and not any(seen[6:-16])


def test_a_sentencepiece_model_is_explained_word_by_word(hub_models, tmp_path):
    """ALBERT-style tokenizers split no words themselves: words are the whitespace-separated ones."""
    import tiny_hub

    from tfhub_classifier.inference import attribution
    preprocessor = tiny_hub.save_sentencepiece_preprocessor(str(tmp_path / "albert"))
    model_dir = helpers.untrained_classifier(tmp_path, preprocessor, hub_models[1],
                                             tasks.Task("binary", ("neg", "pos")), "head")
    model, record, task = loaded(model_dir)
    text = "great film, loved it"  # 24 tokens hold all its pieces (this tokenizer makes many)
    for method in ("occlusion", "integrated-gradients"):
        explanation, = attribution.Explainer.of_record(model, record, task, method).explain([text], [1])
        assert explanation.words == text.split() and not explanation.note
        assert all(weight is not None for weight in explanation.weights)


def test_deleting_a_word_between_two_others_keeps_them_apart():
    from tfhub_classifier.inference.attribution import without, word_spans
    text = "I don't like it!Really."
    spans = word_spans(text, True)
    assert [without(text, [span]) for span in spans if text[span[0]:span[1]] in ("'", "!")] == [
        "I don t like it!Really.", "I don't like it Really."]


def explained_lines(model_dir, capsys, *flags, texts=TEXTS[:3]):
    predict.main(["--model-dir", model_dir, "--precision", "float32", "--explain", "--format", "jsonl", *flags,
                  *texts])
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


@pytest.mark.parametrize("kind", LABELS)
def test_predict_explain_gives_each_text_its_words_offsets_and_weights(saved, kind, capsys):
    lines = explained_lines(saved[kind], capsys)
    for line in lines:
        assert [line["text"][start:end] for start, end in line["offsets"]] == line["words"]
        assert len(line["weights"]) == len(line["words"])
        if kind == "binary":
            assert line["explained_label"] == line["label"]
        elif kind == "multiclass":
            assert line["explained_label"] == line["label"]
        else:
            probabilities = line["probabilities"]
            assert line["explained_label"] == max(probabilities, key=probabilities.get)
    chosen = explained_lines(saved[kind], capsys, "--explain-label", LABELS[kind][0])
    shown = "negative" if kind == "binary" else LABELS[kind][0]  # IMDB's neg, named as predict.py names it
    assert {line["explained_label"] for line in chosen} == {shown}


def test_the_table_shows_the_words_that_drove_each_label(saved, capsys):
    predict.main(["--model-dir", saved["binary"], "--precision", "float32", "--explain", TEXTS[0]])
    first, why = capsys.readouterr().out.splitlines()
    assert first.startswith("input: The movie was great!")
    assert why.startswith("    why ") and "great (" in why and "\033[" not in why  # colours only on a terminal


@pytest.mark.parametrize("flags, message", [
    (["--explain", "--format", "csv"], "use --format jsonl"),
    (["--explain-label", "pos"], "add --explain"),
    (["--explain", "--explain-label", "maybe"], "'maybe' is not one of this model's labels: neg, pos"),
])
def test_explain_flags_that_cannot_work_are_refused(saved, flags, message):
    with pytest.raises(ValueError, match=message):
        predict.main(["--model-dir", saved["binary"], *flags, "a film"])
