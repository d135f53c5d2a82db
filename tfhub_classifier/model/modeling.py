"""The classifier network: BERT token ids -> encoder -> pooled vector -> logit (Keras Functional API)."""
from tfhub_classifier.data import tokenization
from tfhub_classifier.runtime import hub, keras, tf


class MaskedMean(keras.layers.Layer):
    """Mean of the token vectors under the mask: uses every token, not only [CLS]."""

    def call(self, sequence, mask):
        mask = tf.cast(mask, sequence.dtype)[:, :, None]
        return tf.reduce_sum(sequence * mask, axis=1) / tf.maximum(tf.reduce_sum(mask, axis=1), 1.0)


def build_token_classifier(encoder, dropout, pooling, units=1):
    """BERT token ids -> encoder -> pooled vector -> Dropout -> Dense(units) logits (the tutorial's
    Dense(1) for binary tasks, one logit per label otherwise)."""
    inputs = {key: keras.Input(shape=(None,), dtype=tf.int32, name=key) for key in tokenization.TOKEN_KEYS}
    outputs = hub.KerasLayer(encoder, trainable=True, name="BERT_encoder")(inputs)
    if pooling == "pooled":
        net = outputs["pooled_output"]
    else:
        net = MaskedMean(name="masked_mean")(outputs["sequence_output"], inputs["input_mask"])
    net = keras.layers.Dropout(dropout, name="dropout")(net)
    logits = keras.layers.Dense(units, name="classifier")(net)
    return keras.Model(inputs, logits, name="bert_token_classifier")


def build_text_classifier(text_to_tokens, token_classifier):
    """Raw string -> tokens -> the token classifier: the tutorial's model shape."""
    text = keras.Input(shape=(), dtype=tf.string, name="text")
    tokens = tokenization.TextToTokensLayer(text_to_tokens, name="preprocessing")(text)
    return keras.Model(text, token_classifier(tokens), name="bert_text_classifier")
