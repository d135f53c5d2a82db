"""Why a classifier gave a label: a weight per word of a text, by integrated gradients over the word
embeddings (Sundararajan et al. 2017), with leave-one-word-out occlusion as the simple baseline.

Integrated gradients: the baseline is the text with every word piece's embedding at zero ([CLS],
[SEP], positions and segments kept); along the straight path to the text, the gradient of the
explained label's probability with respect to each position's embedding is integrated by
Gauss-Legendre quadrature, and the attribution of a position is its embedding times that integral.
Summed over a text, attributions equal the probability's change from the baseline (completeness);
each explanation reports both, so the quadrature's error is visible. The TF-Hub encoder takes token
ids, so the path is walked by scaling the rows of its embedding table in use, and each position's
gradient is read from the IndexedSlices the embedding lookup's gradient is; the rows are put back
afterwards, even on an error. Word pieces are merged back into the words of the text (whitespace
split, each punctuation mark a word, as BERT's basic tokenizer splits), each with its character
offsets; a word the truncation left out of the model's window has no weight (None).
"""
import dataclasses

import numpy as np

from tfhub_classifier.data import tokenization

# Words and their deletion as the core-ops export's client finds them, so both explain alike.
from tfhub_classifier.export.client_example import NO_WORDS, without, word_spans, words_of  # noqa: F401
from tfhub_classifier.runtime import tf

STEPS = 32  # quadrature nodes to start with: within 5% of completeness on most reviews (docs/benchmarks.md)
MAX_STEPS = 128  # doubled up to this for a text whose attributions miss completeness by more than COMPLETENESS
COMPLETENESS = 0.05  # largest |sum of attributions - (p - p_baseline)| / max(|p - p_baseline|, 0.01) accepted
BATCH_SIZE = 8  # texts explained at once: each step is a forward and a backward pass over them


@dataclasses.dataclass
class Explanation:
    """One text's words, their [start, end) character offsets and weights toward label (an index);
    probability: the label's; baseline: integrated gradients' only, the label's probability with every
    word's embedding at zero (the weights sum to probability - baseline)."""
    label: int
    words: list
    offsets: list
    weights: list
    probability: float
    baseline: float = None
    completeness_gap: float = None  # integrated gradients: how far the weights' sum is from probability - baseline
    steps: int = None  # integrated gradients: the quadrature nodes that reached it
    note: str = ""  # why no word has a weight, if none has

    def as_json(self, label_names):
        fields = {"explained_label": label_names[self.label], "words": self.words, "offsets": self.offsets,
                  "weights": [None if w is None else round(w, 6) for w in self.weights],
                  "explained_probability": round(self.probability, 6)}
        if self.baseline is not None:
            fields.update(baseline_probability=round(self.baseline, 6),
                          completeness_gap=round(self.completeness_gap, 6), steps=self.steps)
        return {**fields, "note": self.note} if self.note else fields


def label_probability(kind, logits, labels):
    """[texts] probability of each text's label (an index) from its logits, as tasks.Task scores them."""
    if kind == "binary":
        positive = tf.sigmoid(logits[:, 0])
        return tf.where(tf.constant(labels) == 1, positive, 1 - positive)
    probabilities = tf.nn.softmax(logits, axis=-1) if kind == "multiclass" else tf.sigmoid(logits)
    return tf.gather(probabilities, tf.constant(labels)[:, None], batch_dims=1)[:, 0]


def word_embeddings(model):
    """The encoder's word embedding table (a variable) inside a saved classifier."""
    variables = model.classify_tokens.concrete_functions[0].variables
    found = [variable for variable in variables if "word_embeddings" in variable.name]
    if len(found) != 1:
        raise ValueError("--explain needs a BERT-style encoder with one word embedding table "
                         f"(word_embeddings), found {len(found)} in this model; explain another model")
    return found[0]


class Explainer:
    """Explains texts with a saved classifier (saving.load's model) and its task, by method (occlusion or
    integrated-gradients). Integrated gradients change the model's embedding rows while a batch is
    explained: nothing else may score with the model meanwhile."""

    def __init__(self, model, task, seq_length, truncation, method="occlusion", steps=STEPS):
        if method == "integrated-gradients":  # it scales the saved graph's embeddings: a TFLite engine can't see that
            model = getattr(model, "saved", model)
        self.model, self.task, self.method, self.steps = model, task, method, steps
        self.embeddings = word_embeddings(model) if method == "integrated-gradients" else None
        self.preprocessor = model.text_to_tokens.preprocessor
        self.seq_length, self.truncation = seq_length, truncation
        self.text_to_tokens = tokenization.TextToTokens(self.preprocessor, seq_length, truncation)
        # BERT's tokenizer splits words itself (its tokens have a words level); SentencePiece's doesn't.
        self.words_split = self.preprocessor.tokenize(tf.constant(["a b"])).ragged_rank == 2

    @classmethod
    def of_record(cls, model, record, task, method):
        """An Explainer for the texts as the saved model reads them (its window and truncation)."""
        return cls(model, task, record["config"]["seq_length"], record["config"]["truncation"], method)

    def explain(self, texts, labels):
        """An Explanation per text toward its label (an index), by this explainer's method."""
        return (self.integrated if self.method == "integrated-gradients" else self.occlusion)(texts, labels)

    def integrated(self, texts, labels):
        """Integrated gradients' Explanation per text toward its label (an index), BATCH_SIZE at a time."""
        if self.embeddings is None:
            self.embeddings = word_embeddings(self.model)
        explanations = []
        for start in range(0, len(texts), BATCH_SIZE):
            batch = [tokenization.as_text(text) for text in texts[start:start + BATCH_SIZE]]
            explanations += self._explain_batch(batch, list(labels[start:start + BATCH_SIZE]))
        return explanations

    def occlusion(self, texts, labels):
        """The simple baseline: each word's weight is how much the label's probability falls when that
        word alone is deleted from the text (one model call per word, batched)."""
        explanations = []
        for text, label in zip(map(tokenization.as_text, texts), labels):
            words, spans, in_window, note = self._words(text, np.zeros(self.seq_length),
                                                        int(self.piece_counts([text])[0]))
            variants = [text] + [without(text, [span]) for span, seen in zip(spans, in_window) if seen is not None]
            probabilities = self.probabilities(variants, [label] * len(variants))
            drops = iter(probabilities[0] - probabilities[1:])
            weights = [None if seen is None else float(next(drops)) for seen in in_window]
            explanations.append(Explanation(label, words, spans, weights, float(probabilities[0]), note=note))
        return explanations

    def probabilities(self, texts, labels, batch_size=32):
        """Each text's label's probability in this window, scored in length-sorted batches."""
        texts, labels = [tokenization.as_text(text) for text in texts], np.asarray(labels)
        tokens = self.tokens(texts)
        result = np.empty(len(texts), dtype=np.float64)
        for rows, batch in tokenization.sorted_batches(tokens, batch_size):
            result[rows] = self._probabilities(batch, labels[rows].tolist())
        return result

    def tokens(self, texts):
        tokens = self.text_to_tokens(tf.constant([text.encode("utf-8", errors="replace") for text in texts]))
        return {key: value.numpy() for key, value in tokenization.trim_padding(tokens).items()}

    def _explain_batch(self, texts, labels):
        """Integrated gradients at self.steps nodes, then at twice as many (up to MAX_STEPS) for each text
        that misses completeness by more than COMPLETENESS."""
        tokens, own_counts = self.tokens(texts), self.piece_counts(texts)
        found, pending, steps = [None] * len(texts), list(range(len(texts))), self.steps
        while pending:
            rows = {key: value[pending] for key, value in tokens.items()}
            attributions, probabilities, baselines = self.integrated_gradients(rows, [labels[i] for i in pending],
                                                                               steps)
            missed = []
            for i, row, p, b in zip(pending, attributions, probabilities, baselines):
                gap = abs(float(row.sum()) - (p - b)) / max(abs(p - b), 0.01)
                found[i] = (row, float(p), float(b), gap, steps)
                if gap > COMPLETENESS and steps * 2 <= MAX_STEPS:
                    missed.append(i)
            pending, steps = missed, steps * 2
        explanations = []
        for text, label, own, (row, p, b, gap, used) in zip(texts, labels, own_counts, found):
            words, spans, weights, note = self._words(text, row, own)
            explanations.append(Explanation(label, words, spans, weights, p, b, gap, used, note))
        return explanations

    def integrated_gradients(self, tokens, labels, steps=None):
        """([texts, positions] attributions, the labels' probabilities, their baseline probabilities)."""
        ids, mask = tokens["input_word_ids"], tokens["input_mask"].astype(bool)
        lengths = mask.sum(axis=1)
        pieces = mask.copy()
        pieces[:, 0] = False  # [CLS]
        pieces[np.arange(len(ids)), lengths - 1] = False  # [SEP]
        rows = np.unique(ids[pieces])
        original = tf.gather(self.embeddings, rows)
        nodes, weights = np.polynomial.legendre.leggauss(steps or self.steps)
        integral = np.zeros(ids.shape + (self.embeddings.shape[-1],), dtype=np.float32)
        try:
            for alpha, weight in zip((nodes + 1) / 2, weights / 2):
                self._scale(rows, original, alpha)
                integral += weight * self._gradient(tokens, labels)
            self._scale(rows, original, 0.0)
            baselines = self._probabilities(tokens, labels)
        finally:
            self._scale(rows, original, 1.0)
        probabilities = self._probabilities(tokens, labels)
        embedded = tf.gather(self.embeddings, ids).numpy() * pieces[..., None]
        return (embedded * integral).sum(axis=-1), probabilities, baselines

    def _scale(self, rows, original, alpha):
        self.embeddings.scatter_nd_update(rows[:, None], original * alpha)

    def _probabilities(self, tokens, labels):
        return label_probability(self.task.kind, self._logits(tokens), labels).numpy()

    def _logits(self, tokens):
        logits = self.model.classify_tokens({key: tf.constant(value) for key, value in tokens.items()})
        return tf.reshape(logits, [len(tokens["input_word_ids"]), -1])

    def _gradient(self, tokens, labels):
        ids = tokens["input_word_ids"]
        with tf.GradientTape() as tape:
            tape.watch(self.embeddings)
            total = tf.reduce_sum(label_probability(self.task.kind, self._logits(tokens), labels))
        gradient = tape.gradient(total, self.embeddings)
        if not isinstance(gradient, tf.IndexedSlices) or not np.array_equal(gradient.indices.numpy(), ids.reshape(-1)):
            raise ValueError("this encoder's word embeddings are not looked up once per token, so --explain can't "
                             "attribute its positions; explain a BERT-style encoder")
        return gradient.values.numpy().reshape(ids.shape + (-1,))

    def _words(self, text, attributions, own_count):
        """(words, offsets, weights, note): the text's words and the sum of the attributions of their pieces
        in the model's window (None for a word with none there). If the words' pieces are not the text's,
        whitespace-separated words are tried; if not those either, no word gets a weight and note says why."""
        spans, counts = words_of(text, self.piece_counts, own_count, dict.fromkeys((self.words_split, False)))
        words = [text[start:end] for start, end in spans]
        if counts is None:
            return words, spans, [None] * len(words), NO_WORDS
        kept = np.concatenate([np.arange(start, limit) for start, limit in
                               tokenization.kept_ranges(own_count, self.seq_length, self.truncation)]).astype(int)
        position = np.full(own_count, -1)
        position[kept] = np.arange(1, len(kept) + 1)  # after [CLS]
        owner = np.repeat(np.arange(len(words)), counts)
        weights = [None] * len(words)
        for piece in kept:
            word = owner[piece]
            weights[word] = (weights[word] or 0.0) + float(attributions[position[piece]])
        return words, spans, weights, ""

    def piece_counts(self, words):
        """How many word pieces the model's tokenizer makes of each word, tokenized alone; a word's pieces
        are the same alone as in its text, which the caller checks against the text's own count."""
        if not words:
            return np.zeros(0, dtype=int)
        tokens = self.preprocessor.tokenize(tf.constant([word.encode("utf-8", errors="replace") for word in words]))
        if tokens.ragged_rank == 2:
            tokens = tokens.merge_dims(-2, -1)
        return tokens.row_lengths().numpy()
