"""Reading your own data (data/user_files.py): class folders, CSV, TSV and JSON Lines; binary, multi-class
and multi-label; bad data."""
import json

import numpy as np
import pytest

from tfhub_classifier.data import class_folders, imdb, user_files


def write(folder, name, content):
    """Write content (str as UTF-8, or bytes) to folder/name, making folders; return the path as str."""
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content.encode("utf-8") if isinstance(content, str) else content)
    return str(path)


def csv_of(rows, header="text,label"):
    return header + "\n" + "".join(f"{text},{label}\n" for text, label in rows)


def error_of(call, *args, **kwargs):
    """The one-line message of the ValueError call(*args, **kwargs) raises."""
    with pytest.raises(ValueError) as info:
        call(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message, message
    return message


def by_source(split):
    """{source: label row} of a split, so shuffled splits can be checked row by row."""
    return {path: label for path, label in zip(split.paths, split.labels)}


# Files of train and test data for the task tests: 5 training texts leave 1 for validation at 0.2.
BINARY = [("a great film", "pos"), ("a dull film", "neg"), ("loved it", "pos"), ("hated it", "neg"),
          ("the best", "pos")]
THREE_CLASSES = [("goal scored", "sports"), ("vote counted", "politics"), ("new chip", "tech"),
                 ("match won", "sports"), ("bill passed", "politics"), ("fast phone", "tech")]


def test_reads_class_folders_in_text_dataset_from_directory_order(tmp_path):
    root = tmp_path / "train"
    write(root, "pos/b.txt", "good b")
    write(root, "pos/a.TXT", "good a")
    write(root, "pos/deeper/c.txt", "good c")
    write(root, "pos/notes.md", "not a text")
    write(root, "neg/z.txt", "bad z")
    write(root, ".hidden/h.txt", "a hidden folder is no class")
    texts, labels, sources = user_files.read(str(root))
    assert texts == ["bad z", "good a", "good b", "good c"]
    assert labels == ["neg", "pos", "pos", "pos"]
    assert sources == [str(root / "neg/z.txt"), str(root / "pos/a.TXT"), str(root / "pos/b.txt"),
                       str(root / "pos/deeper/c.txt")]


def test_reads_csv_columns_by_name_in_any_order(tmp_path):
    path = write(tmp_path, "data.csv", 'id,sentiment,review\n1,pos,"good, really"\n2,neg,bad\n')
    texts, labels, sources = user_files.read(path, text_column="review", label_column="sentiment")
    assert texts == ["good, really", "bad"]
    assert labels == ["pos", "neg"]
    assert sources == [f"{path}:2", f"{path}:3"]


def test_reads_tsv(tmp_path):
    path = write(tmp_path, "data.tsv", "label\ttext\npos\tgood, fine\nneg\tbad\n")
    texts, labels, _ = user_files.read(path)
    assert texts == ["good, fine", "bad"]
    assert labels == ["pos", "neg"]


def test_reads_jsonl_string_number_and_list_labels(tmp_path):
    path = write(tmp_path, "data.jsonl", '{"text": "a", "label": "pos"}\n\n{"text": "b", "label": 3}\n'
                                         '{"text": "c", "label": ["x", "y"]}\n{"text": "d", "label": []}\n')
    texts, labels, sources = user_files.read(path)
    assert texts == ["a", "b", "c", "d"]
    assert labels == ["pos", "3", ("x", "y"), ()]
    assert sources == [f"{path}:1", f"{path}:3", f"{path}:4", f"{path}:5"]


def test_reads_headerless_tsv_by_column_number(tmp_path):
    path = write(tmp_path, "sst.tsv", "1\tit is good\n0\tit is bad\n")
    texts, labels, sources = user_files.read(path, text_column="1", label_column="0", no_header=True)
    assert texts == ["it is good", "it is bad"]
    assert labels == ["1", "0"]
    assert sources == [f"{path}:1", f"{path}:2"]


def test_csv_with_bom_and_quoted_newlines(tmp_path):
    path = write(tmp_path, "excel.csv", b'\xef\xbb\xbftext,label\r\n"first line\r\nsecond line",pos\r\n'
                                        b'"said ""hi""",neg\r\n')
    texts, labels, sources = user_files.read(path)
    assert texts == ["first line\r\nsecond line", 'said "hi"']
    assert labels == ["pos", "neg"]
    assert sources == [f"{path}:2", f"{path}:4"]  # the line each row starts on


def test_identical_labels_are_one_object_not_one_per_row(tmp_path):
    path = write(tmp_path, "data.csv", csv_of(BINARY))
    _, labels, _ = user_files.read(path)
    assert labels[0] is labels[2] is labels[4]


def test_auto_binary_labels_index_the_sorted_names(tmp_path):
    logs = []
    train, validation, test = user_files.build_splits(
        write(tmp_path, "train.csv", csv_of(BINARY)), write(tmp_path, "test.csv", csv_of([("ok", "neg")])),
        log=logs.append)
    assert (train.task, train.label_names) == ("binary", ("neg", "pos"))
    assert train.labels.dtype == np.int32 and train.labels.shape == (4,)
    labels = {**by_source(train), **by_source(validation)}
    assert [labels[f"{tmp_path / 'train.csv'}:{line}"] for line in range(2, 7)] == [1, 0, 1, 0, 1]
    assert test.labels.tolist() == [0] and test.label_names == ("neg", "pos")
    assert not [line for line in logs if line.startswith("warning")], logs


def test_auto_multiclass(tmp_path):
    train, _, test = user_files.build_splits(
        write(tmp_path, "train.tsv", csv_of(THREE_CLASSES).replace(",", "\t")),
        write(tmp_path, "test.tsv", "text\tlabel\nelection\tpolitics\n"), log=[].append)
    assert (train.task, train.label_names) == ("multiclass", ("politics", "sports", "tech"))
    assert test.labels.tolist() == [0] and test.labels.dtype == np.int32


def test_auto_multilabel_from_jsonl_lists(tmp_path):
    train_path = write(tmp_path, "train.jsonl", "".join(
        f'{{"text": "text {i}", "tags": {tags}}}\n'
        for i, tags in enumerate(['["sports", "politics"]', "[]", '["tech"]', '"sports"', '["tech", "sports"]'])))
    test_path = write(tmp_path, "test.jsonl", '{"text": "t", "tags": ["politics", "tech"]}\n')
    train, validation, test = user_files.build_splits(train_path, test_path, label_column="tags", log=[].append)
    assert (train.task, train.label_names) == ("multilabel", ("politics", "sports", "tech"))
    assert train.labels.dtype == np.float32 and train.labels.shape == (4, 3)
    labels = {source: row.tolist() for source, row in {**by_source(train), **by_source(validation)}.items()}
    assert [labels[f"{train_path}:{line}"] for line in range(1, 6)] == [
        [1, 1, 0], [0, 0, 0], [0, 0, 1], [0, 1, 0], [0, 1, 1]]
    assert test.labels.tolist() == [[1, 0, 1]]


def test_multilabel_from_csv_with_label_separator(tmp_path):
    rows = [("one", "a | b"), ("two", "c"), ("three", "b|c"), ("four", "a"), ("five", "c|a")]
    train_path = write(tmp_path, "train.csv", csv_of(rows))
    train, validation, test = user_files.build_splits(
        train_path, write(tmp_path, "test.csv", csv_of([("six", "b|a")])), label_separator="|", log=[].append)
    assert (train.task, train.label_names) == ("multilabel", ("a", "b", "c"))
    labels = {source: row.tolist() for source, row in {**by_source(train), **by_source(validation)}.items()}
    assert [labels[f"{train_path}:{line}"] for line in range(2, 7)] == [
        [1, 1, 0], [0, 0, 1], [0, 1, 1], [1, 0, 0], [1, 0, 1]]
    assert test.labels.tolist() == [[1, 1, 0]]


def test_explicit_task_binary_refuses_three_labels(tmp_path):
    train_path = write(tmp_path, "train.csv", csv_of(THREE_CLASSES))
    message = error_of(user_files.build_splits, train_path, train_path, task="binary", log=[].append)
    assert train_path in message and "exactly 2 labels" in message and "--task multiclass" in message


def test_single_label_task_refuses_a_row_with_several_labels(tmp_path):
    train_path = write(tmp_path, "train.jsonl", "".join(
        f'{{"text": "{text}", "label": {label}}}\n' for text, label in
        [("a", '"x"'), ("b", '"y"'), ("c", '["x", "y"]'), ("d", '"x"'), ("e", '"y"')]))
    message = error_of(user_files.build_splits, train_path, train_path, task="multiclass", log=[].append)
    assert f"{train_path}:3:" in message and "--task multilabel" in message


def test_unknown_task_refused(tmp_path):
    message = error_of(user_files.build_splits, "train.csv", "test.csv", task="regression")
    assert "--task 'regression'" in message


def test_logs_the_task_and_each_splits_class_counts_one_line_each(tmp_path):
    logs = []
    user_files.build_splits(write(tmp_path, "train.csv", csv_of(THREE_CLASSES * 2)),
                          write(tmp_path, "test.csv", csv_of([("win", "sports"), ("poll", "politics")])),
                          validation_split=0.5,
                          log=logs.append)
    assert logs[0].startswith("task: multiclass (decided from the data") and "politics, sports, tech" in logs[0]
    assert logs[1].startswith("train: 6 texts: politics ") and logs[2].startswith("validation: 6 texts: ")
    assert logs[3] == "test: 2 texts: politics 1, sports 1, tech 0"
    assert len(logs) == 4


def aclimdb_like(root):
    """train/ and test/ with neg/ and pos/ reviews, some in a nested folder, as imdb reads them."""
    for split, count in (("train", 13), ("test", 5)):
        for label in imdb.CLASS_NAMES:
            for i in range(count):
                nested = "more/" if i % 5 == 4 else ""
                write(root, f"{split}/{label}/{nested}{i}_{i % 10 + 1}.txt", f"{split} {label} review {i}")
    return str(root / "train"), str(root / "test")


def test_folder_split_equals_the_imdb_split(tmp_path):
    train_dir, test_dir = aclimdb_like(tmp_path / "aclImdb")
    train, validation, test = user_files.build_splits(train_dir, test_dir, validation_split=0.2, seed=7,
                                                    log=[].append)
    paths, labels = imdb.list_reviews(train_dir, seed=7)
    held_out = int(0.2 * len(paths))
    assert (train.paths, validation.paths) == (paths[:-held_out], paths[-held_out:])
    assert train.labels.tolist() == labels[:-held_out].tolist()
    assert validation.labels.tolist() == labels[-held_out:].tolist()
    test_paths, test_labels = imdb.list_reviews(test_dir, seed=7)
    assert (test.paths, test.labels.tolist()) == (test_paths, test_labels.tolist())
    assert train.label_names == imdb.CLASS_NAMES and train.task == "binary"
    assert train.texts == [class_folders.read_text(path)[0] for path in train.paths]


def test_a_validation_file_replaces_the_held_out_share(tmp_path):
    train, validation, _ = user_files.build_splits(
        write(tmp_path, "train.csv", csv_of(BINARY)), write(tmp_path, "test.csv", csv_of(BINARY[:2])),
        validation_path=write(tmp_path, "validation.csv", csv_of([("fine", "pos"), ("poor", "neg")])),
        log=[].append)
    assert len(train) == 5 and sorted(validation.texts) == ["fine", "poor"]


def test_validation_split_leaving_no_texts_refused(tmp_path):
    train_path = write(tmp_path, "train.csv", csv_of(BINARY))
    message = error_of(user_files.build_splits, train_path, train_path, validation_split=0.1, log=[].append)
    assert "--validation-split 0.1" in message and train_path in message


def test_load_split_keeps_file_order_without_a_seed(tmp_path):
    path = write(tmp_path, "test.csv", csv_of(BINARY))
    split = user_files.load_split(path, ("neg", "pos"), "binary")
    assert split.texts == [text for text, _ in BINARY] and split.labels.tolist() == [1, 0, 1, 0, 1]


def test_missing_text_column_lists_the_columns_found(tmp_path):
    path = write(tmp_path, "train.csv", csv_of(BINARY, header="review,label"))
    message = error_of(user_files.read, path)
    assert f"{path}:1:" in message and "'text'" in message and "'review', 'label'" in message
    assert "--text-column" in message


def test_missing_label_field_in_jsonl_lists_the_fields_found(tmp_path):
    path = write(tmp_path, "train.jsonl", '{"text": "a", "label": "x"}\n{"text": "b", "class": "y"}\n')
    message = error_of(user_files.read, path)
    assert f"{path}:2:" in message and "'label'" in message and "'text', 'class'" in message
    assert "--label-column" in message


def test_headerless_columns_must_be_numbers_within_the_row(tmp_path):
    path = write(tmp_path, "sst.tsv", "1\tit is good\n")
    assert "0-based column number" in error_of(user_files.read, path, no_header=True)
    message = error_of(user_files.read, path, text_column="2", label_column="0", no_header=True)
    assert f"{path}:1:" in message and "--text-column 2" in message


def test_empty_text_named_by_line_or_file(tmp_path):
    path = write(tmp_path, "train.csv", csv_of([("fine", "pos"), ("  ", "neg")]))
    assert f"{path}:3: the text is empty" in error_of(user_files.read, path)
    write(tmp_path, "folder/pos/1.txt", "fine")
    empty = write(tmp_path, "folder/neg/2.txt", "")
    assert f"{empty}: the text is empty" in error_of(user_files.read, str(tmp_path / "folder"))


def test_empty_label_named_by_line(tmp_path):
    path = write(tmp_path, "train.csv", csv_of([("fine", "pos"), ("bad", "")]))
    assert f"{path}:3: the label is empty" in error_of(user_files.read, path)
    path = write(tmp_path, "train.jsonl", '{"text": "a", "label": "x"}\n{"text": "b", "label": null}\n')
    assert f"{path}:2: the label is empty" in error_of(user_files.read, path)


def test_ragged_rows_named_by_line(tmp_path):
    path = write(tmp_path, "train.csv", "text,label\nfine,pos\nnot, quoted,neg\n")
    message = error_of(user_files.read, path)
    assert f"{path}:3: 3 fields where the header has 2" in message and "double quotes" in message
    path = write(tmp_path, "train.tsv", "good\tpos\nbad\n")
    assert f"{path}:2: 1 fields where the first row has 2" in error_of(
        user_files.read, path, text_column="0", label_column="1", no_header=True)


def test_csv_errors_named_by_line(tmp_path):
    """A quote never closed swallows the rest of the file: the row it starts on is named, with the fix."""
    path = write(tmp_path, "train.csv", 'text,label\nfine,pos\n"never closed,neg\n' + "x" * 200_000 + "\n")
    message = error_of(user_files.read, path)
    assert f"{path}:3:" in message and "double quotes" in message


def test_invalid_json_line_named(tmp_path):
    path = write(tmp_path, "train.jsonl", '{"text": "a", "label": "x"}\n{"text": "b", label: "y"}\n')
    message = error_of(user_files.read, path)
    assert f"{path}:2: not valid JSON" in message
    path = write(tmp_path, "list.jsonl", '["a", "x"]\n')
    assert f"{path}:1: a JSON list, not an object" in error_of(user_files.read, path)


def test_duplicate_label_in_a_multilabel_row(tmp_path):
    path = write(tmp_path, "train.jsonl", '{"text": "a", "label": ["x"]}\n{"text": "b", "label": ["y", "x", "y"]}\n')
    assert f"{path}:2: the label 'y' is listed twice" in error_of(user_files.read, path)
    path = write(tmp_path, "train.csv", csv_of([("a", "x|y"), ("b", "x| x")]))
    assert f"{path}:3: the label 'x' is listed twice" in error_of(user_files.read, path, label_separator="|")


def test_empty_label_between_separators(tmp_path):
    path = write(tmp_path, "train.csv", csv_of([("a", "x||y")]))
    assert f"{path}:2: an empty label in ['x', '', 'y']" in error_of(user_files.read, path, label_separator="|")


def test_folder_without_class_subfolders(tmp_path):
    folder = tmp_path / "flat"
    write(folder, "1.txt", "a text not in a class folder")
    assert f"{folder} holds no class subfolders" in error_of(user_files.read, str(folder))


def test_empty_class_folder(tmp_path):
    write(tmp_path, "train/pos/1.txt", "good")
    write(tmp_path, "train/neg/readme.md", "no texts")
    message = error_of(user_files.read, str(tmp_path / "train"))
    assert f"{tmp_path / 'train' / 'neg'}: the class folder holds no .txt files" in message


def test_only_one_class_in_training_data(tmp_path):
    path = write(tmp_path, "train.csv", csv_of([("a", "pos"), ("b", "pos")]))
    message = error_of(user_files.build_splits, path, path, log=[].append)
    assert f"{path}: the training data has only the label 'pos'" in message


def test_unseen_test_label_named_with_file_line_and_label(tmp_path):
    train_path = write(tmp_path, "train.csv", csv_of(BINARY))
    test_path = write(tmp_path, "test.csv", csv_of([("ok", "pos"), ("meh", "neutral")]))
    message = error_of(user_files.build_splits, train_path, test_path, log=[].append)
    assert f"{test_path}:3: the label 'neutral' never appears in the training data" in message


def test_unseen_validation_label_and_test_class_folder(tmp_path):
    train_path = write(tmp_path, "train.csv", csv_of(BINARY))
    validation_path = write(tmp_path, "validation.jsonl", '{"text": "t", "label": ["pos", "mixed"]}\n')
    message = error_of(user_files.build_splits, train_path, train_path, validation_path=validation_path,
                       task="multilabel", log=[].append)
    assert f"{validation_path}:1: the label 'mixed'" in message
    write(tmp_path, "test/pos/1.txt", "good")
    other = write(tmp_path, "test/other/1.txt", "who knows")
    message = error_of(user_files.build_splits, train_path, str(tmp_path / "test"), log=[].append)
    assert f"{other}: the label 'other' never appears" in message


def test_utf16_file_refused(tmp_path):
    path = write(tmp_path, "excel.tsv", "text\tlabel\ngood\tpos\n".encode("utf-16"))
    assert f"{path}: the file is UTF-16" in error_of(user_files.read, path)


def test_missing_path_unknown_suffix_and_empty_file(tmp_path):
    assert "does not exist" in error_of(user_files.read, str(tmp_path / "nowhere.csv"))
    path = write(tmp_path, "data.parquet", b"PAR1")
    assert f"{path}: can't read .parquet" in error_of(user_files.read, path)
    for name in ("empty.csv", "header.csv", "blank.jsonl"):
        path = write(tmp_path, name, "text,label\n" if name == "header.csv" else "\n")
        assert f"{path} holds no texts" in error_of(user_files.read, path)


def test_texts_in_both_train_and_test_warned_with_the_count(tmp_path):
    logs = []
    train_path = write(tmp_path, "train.csv", csv_of(BINARY))
    test_path = write(tmp_path, "test.csv", csv_of([BINARY[0], ("new", "neg"), BINARY[3]]))
    user_files.build_splits(train_path, test_path, log=logs.append)
    assert f"warning: 2 of the 3 texts in {test_path} also appear in {train_path}" in logs[-1]


def test_class_under_one_percent_warned(tmp_path):
    logs = []
    rows = [(f"a{i}", "a") for i in range(100)] + [(f"b{i}", "b") for i in range(99)] + [("c0", "c")]
    train_path = write(tmp_path, "train.csv", csv_of(rows))
    user_files.build_splits(train_path, write(tmp_path, "test.csv", csv_of([("x", "a")])), log=logs.append)
    warnings = [line for line in logs if line.startswith("warning") and "under 1%" in line]
    assert len(warnings) == 1 and train_path in warnings[0] and "c (1 of 200, 0.5%)" in warnings[0]
    assert "a (" not in warnings[0] and "b (" not in warnings[0]


def test_invalid_utf8_replaced_and_lines_counted(tmp_path):
    logs = []
    path = write(tmp_path, "train.csv", b"text,label\nfine,a\nbad \xff here,b\nalso \xed\xa0\x80 bad,a\nok,b\n")
    texts, _, _ = user_files.read(path, log=logs.append, encoding="utf-8:replace")
    assert texts == ["fine", "bad \ufffd here", "also \ufffd\ufffd\ufffd bad", "ok"]
    assert logs == [f"warning: {path}: 2 line(s) were not valid UTF-8; their bad bytes were read as U+FFFD"]


def test_invalid_utf8_files_counted_in_a_folder(tmp_path):
    logs = []
    write(tmp_path, "train/pos/1.txt", b"caf\xe9")
    write(tmp_path, "train/neg/1.txt", "caf\u00e9")
    texts, _, _ = user_files.read(str(tmp_path / "train"), log=logs.append, encoding="utf-8:replace")
    assert texts == ["caf\u00e9", "caf\ufffd"]
    assert logs == [f"warning: {tmp_path / 'train'}: 1 file(s) were not valid UTF-8; their bad bytes were read "
                    "as U+FFFD"]


def test_a_one_hot_pair_is_refused_not_read_as_two_labels(tmp_path):
    path = write(tmp_path, "pairs.jsonl", '{"text": "good", "label": [1, 0]}\n{"text": "bad", "label": [0, 1]}\n')
    assert "looks like a 0/1 vector" in error_of(user_files.read, path)


def test_a_label_on_every_training_text_is_warned_about(tmp_path):
    rows = "".join(json.dumps({"text": f"text {i}", "label": ["news", "sports" if i % 2 else "politics"]}) + "\n"
                   for i in range(20))
    path = write(tmp_path, "tags.jsonl", rows)
    logs = []
    user_files.build_splits(path, path, log=logs.append)
    warned = [line for line in logs if "every training text has the label" in line]
    assert len(warned) == 1 and "news" in warned[0] and "sports" not in warned[0]


def test_an_id_column_as_labels_is_refused_unless_the_task_is_given(tmp_path):
    path = write(tmp_path, "ids.csv", csv_of([(f"text {i}", f"id-{i}") for i in range(6)]))
    message = error_of(user_files.build_splits, path, path, log=[].append)
    assert "each of the 6 texts has a label of its own" in message and "--label-column" in message
    train, _, _ = user_files.build_splits(path, path, task="multiclass", validation_split=0.5, log=[].append)
    assert len(train.label_names) == 6


def test_numeric_labels_are_numbers_in_csv_and_json_alike(tmp_path):
    """1 and 1.0 are one label, named as first spelled; 2 sorts before 10; a test file's 10.0 is 10."""
    train_path = write(tmp_path, "train.csv", csv_of([("a", "1"), ("b", "10"), ("c", "2"), ("d", "1.0"),
                                                      ("e", "0"), ("f", "2")] * 2))
    test_path = write(tmp_path, "test.jsonl", "".join(json.dumps({"text": t, "label": label}) + "\n"
                                                      for t, label in (("x", 10.0), ("y", 1), ("z", "0.0"))))
    train, validation, test = user_files.build_splits(train_path, test_path, validation_split=0.25, log=[].append)
    assert train.label_names == ("0", "1", "2", "10") and train.task == "multiclass"
    assert [train.label_names[i] for i in test.labels] == ["10", "1", "0"]  # the file's order kept
    counts = np.bincount(np.concatenate([train.labels, validation.labels]), minlength=4)
    assert counts.tolist() == [2, 4, 4, 2]  # 0; 1 and 1.0 together; 2; 10


def test_numbered_class_folders_keep_keras_order(tmp_path):
    for name in ("1", "10", "2"):
        for i in range(3):
            write(tmp_path / "train", f"{name}/{i}.txt", f"text {name} {i}")
    train, _, _ = user_files.build_splits(str(tmp_path / "train"), str(tmp_path / "train"), log=[].append)
    assert train.label_names == ("1", "10", "2")  # text_dataset_from_directory's class_names order


def test_a_cp1252_file_is_refused_naming_its_line_and_read_with_encoding(tmp_path):
    """Excel on Windows writes cp1252: café and cafè must stay two labels, never both caf\ufffd."""
    content = "text,label\nnice,café\nfine,cafè\ngood,café\nok,cafè\n".encode("cp1252")
    path = write(tmp_path, "drinks.csv", content)
    message = error_of(user_files.read, path)
    assert message.startswith(f"{path}:2: not utf-8 (byte 0xe9)") and "--encoding cp1252" in message
    _, labels, _ = user_files.read(path, encoding="cp1252")
    assert labels == ["café", "cafè", "café", "cafè"]
    folder = tmp_path / "folders"
    write(folder, "café/1.txt", "nice".encode("cp1252"))
    write(folder, "cafè/1.txt", "très bien".encode("cp1252"))
    assert "not utf-8 (byte 0xe8); pass --encoding cp1252" in error_of(user_files.read, str(folder))
    texts, _, _ = user_files.read(str(folder), encoding="cp1252")
    assert sorted(texts) == ["nice", "très bien"]


def test_a_tsv_quote_that_swallows_rows_is_warned_about_and_quoting_none_reads_it(tmp_path):
    """GLUE-style TSVs have bare quotes in texts: csv quoting reads 4 rows as 2, and says so."""
    content = 'text\tlabel\n"great movie\tpos\nawful\tneg\nfine" he said\tpos\nok\tneg\n'
    path = write(tmp_path, "glue.tsv", content)
    logs = []
    texts, _, _ = user_files.read(path, log=logs.append)
    assert len(texts) == 2
    assert len(logs) == 1 and logs[0].startswith(f"warning: {path}:2: the text of 1 row(s) runs over several lines")
    assert "--quoting none" in logs[0]
    texts, labels, _ = user_files.read(path, quoting="none", log=logs.append)
    assert texts == ['"great movie', "awful", 'fine" he said', "ok"] and labels == ["pos", "neg", "pos", "neg"]


def test_semicolon_csv_is_explained_and_read_with_its_delimiter(tmp_path):
    path = write(tmp_path, "excel.csv", "text;label\ngood;pos\nbad;neg\n")
    assert "pass --delimiter ';'" in error_of(user_files.read, path)
    texts, labels, _ = user_files.read(path, delimiter=";")
    assert (texts, labels) == (["good", "bad"], ["pos", "neg"])


def test_codes_that_only_look_like_numbers_stay_apart_and_merges_are_logged(tmp_path):
    rows = [("a", "007"), ("b", "7"), ("c", "1_000"), ("d", "1000")] * 3
    train, _, _ = user_files.build_splits(write(tmp_path, "codes.csv", csv_of(rows)),
                                          write(tmp_path, "t.csv", csv_of(rows)), task="multiclass", log=[].append)
    assert train.label_names == ("007", "1000", "1_000", "7")  # not numbers: four labels, in text order
    big = [("a", "9007199254740993"), ("b", "9007199254740992"), ("c", "1"), ("d", "1.0")] * 3
    logs = []
    train, _, _ = user_files.build_splits(write(tmp_path, "big.csv", csv_of(big)),
                                          write(tmp_path, "t2.csv", csv_of(big)), log=logs.append)
    assert train.label_names == ("1", "9007199254740992", "9007199254740993")  # exact: beyond float's 2^53
    assert any("compared as numbers: read 1.0 as 1" in line for line in logs)


def test_a_models_own_label_names_are_never_respelled(tmp_path):
    """A model whose labels are 1 and 1.0 (trained before numbers were compared) keeps them apart."""
    path = write(tmp_path, "test.csv", csv_of([("x", "1.0"), ("y", "1"), ("z", "2.0")]))
    split = user_files.load_split(path, ("1", "1.0", "2"), "multiclass")
    assert [split.label_names[i] for i in split.labels] == ["1.0", "1", "2"]


def test_float_and_boolean_one_hot_pairs_are_refused_too(tmp_path):
    for pair in ([1.0, 0.0], [True, False]):
        path = write(tmp_path, "pairs.jsonl", json.dumps({"text": "good", "label": pair}) + "\n")
        assert "looks like a 0/1 vector" in error_of(user_files.read, path)


def test_replaced_bytes_never_make_a_label(tmp_path):
    """utf-8:replace may read a text's bad bytes as U+FFFD, but café and cafè must not both become caf\ufffd."""
    path = write(tmp_path, "drinks.csv", "text,label\nnice,café\n".encode("cp1252"))
    message = error_of(user_files.read, path, encoding="utf-8:replace")
    assert message.startswith(f"{path}:2: the label") and "--encoding" in message


def test_any_spelling_of_utf8_drops_the_bom(tmp_path):
    path = write(tmp_path, "bom.csv", b"\xef\xbb\xbftext,label\ngood,pos\n")
    for encoding in ("UTF-8", "utf8", "utf-8"):
        assert user_files.read(path, encoding=encoding)[:2] == (["good"], ["pos"])


def test_a_quoted_multi_line_csv_field_is_no_swallowed_row(tmp_path):
    path = write(tmp_path, "reviews.csv", 'text,label\n"First paragraph, with a comma.\nSecond one.",pos\n')
    logs = []
    texts, _, _ = user_files.read(path, log=logs.append)
    assert texts == ["First paragraph, with a comma.\nSecond one."] and logs == []


def test_a_label_the_validation_cut_takes_from_every_training_text_is_warned_of(tmp_path):
    """The cut keeps the last rows: a label only they have is on no training text, which is said."""
    rows = [(f"a{i}", "a") for i in range(10)] + [(f"b{i}", "b") for i in range(10)] + [("c0", "c"), ("c1", "c")]
    train_path = write(tmp_path, "train.csv", csv_of(rows))
    test_path = write(tmp_path, "test.csv", csv_of([("x", "a")]))
    for stratify, expected in ((False, 1), (True, 0)):
        logs = []  # seed 1 shuffles both c rows into the held-out half
        train, _, _ = user_files.build_splits(train_path, test_path, validation_split=0.5, seed=1, log=logs.append,
                                              stratify=stratify)
        warned = [line for line in logs if "no training text has the label" in line]
        counts = user_files.class_counts(train)
        assert len(warned) == expected == int((counts == 0).sum()), (stratify, counts)
        if warned:
            missing = [name for name, count in zip(train.label_names, counts) if count == 0]
            assert warned[0].endswith(f"no training text has the label {', '.join(missing)}, so the model can't "
                                      "learn it; add texts with it, or pass --stratify")
