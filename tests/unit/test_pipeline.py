"""Recipes, optimizers and schedules, truncation of long texts, length-sorted batches, strategies: what
the pipeline does, shown without training."""
import numpy as np
import pytest

import config


def test_recipes_and_flag_overrides():
    tutorial = config.resolve(recipe="tutorial")
    assert (tutorial.batch_size, tutorial.schedule, tutorial.optimizer, tutorial.seq_length) == \
        (4, "constant", "tutorial-adamw", 128)
    # The tutorial's run: strings into the model (padded to 128, random batches), float32.
    assert (tutorial.pipeline, tutorial.precision) == ("tutorial", "float32")
    assert config.resolve(recipe="tutorial", precision="bfloat16" if config.hardware.cpu_supports_bfloat16()
                          else "auto").precision != "float32"  # the user may still override it
    assert config.resolve(recipe="official").schedule == "linear"
    assert config.resolve().recipe == "best"
    assert config.resolve(recipe="tutorial", batch_size=8).batch_size == 8  # a flag beats the recipe


def test_optimizers_follow_their_recipes():
    from tfhub_classifier.training import optimization
    best = optimization.make_optimizer(config.resolve(), 100)
    assert best.weight_decay == 0.01 and best.global_clipnorm == 1.0
    tutorial = optimization.make_optimizer(config.resolve(recipe="tutorial"), 100)
    # tfa semantics: 1e-4 of each weight per step, whatever the rate.
    assert tutorial.weight_decay * tutorial.learning_rate.numpy() == pytest.approx(1e-4)


@pytest.mark.parametrize("step", [0, 1, 5, 9, 10, 11, 50, 99, 100, 120])
def test_official_schedule_is_create_optimizers(step):
    """tf-models' create_optimizer: linear warm-up to the peak, then PolynomialDecay(peak, total, end=0)
    at the global step, so the rate at the end of a 10% warm-up is 0.9 x peak (2.7e-5), not the peak."""
    from tfhub_classifier.training import optimization
    peak, total, warmup = 3e-5, 100, 10
    schedule = optimization.make_optimizer(config.resolve(recipe="official"), total)._learning_rate
    expected = peak * step / warmup if step < warmup else peak * (1 - min(step, total) / total)
    assert float(schedule(step)) == pytest.approx(expected, rel=1e-5, abs=1e-12)


def test_weight_decay_skips_layer_norm_and_bias(hub_models):
    from tfhub_classifier import runtime
    from tfhub_classifier.model import modeling
    from tfhub_classifier.training import optimization
    model = modeling.build_token_classifier(runtime.hub.load(hub_models[1]), 0.1, "pooled")
    optimizer = optimization.make_optimizer(config.resolve(), 10)
    optimizer.build(model.trainable_variables)
    decayed = {v.name for v in model.trainable_variables if optimizer._use_weight_decay(v)}
    assert any("word_embeddings" in name for name in decayed)
    assert not any("layer_norm" in name or "bias" in name for name in decayed)


@pytest.fixture(scope="module")
def text_to_tokens(hub_models):
    from tfhub_classifier import runtime
    from tfhub_classifier.data import tokenization
    preprocessor = runtime.hub.load(hub_models[0])
    return lambda length, truncation: tokenization.TextToTokens(preprocessor, length, truncation), preprocessor


def test_head_truncation_equals_the_preprocessors_own(text_to_tokens):
    import tensorflow as tf
    make, preprocessor = text_to_tokens
    texts = tf.constant(["great film " * 100, "awful", ""])
    ours = make(128, "head")(texts)
    theirs = preprocessor(texts)  # the tutorial's hub.KerasLayer(preprocessor) output, 128 tokens
    for key in ours:
        np.testing.assert_array_equal(ours[key].numpy(), theirs[key].numpy())


@pytest.mark.parametrize("truncation, expected", [
    ("head", ["great"] * 6),
    ("tail", ["awful"] * 6),
    ("head+tail", ["great"] * 2 + ["awful"] * 4),  # 128/510 of the budget from the head
])
def test_truncation_keeps_the_right_tokens(text_to_tokens, truncation, expected):
    import tensorflow as tf
    from tiny_hub import VOCAB
    make, _ = text_to_tokens
    tokens = make(8, truncation)(tf.constant(["great " * 20 + "awful " * 20]))
    ids = tokens["input_word_ids"].numpy()[0]
    assert [VOCAB[i] for i in ids] == ["[CLS]"] + expected + ["[SEP]"]
    short = make(8, truncation)(tf.constant(["great awful"]))["input_word_ids"].numpy()[0]
    assert [VOCAB[i] for i in short] == ["[CLS]", "great", "awful", "[SEP]", "[PAD]", "[PAD]", "[PAD]", "[PAD]"]


def test_scoring_and_training_batch_token_ids_alike(text_to_tokens, monkeypatch):
    """Scoring's NumPy batching and training's tf.data batching: the same rows, order and widths."""
    import tensorflow as tf

    from tfhub_classifier.data import tokenization
    monkeypatch.setattr(tokenization, "TOKENIZE_BATCH", 7)
    make, _ = text_to_tokens
    to_tokens = make(40, "head")
    texts = [("great " if i % 3 else "awful ") * ((i * 11) % 50 + 1) for i in range(30)]  # some beyond 40 tokens
    examples = tf.data.Dataset.from_tensor_slices((texts, tf.range(len(texts))))
    expected = [(rows.numpy(), {key: value.numpy() for key, value in tokens.items()})
                for tokens, rows in tokenization.length_sorted_batches(tokenization.tokenized(examples, to_tokens), 4)]
    got = list(tokenization.sorted_batches(tokenization.tokens_of(to_tokens, texts), 4))
    assert len(got) == len(expected) == 8
    for (rows, tokens), (expected_rows, expected_tokens) in zip(got, expected):
        np.testing.assert_array_equal(rows, expected_rows)
        for key in tokenization.TOKEN_KEYS:
            np.testing.assert_array_equal(tokens[key].numpy(), expected_tokens[key])
    assert max(tokens["input_mask"].shape[1] for _, tokens in got) == 40  # capped at the sequence length


def test_strategy_errors_name_the_fix(monkeypatch):
    from tfhub_classifier import runtime
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(ValueError, match="TF_CONFIG"):
        runtime.make_strategy("multiworker")
    assert runtime.make_strategy("default").num_replicas_in_sync == 1


def test_require_gpu_fails_clearly_without_one():
    from tfhub_classifier import runtime
    if runtime.tf.config.list_physical_devices("GPU"):
        pytest.skip("this machine has a GPU")
    with pytest.raises(ValueError, match="--require-gpu"):
        runtime.check_devices(require_gpu=True)
