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

    def with_positive_label(self, name):
        """This binary Split with name as its second label (the one a binary model scores), the labels
        flipped if it was the first; ValueError if the data is not binary or has no such label."""
        if self.task != "binary":
            raise ValueError(f"--positive-label is for binary tasks; this data is {self.task} "
                             f"({len(self.label_names)} labels): drop it")
        if name not in self.label_names:
            raise ValueError(f"--positive-label {name!r} is not one of the data's labels "
                             f"({', '.join(self.label_names)}); name one of them")
        if name == self.label_names[1]:
            return self
        return dataclasses.replace(self, labels=(1 - self.labels).astype(self.labels.dtype),
                                   label_names=self.label_names[::-1])

    def held_out(self, validation_split, source, alternative=", or pass --validation-data", stratify_seed=None):
        """(train, validation): validation is the last int(validation_split * n) rows, as the tutorial's
        text_dataset_from_directory(validation_split=..., subset=...) cuts; ValueError naming source (and
        the alternative fix) if either part would be empty. With stratify_seed (--stratify), the same
        number of rows, drawn so each label keeps its share (scikit-learn's train_test_split), rows in
        their order."""
        count = int(validation_split * len(self))
        if not 0 < validation_split < 1 or count == 0 or count == len(self):
            raise ValueError(f"--validation-split {validation_split} of the {len(self)} texts in {source} "
                             "leaves none for validation or none for training; pick a share between 0 and 1 "
                             f"that leaves some for each{alternative}")
        if stratify_seed is None:
            return self.rows(slice(None, -count)), self.rows(slice(-count, None))
        return self._stratified(count, source, stratify_seed)

    def _stratified(self, count, source, seed):
        from sklearn.model_selection import train_test_split
        if self.task == "multilabel":
            raise ValueError("--stratify keeps each label's share of single-label data; a multi-label data set "
                             "has no one label per text to stratify on: drop --stratify or pass --validation-data")
        counts = np.bincount(self.labels.astype(np.int64), minlength=len(self.label_names))
        if counts[counts > 0].min() < 2:
            lonely = [name for name, n in zip(self.label_names, counts) if n == 1]
            raise ValueError(f"--stratify needs at least 2 texts of each label in {source}, and "
                             f"{', '.join(lonely[:5])} has 1; add texts with it or drop --stratify")
        try:
            train, validation = train_test_split(np.arange(len(self)), test_size=count, random_state=seed,
                                                 stratify=self.labels)
        except ValueError as error:  # fewer validation rows than labels
            raise ValueError(f"--stratify can't keep every label's share in {source}: {error}; raise "
                             "--validation-split or drop --stratify") from None
        return self.rows(np.sort(train)), self.rows(np.sort(validation))


def shuffled_order(count, seed):
    """The permutation text_dataset_from_directory(seed=seed) applies to count files
    (np.random.RandomState(seed).shuffle), so splits match the tutorial's."""
    order = np.arange(count)
    np.random.RandomState(seed).shuffle(order)
    return order
