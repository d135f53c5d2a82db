"""Text -> BERT token ids: truncation of long texts, and length-sorted, per-batch-padded batches.

Training (`length_sorted_batches`, in tf.data) and scoring (`sorted_batches`, in NumPy) batch
token ids the same way: sorted by length within windows, each batch padded to its longest text.
"""
import numpy as np

from tfhub_classifier.runtime import keras, tf

TOKEN_KEYS = ("input_word_ids", "input_mask", "input_type_ids")
PAD_MULTIPLE = 16  # batches are padded to a multiple of this, which bounds how often graphs retrace
WINDOW_BATCHES = 16  # texts are sorted by length within this many batches, then padded per batch
TOKENIZE_BATCH = 256  # texts per tokenizer call: enough to amortize the call, few enough to run calls in parallel
HEAD_SHARE = 128 / 510  # Sun et al. (2019): the first 128 and last 382 of 510 review tokens


def kept_ranges(lengths, seq_length, truncation, ops=np):
    """Start/limit ranges of the word pieces a text of each length keeps in seq_length tokens ([CLS]
    and [SEP] take two): its head, its tail, or both. ops: np, or tf inside the tokenizer's graph."""
    budget = seq_length - 2
    if truncation == "head":
        return [(ops.zeros_like(lengths), ops.minimum(lengths, budget))]
    if truncation == "tail":
        return [(ops.maximum(lengths - budget, 0), lengths)]
    head = ops.minimum(lengths, int(round(budget * HEAD_SHARE)))
    tail = ops.minimum(lengths - head, budget - head)
    return [(ops.zeros_like(lengths), head), (lengths - tail, lengths)]


class TextToTokens(tf.Module):
    """Strings -> BERT inputs of seq_length, keeping the head, tail or head+tail of long texts,
    via the preprocessor's tokenize + bert_pack_inputs (TF-Hub's way for other lengths)."""

    def __init__(self, preprocessor, seq_length, truncation):
        super().__init__()
        self.preprocessor = preprocessor
        self.seq_length = seq_length
        self.truncation = truncation

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
    def __call__(self, texts):
        tokens = self.preprocessor.tokenize(texts)
        if tokens.ragged_rank == 2:  # BERT's [batch, (words), (pieces)]; SentencePiece's (ALBERT) has no words
            tokens = tokens.merge_dims(-2, -1)  # [batch, (word pieces)]
        lengths = tokens.row_lengths()
        keep = tf.concat([tf.ragged.range(start, limit)
                          for start, limit in kept_ranges(lengths, self.seq_length, self.truncation, tf)], axis=1)
        kept = tf.gather(tokens, keep, batch_dims=1)
        # bert_pack_inputs takes [batch, (words), (pieces)]: make each kept piece a word.
        words = kept.with_flat_values(tf.RaggedTensor.from_row_lengths(
            kept.flat_values, tf.ones_like(kept.flat_values, dtype=kept.row_splits.dtype)))
        packed = self.preprocessor.bert_pack_inputs([words], tf.constant(self.seq_length, tf.int32))
        return {key: tf.cast(packed[key], tf.int32) for key in TOKEN_KEYS}


class TextToTokensLayer(keras.layers.Layer):
    """TextToTokens as a Keras layer, for the tutorial pipeline's string-input model."""

    def __init__(self, text_to_tokens, **kwargs):
        super().__init__(trainable=False, **kwargs)
        self.text_to_tokens = text_to_tokens

    def call(self, texts):
        return self.text_to_tokens(tf.reshape(texts, [-1]))


def round_up(value, multiple):
    """The smallest multiple of `multiple` that is at least value (ints or int tensors)."""
    return (value + multiple - 1) // multiple * multiple


def trim_padding(tokens, multiple=PAD_MULTIPLE):
    """Cut a padded batch to its longest text, rounded up to a multiple (never beyond its width)."""
    longest = tf.reduce_max(tf.reduce_sum(tokens["input_mask"], axis=1))
    width = tf.shape(tokens["input_mask"])[1]
    keep = tf.minimum(width, round_up(longest, multiple))
    return {key: value[:, :keep] for key, value in tokens.items()}


def length_sorted_batches(examples, batch_size, window_batches=WINDOW_BATCHES):
    """(tokens, y) examples -> batches of batch_size: within each window of window_batches
    batches, sorted by length so each batch is padded only to its longest text."""
    def sorted_window(tokens, extra):
        order = tf.argsort(tf.reduce_sum(tokens["input_mask"], axis=1), stable=True)
        window = tf.data.Dataset.from_tensor_slices(
            ({key: tf.gather(value, order) for key, value in tokens.items()}, tf.gather(extra, order)))
        return window.batch(batch_size).map(lambda t, y: (trim_padding(t), y))

    return examples.batch(batch_size * window_batches).flat_map(sorted_window)


def tokens_of(text_to_tokens, texts):
    """Token ids of a list of texts as NumPy arrays, TOKENIZE_BATCH texts a tokenizer call."""
    parts = [text_to_tokens(tf.constant(texts[start:start + TOKENIZE_BATCH]))
             for start in range(0, len(texts), TOKENIZE_BATCH)]
    return {key: np.concatenate([part[key].numpy() for part in parts]) for key in TOKEN_KEYS}


def sorted_batches(tokens, batch_size):
    """length_sorted_batches for one window of token ids held in NumPy: (rows, batch) pairs, rows
    sorted by length (stable), each batch a dict of tensors padded only to its longest text."""
    lengths = tokens["input_mask"].sum(axis=1)
    order = np.argsort(lengths, kind="stable")
    for start in range(0, len(order), batch_size):
        rows = order[start:start + batch_size]
        width = min(tokens["input_mask"].shape[1], round_up(int(lengths[rows].max()), PAD_MULTIPLE))
        yield rows, {key: tf.constant(value[rows, :width]) for key, value in tokens.items()}


def tokenized(examples, text_to_tokens):
    """(text, y) examples -> (tokens, y), tokenized in a parallel map of TOKENIZE_BATCH-text batches."""
    return (examples.batch(TOKENIZE_BATCH)
            .map(lambda texts, extra: (text_to_tokens(texts), extra), num_parallel_calls=tf.data.AUTOTUNE)
            .unbatch())


def as_text(text):
    """Bytes or str -> str, invalid UTF-8 sequences replaced."""
    return text.decode("utf-8", errors="replace") if isinstance(text, bytes) else text


def sanitize(text):
    """Bytes or str -> valid UTF-8 bytes, invalid sequences replaced, so the tokenizer never fails."""
    return as_text(text).encode("utf-8", errors="replace")
