"""Tiny stand-ins for TF-Hub's BERT preprocessor and encoder, and a tiny aclImdb archive.

They follow the TF-Hub interfaces exactly (bert_en_uncased_preprocess: __call__, tokenize,
bert_pack_inputs; BERT encoders: pooled_output, sequence_output, encoder_outputs, default),
so the suite loads them by path as it loads the real handles, offline and in seconds.
"""
import io
import os
import random
import tarfile

from tfhub_classifier import runtime  # noqa: F401  (tf-keras and tensorflow_text first)

# isort: split
import tensorflow as tf
import tensorflow_text as text

keras = tf.keras

POSITIVE_WORDS = ["great", "wonderful", "excellent", "loved", "best", "brilliant"]
NEGATIVE_WORDS = ["terrible", "awful", "boring", "worst", "hated", "dull"]
FILLER_WORDS = ["the", "movie", "was", "a", "film", "this", "it", "and", "plot", "acting", "story",
                "very", "really", "is", "of", "i", "saw", "with", "my", "friends", "."]
VOCAB = (["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + POSITIVE_WORDS + NEGATIVE_WORDS + FILLER_WORDS
         + ["!", ",", "##s", "##ly"])
MAX_POSITIONS = 512  # like BERT, so --seq-length beyond it can be refused
WIDTH = 32


class TinyPreprocessor(tf.Module):
    """lower_case and tokenizer_options (e.g. normalization_form) go to TF Text's BertTokenizer:
    the uncased default is bert_en_uncased_preprocess's; lower_case=False is a cased preprocessor's."""

    def __init__(self, vocab_file, seq_length=128, lower_case=True, **tokenizer_options):
        super().__init__()
        self.vocab_file = tf.saved_model.Asset(vocab_file)
        table = tf.lookup.StaticVocabularyTable(
            tf.lookup.TextFileInitializer(vocab_file, tf.string, tf.lookup.TextFileIndex.WHOLE_LINE,
                                          tf.int64, tf.lookup.TextFileIndex.LINE_NUMBER), num_oov_buckets=1)
        self.tokenizer = text.BertTokenizer(table, lower_case=lower_case, token_out_type=tf.int32,
                                            **tokenizer_options)
        self.seq_length = seq_length

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
    def tokenize(self, sentences):
        return self.tokenizer.tokenize(sentences)

    def _pack(self, segments, seq_length):
        flat = [s.merge_dims(-2, -1) for s in segments]
        trimmed = text.RoundRobinTrimmer(seq_length - 1 - len(flat)).trim(flat)
        ids, types = text.combine_segments(trimmed, VOCAB.index("[CLS]"), VOCAB.index("[SEP]"))
        word_ids, mask = text.pad_model_inputs(ids, seq_length)
        type_ids, _ = text.pad_model_inputs(types, seq_length)
        return {"input_word_ids": tf.cast(word_ids, tf.int32), "input_mask": tf.cast(mask, tf.int32),
                "input_type_ids": tf.cast(type_ids, tf.int32)}

    @tf.function(input_signature=[[tf.RaggedTensorSpec([None, None, None], tf.int32, ragged_rank=2)],
                                  tf.TensorSpec([], tf.int32)])
    def bert_pack_inputs(self, segments, seq_length):
        return self._pack(segments, seq_length)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
    def __call__(self, sentences):
        return self._pack([self.tokenizer.tokenize(sentences)], self.seq_length)


def save_preprocessor(directory, lower_case=True, **tokenizer_options):
    """Write another tiny preprocessor (same vocabulary, so it suits the tiny encoder) to directory,
    e.g. a cased one (lower_case=False); return its path."""
    os.makedirs(directory, exist_ok=True)
    vocab_file = os.path.join(directory, "vocab.txt")
    with open(vocab_file, "w") as f:
        f.write("\n".join(VOCAB) + "\n")
    preprocess = os.path.join(directory, "preprocess")
    tf.saved_model.save(TinyPreprocessor(vocab_file, lower_case=lower_case, **tokenizer_options), preprocess)
    return preprocess


class TinySentencePiecePreprocessor(tf.Module):
    """ALBERT's kind of preprocessor: a SentencePiece model (trained here on the tiny vocabulary's words,
    ids below the tiny encoder's vocabulary size), tokenize giving [batch, (pieces)] with no word
    dimension, and bert_pack_inputs taking segments of ragged rank 1 or 2, as TF Model Garden's
    export_tfhub_lib saves it."""

    def __init__(self, seq_length=128):
        super().__init__()
        import sentencepiece
        model = io.BytesIO()
        rng = random.Random(0)
        words = POSITIVE_WORDS + NEGATIVE_WORDS + FILLER_WORDS
        sentencepiece.SentencePieceTrainer.train(
            sentence_iterator=iter([" ".join(rng.choice(words) for _ in range(8)) for _ in range(500)]),
            model_writer=model, vocab_size=len(VOCAB) - 2, model_type="unigram", pad_id=0, unk_id=1, bos_id=-1,
            eos_id=-1, user_defined_symbols=["[CLS]", "[SEP]"], hard_vocab_limit=False, minloglevel=2)
        self.tokenizer = text.SentencepieceTokenizer(model=model.getvalue(), out_type=tf.int32)
        self.seq_length = seq_length
        self.bert_pack_inputs = tf.function(self._pack)
        for ragged_rank in (1, 2):
            self.bert_pack_inputs.get_concrete_function([tf.RaggedTensorSpec([None] * (ragged_rank + 1), tf.int32)],
                                            tf.TensorSpec([], tf.int32))

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
    def tokenize(self, sentences):
        return self.tokenizer.tokenize(sentences)

    def _pack(self, segments, seq_length):
        flat = [s.merge_dims(-2, -1) if s.ragged_rank == 2 else s for s in segments]
        trimmed = text.RoundRobinTrimmer(seq_length - 1 - len(flat)).trim(flat)
        ids, types = text.combine_segments(trimmed, 2, 3)  # [CLS], [SEP]: the first user-defined pieces
        word_ids, mask = text.pad_model_inputs(ids, seq_length)
        type_ids, _ = text.pad_model_inputs(types, seq_length)
        return {"input_word_ids": tf.cast(word_ids, tf.int32), "input_mask": tf.cast(mask, tf.int32),
                "input_type_ids": tf.cast(type_ids, tf.int32)}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
    def __call__(self, sentences):
        return self._pack([self.tokenizer.tokenize(sentences)], self.seq_length)


def save_sentencepiece_preprocessor(directory):
    """Write a tiny ALBERT-style (SentencePiece) preprocessor to directory/preprocess; return its path."""
    preprocess = os.path.join(directory, "preprocess")
    tf.saved_model.save(TinySentencePiecePreprocessor(), preprocess)
    return preprocess


def build_encoder(layers=2, width=WIDTH, heads=2, seed=0, layer_norm_epsilon=1e-3):
    """A 2-layer, 32-wide BERT-style encoder with TF-Hub's inputs and outputs. (Keras's default epsilon
    makes tf-keras normalize with FusedBatchNormV3; BERT's 1e-12 makes it use tf.nn.moments.)"""
    keras.utils.set_random_seed(seed)
    inputs = {name: keras.Input((None,), dtype=tf.int32, name=name)
              for name in ("input_word_ids", "input_mask", "input_type_ids")}
    positions = keras.layers.Lambda(lambda ids: tf.range(tf.shape(ids)[1])[None, :])(inputs["input_word_ids"])
    x = keras.layers.Add()([
        keras.layers.Embedding(len(VOCAB) + 1, width, name="word_embeddings")(inputs["input_word_ids"]),
        keras.layers.Embedding(2, width, name="type_embeddings")(inputs["input_type_ids"]),
        keras.layers.Embedding(MAX_POSITIONS, width, name="position_embedding")(positions)])
    x = keras.layers.LayerNormalization(epsilon=layer_norm_epsilon, name="embeddings/layer_norm")(x)
    attention_mask = keras.layers.Lambda(
        lambda m: tf.cast(m[:, None, :] * m[:, :, None], tf.bool))(inputs["input_mask"])
    outputs = []
    for i in range(layers):
        attended = keras.layers.MultiHeadAttention(heads, width // heads, name=f"layer_{i}/attention")(
            x, x, attention_mask=attention_mask)
        x = keras.layers.LayerNormalization(epsilon=layer_norm_epsilon, name=f"layer_{i}/attention_layer_norm")(
            x + attended)
        hidden = keras.layers.Dense(2 * width, activation="gelu", name=f"layer_{i}/intermediate")(x)
        x = keras.layers.LayerNormalization(epsilon=layer_norm_epsilon, name=f"layer_{i}/output_layer_norm")(
            x + keras.layers.Dense(width, name=f"layer_{i}/output")(hidden))
        outputs.append(x)
    first = keras.layers.Lambda(lambda t: t[:, 0, :])(x)
    pooled = keras.layers.Dense(width, activation="tanh", name="pooler_transform")(first)
    return keras.Model(inputs, {"pooled_output": pooled, "sequence_output": x, "encoder_outputs": outputs,
                                "default": pooled})


def save_hub_models(directory):
    """Write directory/preprocess and directory/encoder; return their paths."""
    os.makedirs(directory, exist_ok=True)
    vocab_file = os.path.join(directory, "vocab.txt")
    with open(vocab_file, "w") as f:
        f.write("\n".join(VOCAB) + "\n")
    preprocess = os.path.join(directory, "preprocess")
    encoder = os.path.join(directory, "encoder")
    tf.saved_model.save(TinyPreprocessor(vocab_file), preprocess)
    build_encoder().save(encoder, include_optimizer=False, save_format="tf")
    return preprocess, encoder


def save_encoder(directory, **options):
    """Write a tiny encoder built with build_encoder's options to directory; return its path."""
    build_encoder(**options).save(directory, include_optimizer=False, save_format="tf")
    return directory


def review(label, rng, long=False):
    """A review whose sentiment words give its label; long ones put them only at the end."""
    cue = POSITIVE_WORDS if label == "pos" else NEGATIVE_WORDS
    filler = [rng.choice(FILLER_WORDS) for _ in range(rng.randint(150, 250) if long else rng.randint(3, 12))]
    cues = [rng.choice(cue) for _ in range(rng.randint(1, 3))]
    if long:
        return " ".join(filler + cues) + " !"
    words = filler + cues
    rng.shuffle(words)
    return " ".join(words) + rng.choice([" .", " !", ""])


def write_archive(path, per_class=(48, 24), unsup=5, seed=0, long_share=0.0, extra=None):
    """A tiny aclImdb_v1.tar.gz: train/test x neg/pos reviews, train/unsup, like the real one.
    `extra` maps archive paths to bytes to add (e.g. a review that is not valid UTF-8)."""
    rng = random.Random(seed)
    files = {"aclImdb/README": b"tiny IMDB stand-in\n", "aclImdb/imdb.vocab": b"great\n"}
    for split, count in zip(("train", "test"), per_class):
        for label in ("neg", "pos"):
            for i in range(count):
                body = review(label, rng, long=rng.random() < long_share)
                files[f"aclImdb/{split}/{label}/{i}_{rng.randint(1, 10)}.txt"] = body.encode()
    for i in range(unsup):
        files[f"aclImdb/train/unsup/{i}_0.txt"] = review("pos", rng).encode()
    files.update(extra or {})
    with tarfile.open(path, "w:gz") as archive:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return path
