"""What --precision bfloat16 and head+tail truncation really do, shown on the tiny models."""
import os
import random

import numpy as np
import pytest
import tiny_hub

from tfhub_classifier import hardware


@pytest.fixture
def float32_after():
    """The precision is process-global: put float32 back for the tests that follow."""
    from tfhub_classifier import runtime
    yield runtime
    runtime.set_precision("float32")


def test_bfloat16_rewrites_the_classifiers_matmuls(hub_models, float32_after):
    """--precision bfloat16 really runs the model in bfloat16: logits move by bf16 rounding, not more."""
    if not hardware.cpu_supports_bfloat16():
        pytest.skip("this CPU has no AVX512-BF16/AMX: the rewrite does not run, so the test would prove nothing")
    from tfhub_classifier.model import modeling
    runtime = float32_after
    tf = runtime.tf
    model = modeling.build_token_classifier(runtime.hub.load(hub_models[1]), 0.1, "pooled")
    ids = np.random.default_rng(0).integers(5, len(tiny_hub.VOCAB), size=(4, 64))
    tokens = {"input_word_ids": tf.constant(ids, tf.int32), "input_mask": tf.ones((4, 64), tf.int32),
              "input_type_ids": tf.zeros((4, 64), tf.int32)}

    def logits(precision):  # a fresh tf.function, so grappler sees the options in force now
        assert runtime.set_precision(precision) == precision
        return tf.function(lambda t: model(t, training=False))(tokens).numpy()

    float32, bfloat16, float32_again = logits("float32"), logits("bfloat16"), logits("float32")
    assert np.abs(float32_again - float32).max() < 1e-6  # float32 repeats itself: any change is the rewrite
    difference = np.abs(bfloat16 - float32).max()
    assert 1e-6 < difference < 5e-2, f"bfloat16 logits differ from float32 by {difference}"


@pytest.fixture(scope="module")
def preprocessor(hub_models):
    from tfhub_classifier import runtime
    return runtime.hub.load(hub_models[0])


def review_and_pieces(preprocessor, words, seed=0):
    """A review of `words` random vocabulary words (some split into 2 pieces), and its word-piece ids."""
    from tfhub_classifier import runtime
    choices = [w for w in tiny_hub.VOCAB[5:] if not w.startswith("##")] + ["movies", "films"]
    review = " ".join(random.Random(seed).choices(choices, k=words))
    pieces = preprocessor.tokenize(runtime.tf.constant([review])).merge_dims(-2, -1)[0].numpy()
    return review, pieces


def test_head_tail_keeps_the_first_128_and_last_382_pieces(preprocessor):
    """A long review at 512 tokens keeps exactly its first 128 and last 382 word pieces, in order."""
    from tfhub_classifier.data import tokenization
    review, pieces = review_and_pieces(preprocessor, 1000)
    assert len(pieces) > 1000
    ids = tokenization.TextToTokens(preprocessor, 512, "head+tail")([review])["input_word_ids"].numpy()[0]
    assert len(ids) == 512
    assert ids[0] == tiny_hub.VOCAB.index("[CLS]") and ids[511] == tiny_hub.VOCAB.index("[SEP]")
    assert list(ids[1:129]) == list(pieces[:128])
    assert list(ids[129:511]) == list(pieces[-382:])


def test_head_tail_keeps_a_short_review_whole(preprocessor):
    """A review shorter than 510 word pieces is kept whole, then padded."""
    from tfhub_classifier.data import tokenization
    review, pieces = review_and_pieces(preprocessor, 300)
    assert len(pieces) < 510
    tokens = tokenization.TextToTokens(preprocessor, 512, "head+tail")([review])
    ids, mask = tokens["input_word_ids"].numpy()[0], tokens["input_mask"].numpy()[0]
    n = len(pieces)
    assert list(ids[1:n + 1]) == list(pieces)
    assert ids[n + 1] == tiny_hub.VOCAB.index("[SEP]") and mask.sum() == n + 2 and not ids[n + 2:].any()


def test_bfloat16_lists_the_layer_norm_for_grappler_and_float32_takes_it_back_keeping_the_users(monkeypatch):
    from tfhub_classifier import runtime
    name = "TF_AUTO_MIXED_PRECISION_GRAPH_REWRITE_INFERLIST_ADD"
    monkeypatch.setenv(name, "MyOp")
    monkeypatch.setattr(runtime.tf.config.optimizer, "set_experimental_options", lambda options: None)
    monkeypatch.setattr(runtime, "_followers_added", set())
    runtime.set_precision("bfloat16")
    runtime.set_precision("bfloat16")
    assert os.environ[name] == "MyOp,_MklLayerNorm"
    runtime.set_precision("float32")
    assert os.environ[name] == "MyOp"
    monkeypatch.setenv(name, "_MklLayerNorm")  # the user's own: kept
    runtime.set_precision("bfloat16")
    runtime.set_precision("float32")
    assert os.environ[name] == "_MklLayerNorm"
