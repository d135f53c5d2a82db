"""A tiny BERT-shaped token classifier for the graph rewrites' tests (model/fusion.py, model/quantization.py),
the token batches they score, and which ops TensorFlow's executor ran."""
import collections

import numpy as np

from tfhub_classifier.data import tokenization
from tfhub_classifier.runtime import keras, tf

WIDTH, HIDDEN, VOCAB = 32, 64, 50
BERT_EPSILON = 1e-12  # BERT's layer normalization epsilon (below tf-keras's fused-batch-norm threshold)


def token_classifier(activation="gelu", first_norm=None):
    """A BERT-shaped token classifier: embeddings, a normalization, a GELU dense block with a residual and
    layer normalization, then the first token's logit; returned as its tf.function's concrete function."""
    keras.utils.set_random_seed(0)
    ids = keras.Input((None,), dtype=tf.int32)
    x = keras.layers.Embedding(VOCAB, WIDTH)(ids)
    x = (first_norm or keras.layers.LayerNormalization(epsilon=BERT_EPSILON))(x)
    # Attention's projections as Keras writes them: to [batch, length, heads, size] and back.
    heads = keras.layers.EinsumDense("abc,cde->abde", (None, 2, WIDTH // 2), bias_axes="de",
                                     bias_initializer="random_normal")(x)
    x = x + keras.layers.EinsumDense("abcd,cde->abe", (None, WIDTH), bias_axes="e",  # reads the one before
                                     bias_initializer="random_normal")(heads)
    x = x + keras.layers.EinsumDense("abc,cd->abd", (None, WIDTH), bias_axes="d", activation=activation,
                                     bias_initializer="random_normal")(x)
    hidden = keras.layers.Dense(HIDDEN, activation=activation, bias_initializer="random_normal")(x)
    x = keras.layers.LayerNormalization(epsilon=BERT_EPSILON, gamma_initializer="random_normal",
                                        beta_initializer="random_normal")(
        x + keras.layers.Dense(WIDTH, bias_initializer="random_normal")(hidden))
    model = keras.Model(ids, keras.layers.Dense(2)(x[:, 0]))

    @tf.function(input_signature=[{key: tf.TensorSpec([None, None], tf.int32) for key in tokenization.TOKEN_KEYS}])
    def classify_tokens(tokens):
        return model(tokens["input_word_ids"]) * tf.cast(tokens["input_mask"][:, :1], tf.float32)

    return classify_tokens.get_concrete_function()


def batches():
    rng = np.random.default_rng(1)
    for rows, width in ((1, 1), (3, 7), (8, 48), (2, 128)):
        ids = rng.integers(1, VOCAB, size=(rows, width), dtype=np.int32)
        yield {"input_word_ids": ids, "input_mask": np.ones_like(ids), "input_type_ids": np.zeros_like(ids)}


def executed_ops(function, tokens):
    """How often TensorFlow's executor ran each op type in one call (oneDNN's kernels by their registered names)."""
    import glob
    import tempfile

    from tensorflow.tsl.profiler.protobuf import xplane_pb2
    with tempfile.TemporaryDirectory() as logdir:
        tf.profiler.experimental.start(logdir)
        try:
            function(tokens)
        finally:
            tf.profiler.experimental.stop()
        space = xplane_pb2.XSpace()
        with open(glob.glob(f"{logdir}/**/*.xplane.pb", recursive=True)[0], "rb") as trace:
            space.ParseFromString(trace.read())
    return collections.Counter(plane.event_metadata[event.metadata_id].name.rpartition(":")[2]
                               for plane in space.planes for line in plane.lines for event in line.events)
