"""Reading CSV, TSV and JSON Lines files as records, streamed: the file formats, apart from what the
records mean (labelled data: user_files; texts to score: prediction).

Bad files are a ValueError of one line naming the file, the line and the fix. No TensorFlow here.
"""
import codecs
import csv
import itertools
import json
import os
import re

from tfhub_classifier.data import class_folders

csv.field_size_limit(2 ** 31 - 1)  # a document may be far longer than csv's default 128 KiB field

TABLE_DELIMITERS = {".csv": ",", ".tsv": "\t"}
JSONL_SUFFIX = ".jsonl"
UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")

_ESCAPED_BYTE = re.compile("[\udc80-\udcff]")  # what errors="surrogateescape" makes of a non-UTF-8 byte


def is_table(path):
    """Whether path names a .csv, .tsv or .jsonl file (by its suffix)."""
    return os.path.splitext(path)[1].lower() in (*TABLE_DELIMITERS, JSONL_SUFFIX)


def is_jsonl(path):
    return os.path.splitext(path)[1].lower() == JSONL_SUFFIX


def file_records(path, no_header=False, log=print, encoding="utf-8", delimiter="", quoting="csv"):
    """(columns, records) of a .csv, .tsv or .jsonl file, streamed: columns is a table's Columns (None for
    JSON Lines and for an empty table), records yields (file:line, fields), a table row's list of fields
    or a JSON object. encoding, delimiter and quoting as user_files.read takes them."""
    suffix = os.path.splitext(path)[1].lower()
    if suffix not in TABLE_DELIMITERS and suffix != JSONL_SUFFIX:
        raise ValueError(f"{path}: can't read {suffix or 'a file without a suffix'}; pass a folder of class "
                         "subfolders of .txt files, or a .csv, .tsv or .jsonl file")
    if encoding == class_folders.REPLACING_ENCODING or not codecs.lookup(encoding).name.startswith("utf-16"):
        refuse_utf16(path)
    lines = decoded_lines(path, log, encoding)
    if suffix == JSONL_SUFFIX:
        if no_header:
            raise ValueError(f"{path}: --no-header is for .csv and .tsv files; JSON Lines name their fields")
        return None, jsonl_records(path, lines)
    records = table_records(path, lines, delimiter or TABLE_DELIMITERS[suffix], no_header, quoting, log,
                            chosen_delimiter=bool(delimiter))
    columns = next(records)
    return columns, ((f"{path}:{line}", fields) for line, fields in records)


def refuse_utf16(path):
    with open(path, "rb") as f:
        if f.read(2) in UTF16_BOMS:
            raise ValueError(f"{path}: the file is UTF-16, not UTF-8; pass --encoding utf-16, or save it as UTF-8 "
                             "(in Excel: CSV UTF-8)")


def decoded_lines(path, log, encoding):
    """The file's lines, a UTF-8 BOM dropped and line ends kept (newline="", so csv reads quoted
    newlines). A byte the encoding can't decode stops the read naming its line; with utf-8:replace it
    becomes U+FFFD, and how many lines had any is logged at the end."""
    replaced = 0
    utf8 = encoding == class_folders.REPLACING_ENCODING or codecs.lookup(encoding).name == "utf-8"
    codec = "utf-8-sig" if utf8 else encoding
    # surrogateescape marks each bad byte, so exactly the lines that had one are found and repaired.
    with open(path, encoding=codec, errors="surrogateescape", newline="") as f:
        for number, line in enumerate(f, 1):
            bad = _ESCAPED_BYTE.search(line)
            if bad:
                if encoding != class_folders.REPLACING_ENCODING:
                    with open(path, "rb") as whole:  # read again, whole, to name the likely encoding
                        raise class_folders.undecodable(f"{path}:{number}", encoding, whole.read(),
                                                        ord(bad.group()) - 0xDC00)
                replaced += 1
                line = line.encode("utf-8", "surrogateescape").decode("utf-8", errors="replace")
            yield line
    if replaced:
        log(f"warning: {path}: {replaced} line(s) were not valid UTF-8; their bad bytes were read as U+FFFD")


def table_records(path, lines, delimiter, no_header, quoting, log, chosen_delimiter):
    """First the Columns (the header's names, or with no_header "0", "1", ...; None for an empty file), then
    (line, fields) per record, each checked to be as wide as the first. A record that runs over several
    lines with the delimiter inside a field (an unclosed quote that swallowed the lines after it) is
    warned about, naming its line."""
    reader = csv.reader(lines, dialect="excel", delimiter=delimiter,
                        quoting=csv.QUOTE_NONE if quoting == "none" else csv.QUOTE_MINIMAL)
    records = csv_records(path, reader)
    first_line, first = next(records, (1, None))
    if first is None:
        yield None
        return
    if len(first) == 1 and not chosen_delimiter and ";" in first[0] and delimiter != ";":
        raise ValueError(f"{path}:{first_line}: one column, holding ';' (as Excel writes CSV in some countries); "
                         "pass --delimiter ';'")
    if no_header:
        yield Columns([str(i) for i in range(len(first))], first_line, numbered=True)
        records = itertools.chain([(first_line, first)], records)
    else:
        yield Columns(first, first_line, numbered=False)
    first_row = "the first row" if no_header else "the header"
    swallowed = []
    for line, fields in records:
        if len(fields) != len(first):
            quotes = " (or, if double quotes are part of the texts, pass --quoting none)" if (
                delimiter == "\t" and quoting == "csv") else ""
            raise ValueError(f"{path}:{line}: {len(fields)} fields where {first_row} has {len(first)}; put "
                             f"double quotes around any field holding the delimiter ({delimiter!r}) or a "
                             f"newline, and give every row the same columns{quotes}")
        if delimiter == "\t" and any("\n" in field and "\t" in field for field in fields):
            swallowed.append(line)
        yield line, fields
    if swallowed:
        log(f"warning: {path}:{swallowed[0]}: the text of {len(swallowed)} row(s) runs over several lines and "
            f"holds the delimiter {delimiter!r}: an unclosed double quote may have swallowed the rows after it; "
            "if quotes are part of the texts (as in GLUE's TSVs), pass --quoting none")


def csv_records(path, reader):
    """(line the record starts on, fields) per non-blank record, csv's own errors named by line."""
    start = 1
    while True:
        try:
            fields = next(reader)
        except StopIteration:
            return
        except csv.Error as error:
            raise ValueError(f"{path}:{start}: {error}; look for a double quote that is never closed") from None
        if fields:
            yield start, fields
        start = reader.line_num + 1


class Columns(list):
    """A table's column names, the line its first row is on, and whether they are numbers (--no-header)."""

    def __init__(self, names, first_line, numbered):
        super().__init__(names)
        self.first_line, self.numbered = first_line, numbered


def column_index(path, columns, column, flag):
    """The index of a --text-column, --label-column or --keep-columns entry among the file's columns."""
    if columns.numbered:
        if not str(column).isdigit():
            raise ValueError(f"{path}: with --no-header, {flag} takes a 0-based column number such as 0, "
                             f"not {column!r}")
        if int(column) >= len(columns):
            raise ValueError(f"{path}:{columns.first_line}: {flag} {column} is past the last column: the row has "
                             f"{len(columns)} (0 to {len(columns) - 1})")
        return int(column)
    if column not in columns:
        raise ValueError(f"{path}:1: no column {column!r} in the header (columns found: "
                         f"{', '.join(map(repr, columns)) or 'none'}); name the right one with {flag}, or pass "
                         "--no-header and column numbers if the file has no header row")
    return columns.index(column)


def jsonl_records(path, lines):
    """(file:line, JSON object) per non-blank line."""
    for number, line in enumerate(lines, 1):
        if line.strip():
            source = f"{path}:{number}"
            yield source, json_object(source, line)


def json_object(source, line):
    try:
        record = json.loads(line)
    except json.JSONDecodeError as error:
        raise ValueError(f"{source}: not valid JSON ({error.msg}, column {error.colno}); each line must be one "
                         'JSON object such as {"text": "...", "label": "..."}') from None
    if not isinstance(record, dict):
        raise ValueError(f'{source}: a JSON {type(record).__name__}, not an object such as '
                         '{"text": "...", "label": "..."}')
    return record
