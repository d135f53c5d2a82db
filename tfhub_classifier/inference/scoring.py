"""Scoring many texts with a classifier, streamed, batched by length, returned in input order."""
import itertools
import sys

import numpy as np
import tqdm

from tfhub_classifier.data import tokenization


def score_texts(model, texts, batch_size, window_batches=tokenization.WINDOW_BATCHES, progress=None):
    """Logits for texts, in their order, one window of batch_size * window_batches texts at a time:
    shape [texts] for a one-logit (binary) model, [texts, labels] otherwise.

    Within each window texts are tokenized, sorted by length and cut into batches each padded only
    to its longest text (rounded up to tokenization.PAD_MULTIPLE), as training batches them; each
    logit goes back to its text's place. In NumPy rather than a tf.data pipeline per window, which
    was slower (docs/benchmarks.md, benchmarks/profiling.py). `model` is a
    saving.ExportedClassifier or its reloaded SavedModel. progress: if true, a bar on stderr
    counts the texts scored (a string names the bar).
    """
    with ProgressBar(texts, progress) as bar:
        texts = iter(texts)
        while True:
            window = [tokenization.sanitize(text) for text in itertools.islice(texts, batch_size * window_batches)]
            if not window:
                return
            logits = None
            for rows, tokens in tokenization.sorted_batches(tokenization.tokens_of(model.preprocess, window),
                                                             batch_size):
                batch_logits = _squeezed(model.classify_tokens(tokens).numpy())
                if logits is None:
                    logits = np.empty((len(window),) + batch_logits.shape[1:], dtype=np.float32)
                logits[rows] = batch_logits
                bar.update(len(rows))
            yield logits


def _squeezed(logits):
    """[n, 1] -> [n]: a binary model's one logit per text, as the tutorial's scores are."""
    return logits.reshape(len(logits), -1)[:, 0] if logits.shape[-1] == 1 else logits


class ProgressBar:
    """A tqdm bar on stderr (stdout may carry results) counting texts scored, if progress is true (a
    string names it). It appears with the first scored batch, so an error found before any scoring
    (a binary file, no memory for one batch) is still the only line on stderr."""

    def __init__(self, texts, progress):
        self.progress, self.bar = progress, None
        self.description = progress if isinstance(progress, str) else "Scoring"
        self.total = len(texts) if hasattr(texts, "__len__") else None

    def update(self, count):
        if self.progress and self.bar is None:
            self.bar = tqdm.tqdm(total=self.total, desc=self.description, unit=" texts", file=sys.stderr,
                                 mininterval=0.5)
        if self.bar is not None:
            self.bar.update(count)

    def __enter__(self):
        return self

    def __exit__(self, *error):
        if self.bar is not None:
            self.bar.close()


def logits_of(model, texts, batch_size, progress=False):
    """All logits of score_texts as one array."""
    parts = list(score_texts(model, texts, batch_size, progress=progress))
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)
