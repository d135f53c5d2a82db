"""Your own data: class folders, CSV, TSV and JSON Lines read into Splits with label names.

read() turns one folder or file into texts, raw labels and where each text came from, reading the file
once; build_splits() turns training, validation and test data into Splits whose labels index the
training data's sorted label names, shuffled as text_dataset_from_directory(seed=...) shuffles.
Bad data is a ValueError of one line naming the file, the line (or .txt file) and the fix.
No TensorFlow here, so importing this is instant.
"""
import decimal
import json
import os
import re

import numpy as np

from tfhub_classifier import tasks
from tfhub_classifier.data import class_folders, table_files
from tfhub_classifier.data.class_folders import TEXT_FILE_SUFFIX
from tfhub_classifier.data.split import Split, shuffled_order

RARE_CLASS_SHARE = 0.01
NAMES_SHOWN = 20  # label names listed in one log line before "... and N more"


# Reading one folder or file.

def read(path, text_column="text", label_column="label", label_separator=None, no_header=False,
         label_names=None, log=print, encoding="utf-8", delimiter="", quoting="csv"):
    """(texts, raw_labels, sources) of a folder of class subfolders of .txt files, or a .csv, .tsv or
    .jsonl file, streamed once.

    raw_labels holds a str per text, or a tuple of str where a text may have several labels (a JSON
    list, or any label once label_separator is given); labels are stripped of surrounding spaces.
    sources holds each text's .txt file, or "file:line" with the line its row starts on.
    With no_header, text_column and label_column are 0-based column numbers ("0", "1").
    label_names (the training data's) orders a folder's classes as text_dataset_from_directory's
    class_names does, and makes any other label a ValueError.
    encoding names the files' codec; a byte it can't decode is a ValueError naming the file, the line
    and the encoding that most likely reads it, except with "utf-8:replace", which reads such bytes as
    U+FFFD and counts the lines or files that had any in a warning passed to log. delimiter replaces the
    one a .csv or .tsv suffix implies; quoting "none" reads double quotes as text (GLUE-style TSVs).
    """
    if not os.path.exists(path):
        raise ValueError(f"{path} does not exist; check the path")
    if os.path.isdir(path):
        if no_header:
            raise ValueError(f"{path} is a folder of class subfolders, which has no columns: drop --no-header")
        rows = _folder_rows(path, label_names, log, encoding)
    else:
        rows = _file_rows(path, text_column, label_column, no_header, log, encoding, delimiter, quoting)
    return _collect(path, rows, label_separator, label_names)


def _collect(path, rows, label_separator, label_names):
    """Check each (source, text, label) row and gather them into three lists."""
    texts, labels, sources = [], [], []
    known = None if label_names is None else set(label_names)
    # Numeric label names (a trained model's "1", "2") take any spelling of their number ("1.0").
    spelled = _by_number(label_names) if label_names is not None and not os.path.isdir(path) else None
    one_copy = {}  # one str (or tuple) object per distinct label, not one per row, for big files
    for source, text, label in rows:
        if not text.strip():
            raise ValueError(f"{source}: the text is empty; fill it in or remove it")
        label = _parsed_label(source, label, label_separator)
        if any("\ufffd" in name for name in _as_tuple(label)):
            raise ValueError(f"{source}: the label {label!r} holds bytes that are not UTF-8, so it can't be read "
                             "as written; pass the file's --encoding (cp1252 for Excel on Windows)")
        if spelled:
            label = _respelled(label, spelled, known)
        if known is not None:
            _check_known(source, label, known, label_names)
        texts.append(text)
        labels.append(one_copy.setdefault(label, label))
        sources.append(source)
    if not texts:
        raise ValueError(f"{path} holds no texts; check that it is the right file")
    return texts, labels, sources


def _parsed_label(source, label, separator):
    """The label stripped, or a tuple of labels for a list or a separated string; ValueError if empty
    or, in a list, repeated."""
    if separator and isinstance(label, str):
        label = tuple(label.split(separator)) if label.strip() else ()  # an empty cell: no labels
    if not isinstance(label, tuple):
        label = label.strip()
        if not label:
            raise ValueError(f"{source}: the label is empty; fill it in or remove the row")
        return label
    label = tuple(name.strip() for name in label)
    if "" in label:
        raise ValueError(f"{source}: an empty label in {list(label)}; remove the extra separator or fill it in")
    if len(label) >= 2 and all(name in ("true", "false") or _number(name) in (0, 1) for name in label):
        # [1, 0], [1.0, 0.0] and [true, false] too: a one-hot pair is no pair of labels
        raise ValueError(f"{source}: {list(label)} looks like a 0/1 vector; list the label names a text "
                         "has instead, e.g. [\"sports\", \"politics\"]")
    repeated = next((name for i, name in enumerate(label) if name in label[:i]), None)
    if repeated is not None:
        raise ValueError(f"{source}: the label {repeated!r} is listed twice in {list(label)}; list it once")
    return label


def _number(name):
    """The finite number a label name spells ("1", "1.0", "2e1"), exactly, else None. Codes that only
    look like numbers ("007", "1_000") are not numbers."""
    if "_" in name or re.match(r"\s*[+-]?0\d", name):
        return None
    try:
        value = decimal.Decimal(name.strip())
    except decimal.InvalidOperation:
        return None
    return value.normalize() if value.is_finite() else None


def _by_number(names):
    """{number: the first name spelling it} if every name is a number, else None."""
    numbers = [_number(name) for name in names]
    if not names or None in numbers:
        return None
    by_number = {}
    for name, number in zip(names, numbers):
        by_number.setdefault(number, name)
    return by_number


def _respelled(label, by_number, keep=()):
    """label (a name or a tuple of names) with each number spelled as by_number spells it; a name in
    keep (a trained model's own) stays as it is."""
    names = tuple(name if name in keep else by_number.get(_number(name), name) for name in _as_tuple(label))
    return names if isinstance(label, tuple) else names[0]


def _check_known(source, label, known, label_names):
    for name in _as_tuple(label):
        if name not in known:
            raise ValueError(f"{source}: the label {name!r} never appears in the training data (its labels: "
                             f"{_shown(label_names)}); correct it, or add texts with it to the training data")


# Class folders, listed as text_dataset_from_directory lists them.

def _folder_rows(path, label_names, log, encoding):
    """(.txt file, text, class name) per file, class by class, each class's files as imdb.list_reviews
    and text_dataset_from_directory list them."""
    replaced = 0
    for name in _class_folders(path, label_names):
        files = class_folders.text_files(os.path.join(path, name))
        if not files:
            raise ValueError(f"{os.path.join(path, name)}: the class folder holds no {TEXT_FILE_SUFFIX} files; "
                             "put its texts there or delete it")
        for file in files:
            text, had_bad_bytes = class_folders.read_text(file, encoding)
            replaced += had_bad_bytes
            yield file, text, name
    if replaced:
        log(f"warning: {path}: {replaced} file(s) were not valid UTF-8; their bad bytes were read as U+FFFD")


def _class_folders(path, label_names):
    """Subfolder names, sorted (hidden ones skipped) as text_dataset_from_directory finds classes;
    with label_names, those first in their order, then any others (which _check_known refuses)."""
    found = sorted(name for name in os.listdir(path)
                   if os.path.isdir(os.path.join(path, name)) and not name.startswith("."))
    if not found:
        raise ValueError(f"{path} holds no class subfolders; put each class's {TEXT_FILE_SUFFIX} files in a "
                         f"subfolder named after the class ({os.path.join(path, 'CLASS', '1.txt')}), or pass "
                         "a .csv, .tsv or .jsonl file")
    if label_names is None:
        return found
    return [name for name in label_names if name in found] + [name for name in found if name not in label_names]


# CSV, TSV and JSON Lines files.

def _file_rows(path, text_column, label_column, no_header, log, encoding, delimiter, quoting):
    """(file:line, text, label) per record of a CSV, TSV or JSON Lines file."""
    columns, records = table_files.file_records(path, no_header, log, encoding, delimiter, quoting)
    if table_files.is_jsonl(path):
        return _jsonl_rows(records, text_column, label_column)
    if columns is None:  # an empty file: _collect says it holds no texts
        return iter(())
    text_index = table_files.column_index(path, columns, text_column, "--text-column")
    label_index = table_files.column_index(path, columns, label_column, "--label-column")
    return ((source, fields[text_index], fields[label_index]) for source, fields in records)


def _jsonl_rows(records, text_key, label_key):
    """(file:line, text, label) per JSON object of a JSON Lines file."""
    for source, record in records:
        missing = [key for key in (text_key, label_key) if key not in record]
        if missing:
            flag = "--text-column" if missing[0] == text_key else "--label-column"
            raise ValueError(f"{source}: no {missing[0]!r} field (fields found: "
                             f"{', '.join(map(repr, record)) or 'none'}); name the right one with {flag}")
        text = record[text_key]
        if text is not None and not isinstance(text, str):
            raise ValueError(f"{source}: the text must be a JSON string, not {json.dumps(text)[:40]}")
        yield source, text or "", _json_label(source, record[label_key])


def _json_label(source, value):
    """A str for a string, number or null (as ""), a tuple of them for a list."""
    if isinstance(value, list):
        return tuple(_json_scalar(source, item) for item in value)
    return _json_scalar(source, value)


def _json_scalar(source, value):
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, (bool, int, float)):
        return json.dumps(value)  # as the file spells it: 1, 2.5, true
    raise ValueError(f"{source}: a label must be a string, a number or a list of them, "
                     f"not {json.dumps(value)[:40]}")


# Splits.

def reading_options(cfg):
    """How a Config says the user's files are read, as build_splits and load_split take it."""
    return dict(text_column=cfg.text_column, label_column=cfg.label_column,
                label_separator=cfg.label_separator or None, no_header=cfg.no_header, encoding=cfg.encoding,
                delimiter=cfg.delimiter, quoting=cfg.quoting)


def build_splits(train_path, test_path, validation_path=None, validation_split=0.2, seed=42, task="auto",
                 text_column="text", label_column="label", label_separator=None, no_header=False, log=print,
                 encoding="utf-8", delimiter="", quoting="csv", stratify=False):
    """(train, validation, test) Splits whose labels index the training data's sorted label names.

    Without validation_path, validation is the last int(validation_split * n) texts of the training
    data after shuffling it as imdb.list_reviews and text_dataset_from_directory(seed=seed) do; every
    split is shuffled so with the seed; stratify cuts it so each label keeps its share. task "auto" is
    multilabel if any text has a list of labels, else binary for exactly 2 labels, else multiclass. Logs
    the task and each split's class counts, and warns of texts in both training and test data, of classes
    under 1% of the training data, and of labels no training text has.
    """
    if task not in ("auto",) + tasks.KINDS:
        raise ValueError(f"unknown --task {task!r}; use auto, {', '.join(tasks.KINDS)}")
    options = dict(text_column=text_column, label_column=label_column, label_separator=label_separator,
                   no_header=no_header, log=log, encoding=encoding, delimiter=delimiter, quoting=quoting)
    texts, raw_labels, sources = read(train_path, **options)
    numeric = not os.path.isdir(train_path)  # class folders keep text_dataset_from_directory's names and order
    if numeric:
        raw_labels = _numbers_as_numbers(raw_labels, train_path, log)
    label_names = _label_names(raw_labels, numeric)
    chosen = decide_task(task, raw_labels, label_names)
    _check_training_labels(train_path, chosen, label_names)
    if numeric and task == "auto" and chosen != "multilabel" and 2 < len(texts) == len(label_names):
        raise ValueError(f"{train_path}: each of the {len(texts)} texts has a label of its own in the column "
                         f"{label_column!r}, as an ID column has; name the label column with --label-column, or "
                         "pass --task multiclass if every text really is a class of its own")
    log(_task_line(chosen, task, label_names, train_path))
    training = _to_split(texts, raw_labels, sources, label_names, chosen, seed)
    del texts, raw_labels, sources  # the unshuffled order's lists, 8 bytes a text each, are not needed again
    if validation_path is None:
        train, validation = training.held_out(validation_split, train_path, stratify_seed=seed if stratify else None)
    else:
        train, validation = training, load_split(validation_path, label_names, chosen, seed, **options)
    test = load_split(test_path, label_names, chosen, seed, **options)
    for role, split in (("train", train), ("validation", validation), ("test", test)):
        log(_counts_line(role, split))
    _warn_rare_classes(training, train_path, log)
    _warn_labels_on_every_text(training, train_path, log)
    _warn_labels_on_no_text(train, train_path, log, cut=validation_path is None)
    _warn_shared_texts(training, test, train_path, test_path, log)
    return train, validation, test


def load_split(path, label_names, task, seed=None, text_column="text", label_column="label",
               label_separator=None, no_header=False, log=print, encoding="utf-8", delimiter="", quoting="csv"):
    """A Split of labelled data against known label names (a trained model's): ValueError naming the
    row of any other label. Shuffled as text_dataset_from_directory(seed=seed) would; None keeps the order."""
    texts, raw_labels, sources = read(path, text_column, label_column, label_separator, no_header,
                                      label_names, log, encoding, delimiter, quoting)
    return _to_split(texts, raw_labels, sources, tuple(label_names), task, seed)


def decide_task(task, raw_labels, label_names):
    """The task itself, or for "auto": multilabel if any text has a tuple of labels, else binary for
    exactly two label names, else multiclass."""
    if task != "auto":
        return task
    if any(isinstance(label, tuple) for label in set(raw_labels)):
        return "multilabel"
    return "binary" if len(label_names) == 2 else "multiclass"


def _numbers_as_numbers(raw_labels, path, log):
    """If every label is a number, each spelled as its first spelling in the file ("1" and "1.0" one
    label, logged), so that they compare and sort as numbers; other labels as they are."""
    first_seen = list(dict.fromkeys(name for label in raw_labels for name in _as_tuple(label)))
    by_number = _by_number(first_seen)
    if by_number is None:
        return raw_labels
    merged = [f"{name} as {by_number[_number(name)]}" for name in first_seen if by_number[_number(name)] != name]
    if merged:
        log(f"{path}: the labels are numbers, compared as numbers: read {_shown(merged)}")
    one_copy = {}
    return [one_copy.setdefault(label, _respelled(label, by_number)) for label in raw_labels]


def _label_names(raw_labels, numeric=True):
    """The distinct label names, sorted: as numbers if numeric and all are numbers (2 before 10), else
    as text."""
    names = {name for label in set(raw_labels) for name in _as_tuple(label)}
    return tuple(sorted(names, key=_number) if numeric and _by_number(list(names)) else sorted(names))


def _check_training_labels(path, task, label_names):
    if len(label_names) < 2:
        only = f"only the label {label_names[0]!r}" if label_names else "no labels"
        raise ValueError(f"{path}: the training data has {only}; a classifier needs texts of at least two "
                         "classes: add texts of another class")
    if task == "binary" and len(label_names) != 2:
        raise ValueError(f"{path}: --task binary needs exactly 2 labels, but the training data has "
                         f"{len(label_names)} ({_shown(label_names)}); use --task multiclass or auto")


def _to_split(texts, raw_labels, sources, label_names, task, seed):
    labels = _label_array(raw_labels, sources, label_names, task)
    split = Split(texts, labels, sources, label_names, task)
    return split if seed is None else split.rows(shuffled_order(len(split), seed))


def _label_array(raw_labels, sources, label_names, task):
    index = {name: i for i, name in enumerate(label_names)}
    if task == "multilabel":
        matrix = np.zeros((len(raw_labels), len(label_names)), dtype=np.float32)
        for row, label in enumerate(raw_labels):
            matrix[row, [index[name] for name in _as_tuple(label)]] = 1
        return matrix
    return np.fromiter((index[_single_label(source, label, task)] for source, label in zip(sources, raw_labels)),
                       dtype=np.int32, count=len(raw_labels))


def _single_label(source, label, task):
    if not isinstance(label, tuple):
        return label
    if len(label) != 1:
        raise ValueError(f"{source}: {len(label)} labels ({', '.join(label) or 'none'}), but --task {task} takes "
                         "exactly one per text; use --task multilabel (or auto)")
    return label[0]


# What is logged.

def _task_line(task, requested, label_names, train_path):
    how = "decided from the data" if requested == "auto" else "as asked"
    kind = {"binary": "one of two labels per text", "multiclass": "one label per text",
            "multilabel": "any number of labels per text"}[task]
    return (f"task: {task} ({how}: {kind}); {len(label_names)} labels from {train_path}, in index order: "
            f"{_shown(label_names)}")


def class_counts(split):
    """Texts per label name: for multilabel, the texts that have each label."""
    if split.task == "multilabel":
        return split.labels.sum(axis=0).astype(np.int64)
    return np.bincount(split.labels, minlength=len(split.label_names))


def _counts_line(role, split):
    counts = class_counts(split)
    listed = _shown([f"{name} {count}" for name, count in zip(split.label_names, counts)])
    if split.task != "multilabel":
        return f"{role}: {len(split)} texts: {listed}"
    unlabelled = int((split.labels.sum(axis=1) == 0).sum())
    return f"{role}: {len(split)} texts, {unlabelled} without any label; texts per label: {listed}"


def _warn_rare_classes(split, train_path, log):
    counts = class_counts(split)
    rare = [f"{name} ({count} of {len(split)}, {count / len(split):.1%})"
            for name, count in zip(split.label_names, counts) if count < RARE_CLASS_SHARE * len(split)]
    if rare:
        log(f"warning: {train_path}: under {RARE_CLASS_SHARE:.0%} of the training texts have the label "
            f"{_shown(rare)}; the model may seldom predict it: add texts with it, or weight the classes")


def _warn_labels_on_every_text(split, train_path, log):
    if split.task != "multilabel":
        return
    everywhere = [name for name, count in zip(split.label_names, class_counts(split)) if count == len(split)]
    if everywhere:
        log(f"warning: {train_path}: every training text has the label {_shown(everywhere)}, so the model learns "
            "nothing about it; check --label-column and --label-separator, or drop that label")


def _warn_labels_on_no_text(train, train_path, log, cut):
    nowhere = [name for name, count in zip(train.label_names, class_counts(train)) if count == 0]
    if nowhere:
        where = "after the validation cut, " if cut else ""
        fix = "add texts with it, or pass --stratify" if cut else "add texts with it"
        log(f"warning: {train_path}: {where}no training text has the label {_shown(nowhere)}, so the model "
            f"can't learn it; {fix}")


def _warn_shared_texts(training, test, train_path, test_path, log):
    seen = set(training.texts)
    shared = sum(text in seen for text in test.texts)
    if shared:
        log(f"warning: {shared} of the {len(test)} texts in {test_path} also appear in {train_path}; test "
            "scores on them overstate how the model does on new texts: remove them from one of the two")


def _shown(names):
    names = list(names)
    more = len(names) - NAMES_SHOWN
    return ", ".join(names[:NAMES_SHOWN]) + (f", ... and {more} more" if more > 0 else "")


def _as_tuple(label):
    return label if isinstance(label, tuple) else (label,)
