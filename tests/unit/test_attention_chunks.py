"""The fused graph's attention where the fused attention kernel doesn't take it (in bfloat16, or without a
compiler), run a chunk of the batch at a time: the same scores as the whole batch at once, in as many
chunks as the budget allows; an attention whose scores are read elsewhere is left alone."""
import numpy as np
import pytest

from tfhub_classifier.data import tokenization
from tfhub_classifier.runtime import keras, tf

WIDTH, HEADS, VOCAB = 16, 2, 50


def sharp():
    """Weights large enough that the softmax is far from even: a wrong query, key or scale then moves the logits."""
    return keras.initializers.RandomNormal(stddev=0.5)



class MatMulAttention(keras.layers.Layer):
    """Self-attention written as MiniLM's TF-Hub graph has it: BatchMatMulV2 of queries and keys, a
    division by sqrt(size), the additive mask, softmax, dropout's Identity, BatchMatMulV2 with the values."""

    def __init__(self, scores_out=False, shared_mask=False, heads=HEADS, **kwargs):
        super().__init__(**kwargs)
        self.scores_out, self.shared_mask, self.heads = scores_out, shared_mask, heads

    def build(self, shape):
        self.kernel = self.add_weight(name="qkv", shape=(WIDTH, 3 * WIDTH), initializer=sharp())

    def call(self, x, mask):
        def heads(t):  # [batch, length, width] -> [batch, heads, length, size]
            return tf.transpose(tf.reshape(t, [tf.shape(x)[0], -1, self.heads, WIDTH // self.heads]), [0, 2, 1, 3])
        q, k, v = (heads(t) for t in tf.split(tf.einsum("blw,wk->blk", x, self.kernel), 3, axis=-1))
        scores = tf.matmul(q, k, transpose_b=True) / np.sqrt(WIDTH // self.heads).astype(np.float32)
        if self.shared_mask:  # one mask row for every text: [1, 1, 1, length], broadcast along the batch
            mask = mask[:1]
        probabilities = tf.identity(tf.nn.softmax(scores + (1.0 - mask[:, None, None, :]) * -10000.0))
        out = tf.reshape(tf.transpose(tf.matmul(probabilities, v), [0, 2, 1, 3]), tf.shape(x))
        return (out, scores) if self.scores_out else out


def token_classifier(style="einsum", layers=2, scores_out=(), shared_mask=False, heads=HEADS):
    """Embeddings, `layers` self-attentions of `heads` heads over the input mask (Keras' MultiHeadAttention,
    Einsum-style, as TF-Hub's BERTs; or MatMulAttention, the layers in scores_out also adding their scores
    to the logits), the first token's logits; as a tf.function's concrete function."""
    keras.utils.set_random_seed(0)
    ids, mask = keras.Input((None,), dtype=tf.int32), keras.Input((None,), dtype=tf.float32)
    x = keras.layers.Embedding(VOCAB, WIDTH, embeddings_initializer=keras.initializers.RandomNormal(stddev=1.0))(ids)
    extra = []
    for layer in range(layers):
        if style == "einsum":
            pairs = keras.layers.Lambda(lambda m: m[:, None, :] * m[:, :, None])(mask)
            attended = keras.layers.MultiHeadAttention(heads, WIDTH // heads, kernel_initializer=sharp())(
                x, x, attention_mask=pairs)
        else:
            attended = MatMulAttention(layer in scores_out, shared_mask, heads)(x, mask)
            if layer in scores_out:
                attended, scores = attended
                extra.append(tf.reduce_sum(scores, axis=[1, 2, 3])[:, None])
        x = x + attended
    logits = keras.layers.Dense(2)(x[:, 0])
    model = keras.Model([ids, mask], logits + sum(extra) if extra else logits)

    @tf.function(input_signature=[{key: tf.TensorSpec([None, None], tf.int32) for key in tokenization.TOKEN_KEYS}])
    def classify_tokens(tokens):
        return model([tokens["input_word_ids"], tf.cast(tokens["input_mask"], tf.float32)])

    return classify_tokens.get_concrete_function()


def batch(rows, width, seed=1):
    """Token ids with the last texts padded (as length-sorted batches are), input_mask marking the padding."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, VOCAB, size=(rows, width), dtype=np.int32)
    mask = np.ones_like(ids)
    for row in range(rows):
        mask[row, max(1, width - row):] = 0
    return {"input_word_ids": ids * mask, "input_mask": mask, "input_type_ids": np.zeros_like(ids)}


def assert_scores_as_before(function, fused, tokens, atol=1e-5):
    expected = function({key: tf.constant(value) for key, value in tokens.items()}).numpy()
    got = fused(tokens).numpy()
    assert got.shape == expected.shape == (len(tokens["input_word_ids"]), 2)
    np.testing.assert_allclose(got, expected, atol=atol)


def scores_per_text(width):
    return HEADS * width * width


@pytest.fixture
def chunks_of(monkeypatch):
    """Sets the budget so that each chunk holds `rows` texts of `width` tokens."""
    from tfhub_classifier.model import attention_chunks

    def set_rows(rows, width):
        monkeypatch.setattr(attention_chunks, "SCORES_PER_CHUNK", rows * scores_per_text(width))
    return set_rows


def softmax_runs(function, tokens):
    from token_graphs import executed_ops
    function(tokens)  # the first call optimizes the graph
    return sum(count for op, count in executed_ops(function, tokens).items() if op.endswith("Softmax"))


@pytest.mark.parametrize("style, shared_mask", [("einsum", False), ("matmul", False), ("matmul", True)])
def test_each_attention_runs_in_chunks_and_scores_as_before(style, shared_mask, chunks_of):
    from tfhub_classifier.model import fusion
    function = token_classifier(style, shared_mask=shared_mask)
    chunks_of(2, 9)
    fused = fusion.fuse(function, kernel=False)
    assert fused.attentions_in_chunks == 2
    for rows, width in ((1, 1), (5, 9), (4, 9), (7, 3), (0, 4)):  # one text, uneven chunks, more a chunk, none
        assert_scores_as_before(function, fused, batch(rows, width))


def test_a_batch_runs_in_as_many_chunks_as_the_budget_allows(chunks_of):
    from tfhub_classifier.model import fusion
    chunks_of(2, 9)
    fused = fusion.fuse(token_classifier("matmul"), kernel=False)
    assert softmax_runs(fused, batch(5, 9)) == 2 * 3  # two layers, texts 1-2, 3-4 and 5
    assert softmax_runs(fused, batch(5, 3)) == 2 * 1  # shorter texts: 9 of 3 tokens fit in a chunk
    chunks_of(1, 30)  # a budget below one text's scores: a text a chunk
    fused = fusion.fuse(token_classifier("matmul"), kernel=False)
    assert softmax_runs(fused, batch(3, 31)) == 2 * 3


def test_an_attention_whose_scores_are_read_elsewhere_is_left_alone(chunks_of):
    from tfhub_classifier.model import fusion
    function = token_classifier("matmul", scores_out=(0,))  # the first layer's scores also reach the logits
    chunks_of(1, 9)
    fused = fusion.fuse(function, kernel=False)
    assert fused.attentions_in_chunks == 1
    assert_scores_as_before(function, fused, batch(3, 9), atol=1e-4)  # the scores' sum is large: float32 rounding


def test_an_attention_whose_chunks_would_score_differently_is_left_alone(chunks_of, monkeypatch):
    """The check each chunked attention passes before it replaces the original: here the chunks are
    joined in the wrong order, which the probe's three texts, one a chunk, show."""
    from tfhub_classifier.model import attention_chunks, fusion
    joined = attention_chunks._in_chunks
    monkeypatch.setattr(attention_chunks, "_in_chunks", lambda *args: tf.reverse(joined(*args), [0]))
    function = token_classifier("matmul")
    chunks_of(1, 9)
    fused = fusion.fuse(function, kernel=False)
    assert fused.attentions_in_chunks == 0
    assert_scores_as_before(function, fused, batch(3, 9))


def test_in_bfloat16_chunks_add_no_casts(chunks_of, monkeypatch):
    """grappler's bfloat16 rewrite reaches inside the chunked function: its products and softmax run in
    bfloat16 without a cast per chunk (at most one where each attention's call hands its result back)."""
    from tensorflow.python.util import _pywrap_util_port
    from token_graphs import executed_ops

    from tfhub_classifier import hardware, runtime
    from tfhub_classifier.model import attention_chunks, fusion
    if not _pywrap_util_port.IsMklEnabled() or not hardware.cpu_supports_bfloat16():
        pytest.skip("needs oneDNN and a CPU with AVX512-BF16 or AMX: no bfloat16 rewrite here")
    tokens = batch(6, 9)
    chunks_of(1, 9)
    try:
        runtime.set_precision("bfloat16")
        chunked = fusion.fuse(token_classifier("matmul"), kernel=False)
        chunked(tokens)
        chunked_ops = executed_ops(chunked, tokens)
        monkeypatch.setattr(attention_chunks, "find", lambda graph: [])
        whole = fusion.fuse(token_classifier("matmul"), kernel=False)
        whole(tokens)
        whole_ops = executed_ops(whole, tokens)
    finally:
        runtime.set_precision("float32")
    assert chunked.attentions_in_chunks == 2
    assert sum(n for op, n in chunked_ops.items() if op.endswith("Softmax")) == 2 * 6
    assert chunked_ops["Cast"] <= whole_ops["Cast"] + chunked.attentions_in_chunks, (chunked_ops, whole_ops)
