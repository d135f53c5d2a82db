"""Labelled texts, as every stage passes them along, and the ways a split is cut.

No TensorFlow here, so importing this is instant.
"""
import dataclasses
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Split:
    """Texts and their labels. For binary and multiclass, labels is int32 [n], indexes into label_names;
    for multilabel, a float32 0/1 matrix [n, len(label_names)]. paths says where each text came from:
    a .txt file, or "file:line" for a row of a CSV, TSV or JSON Lines file."""
    texts: list[str]
    labels: np.ndarray
    paths: list[str]
    label_names: tuple[str, ...]
    task: str

    def __len__(self):
        return len(self.texts)

    def rows(self, selection):
        """The Split of the rows a slice or an index array selects, in that order."""
        if isinstance(selection, slice):
            return dataclasses.replace(self, texts=self.texts[selection], labels=self.labels[selection],
                                       paths=self.paths[selection])
        return dataclasses.replace(self, texts=[self.texts[i] for i in selection], labels=self.labels[selection],
                                   paths=[self.paths[i] for i in selection])

    def capped(self, max_examples):
        """The first max_examples rows (--max-examples); all of them for 0."""
        return self.rows(slice(None, max_examples)) if max_examples else self

    def held_out(self, validation_split, source, alternative=", or pass --validation-data"):
        """(train, validation): validation is the last int(validation_split * n) rows, as the tutorial's
        text_dataset_from_directory(validation_split=..., subset=...) cuts; ValueError naming source (and
        the alternative fix) if either part would be empty."""
        count = int(validation_split * len(self))
        if not 0 < validation_split < 1 or count == 0 or count == len(self):
            raise ValueError(f"--validation-split {validation_split} of the {len(self)} texts in {source} "
                             "leaves none for validation or none for training; pick a share between 0 and 1 "
                             f"that leaves some for each{alternative}")
        return self.rows(slice(None, -count)), self.rows(slice(-count, None))


def shuffled_order(count, seed):
    """The permutation text_dataset_from_directory(seed=seed) applies to count files
    (np.random.RandomState(seed).shuffle), so splits match the tutorial's."""
    order = np.arange(count)
    np.random.RandomState(seed).shuffle(order)
    return order
