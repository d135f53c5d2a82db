"""Scoring any texts with a saved classifier and writing what it says of each: table, JSON Lines or CSV."""
import codecs
import csv
import itertools
import json
import sys

import numpy as np

from tfhub_classifier.data import imdb, table_files, tokenization
from tfhub_classifier.inference import scoring


def read_lines(path, log=None):
    """Texts from a file (one a line) or '-' for standard input, lazily, a leading UTF-8 BOM dropped;
    ValueError if binary. Blank lines are scored as empty texts, so results keep the lines' places, and
    counted in a warning passed to log (default: stderr) at the end."""
    log = log or (lambda line: print(line, file=sys.stderr))
    name = "standard input" if path == "-" else path
    stream = sys.stdin.buffer if path == "-" else open(path, "rb")
    blank, first_blank = 0, None
    try:
        for number, line in enumerate(stream, start=1):
            if b"\x00" in line:
                raise ValueError(f"{name} looks binary (NUL byte on line {number}); give a text file with one "
                                 "review per line")
            if number == 1 and line.startswith(codecs.BOM_UTF8):
                line = line[len(codecs.BOM_UTF8):]
            line = line.rstrip(b"\r\n")
            if not line.strip():
                blank, first_blank = blank + 1, first_blank or number
            yield line
    finally:
        if stream is not sys.stdin.buffer:
            stream.close()
    if blank:
        log(f"warning: {name}: {blank} blank line(s), the first line {first_blank}, were scored as empty texts; "
            "remove them if they hold no text")


def run(cfg, sentences=(), path=None, output_format="table"):
    """predict.py: label sentences, or the texts of the file at path ('-' or None: standard input), with
    the model in cfg.model_dir, writing each result to stdout as its window is scored. Returns the
    sentences' scores, or for a file only how many texts it scored, so memory stays flat in its length."""
    from tfhub_classifier.model import saving
    kept_columns, rows = [], None
    if path and table_files.is_table(path):  # read before the model loads, so a wrong column is said at once
        kept_columns, rows = table_rows(path, cfg.text_column, cfg.keep_columns, None, cfg.no_header, cfg.encoding,
                                        cfg.delimiter, cfg.quoting)
        first = next(rows, None)
        rows = iter(()) if first is None else itertools.chain([first], rows)
    from tfhub_classifier.inference import engines
    # A few texts given on the command line are scored sooner than the fused graph is built (docs/benchmarks.md).
    engine = "savedmodel" if cfg.engine == "auto" and sentences else cfg.engine
    model, record, _ = engines.load(cfg.model_dir, cfg.precision, engine, log=lambda line: print(line, file=sys.stderr))
    task = saving.task_of_record(record)
    check_top_k(task, cfg.top_k)
    if rows is None:
        rows = ((text, ()) for text in (sentences or read_lines(path or "-")))
    threshold = saving.threshold_in_use(cfg.threshold, record)
    writer = Writer(output_format, task, threshold, cfg.top_k, stdout_text(), kept_columns)
    scored = predict(model, task, rows, cfg.eval_batch_size, progress=bool(path), text_of=lambda row: row[0])
    if cfg.explain:
        from tfhub_classifier.inference import attribution
        explainer = attribution.Explainer.of_record(model, record, task, cfg.explain_method)
        scored = explained(scored, explainer, threshold, label_index(task, cfg.explain_label))
    scores, count = ([] if sentences else None), 0
    for (text, kept), probabilities, *explanation in scored:
        writer.write(text, probabilities, kept, *explanation)
        count += 1
        if scores is not None:
            scores.append(float(probabilities) if task.kind == "binary" else probabilities.tolist())
    return scores if scores is not None else count


def label_index(task, name):
    """The index of the label named (as label_names or predict.py names it), or None for no name;
    ValueError naming the labels otherwise."""
    if not name:
        return None
    for names in (task.label_names, display_names(task)):
        if name in names:
            return list(names).index(name)
    raise ValueError(f"--explain-label {name!r} is not one of this model's labels: {', '.join(task.label_names)}")


def explained_labels(task, probabilities, threshold, chosen=None):
    """The label to explain for each row of probabilities: chosen (an index) if given, else the one the
    model gives (binary, multi-class) or its most likely (multi-label)."""
    probabilities = np.asarray(probabilities)
    if chosen is not None:
        return [chosen] * len(probabilities)
    if task.kind == "binary":
        return [int(p >= threshold) for p in probabilities]
    return np.argmax(probabilities, axis=1).tolist()


def explained(scored, explainer, threshold, chosen=None):
    """(row, probabilities, Explanation) for each (row, probabilities) of scored, explained in chunks so
    results keep streaming (the explainer's batch at a time)."""
    from tfhub_classifier.inference import attribution
    for chunk in iter(lambda: list(itertools.islice(scored, attribution.BATCH_SIZE)), []):
        rows, probabilities = zip(*chunk)
        labels = explained_labels(explainer.task, probabilities, threshold, chosen)
        texts = [row[0] if isinstance(row, tuple) else row for row in rows]
        yield from zip(rows, probabilities, explainer.explain(texts, labels))


def predict(model, task, texts, batch_size, progress=False, text_of=None):
    """(text, probabilities) pairs in input order, streamed window by window: a score for a binary
    task, one probability per label otherwise; progress: a bar on stderr. With text_of, texts are
    rows (e.g. a text and the columns kept with it) and text_of(row) is the text scored."""
    texts = iter(texts)
    pending = []

    def remember():  # keep each text until its score comes back
        for text in texts:
            pending.append(text)
            yield text if text_of is None else text_of(text)

    for logits in scoring.score_texts(model, remember(), batch_size, progress=progress):
        done, pending[:] = pending[:len(logits)], pending[len(logits):]
        yield from zip(done, task.probabilities(logits))


def table_rows(path, text_column="text", keep_columns="", log=None, no_header=False, encoding="utf-8",
               delimiter="", quoting="csv"):
    """(kept column names, rows) of a .csv, .tsv or .jsonl file to score, read as training reads it:
    rows yields (text, kept values) lazily, one row in memory at a time. keep_columns is a comma-separated
    list of columns (JSON fields) to copy through, or "all" for every one but the text's. An empty text
    is scored as such and counted in a warning passed to log (default: stderr) at the end."""
    log = log or (lambda line: print(line, file=sys.stderr))
    columns, records = table_files.file_records(path, no_header, log, encoding, delimiter, quoting)
    wanted = [name.strip() for name in keep_columns.split(",") if name.strip()] if keep_columns != "all" else None
    repeated = next((name for i, name in enumerate(wanted or []) if name in wanted[:i]), None)
    if repeated:
        raise ValueError(f"--keep-columns names {repeated!r} twice; name each column once")
    if columns is None and not table_files.is_jsonl(path):
        raise ValueError(f"{path} holds no texts; check that it is the right file")
    if columns is not None:
        text_index = table_files.column_index(path, columns, text_column, "--text-column")
        kept = [(name, index) for index, name in enumerate(columns) if index != text_index] if wanted is None else [
            (name, table_files.column_index(path, columns, name, "--keep-columns")) for name in wanted]
        rows = ((source, fields[text_index], [fields[index] for _, index in kept]) for source, fields in records)
        return [name for name, _ in kept], _reporting_empty(path, rows, log)
    first = next(records, None)
    if first is None:
        raise ValueError(f"{path} holds no texts; check that it is the right file")
    names = [key for key in first[1] if key != text_column] if wanted is None else wanted
    rows = _json_rows(path, itertools.chain([first], records), text_column, names, wanted is None, log)
    return names, _reporting_empty(path, rows, log)


def _json_rows(path, records, text_column, names, every_field, log):
    """(source, text, kept values) per JSON object; at the end, a warning naming the kept fields no line
    has, or (every_field: the first line's fields were kept) the fields later lines add."""
    unseen, added = set(names), {}
    for source, record in records:
        unseen.difference_update(record)
        if every_field:
            for key in record.keys() - set(names) - {text_column}:
                added.setdefault(key, source)
        yield source, _json_text(source, record, text_column), [record.get(name) for name in names]
    if unseen:
        log(f"warning: {path}: no line has the field(s) {', '.join(sorted(unseen))} named in --keep-columns; "
            "their values were written as null")
    if added:
        key, source = next(iter(added.items()))
        log(f"warning: {path}: --keep-columns all kept the first line's fields; {len(added)} other field(s), "
            f"e.g. {key!r} from {source}, were not copied: name them in --keep-columns")


def _json_text(source, record, key):
    if key not in record:
        raise ValueError(f"{source}: no {key!r} field (fields found: {', '.join(map(repr, record)) or 'none'}); "
                         "name the text's field with --text-column")
    text = record[key]
    if text is not None and not isinstance(text, str):
        raise ValueError(f"{source}: the text must be a JSON string, not {json.dumps(text)[:40]}")
    return text or ""


def _reporting_empty(path, rows, log):
    """(text, kept) per row; the rows with an empty text are counted in a warning at the end."""
    empty, first = 0, None
    for source, text, kept in rows:
        if not text.strip():
            empty, first = empty + 1, first or source
        yield text, kept
    if empty:
        log(f"warning: {path}: {empty} row(s) with an empty text, the first at {first}, were scored as empty texts")


def display_names(task):
    """Label names as predict.py prints them: IMDB's neg/pos folders as the words it always printed (in
    either order: --positive-label neg puts neg second)."""
    if sorted(task.label_names) != sorted(imdb.CLASS_NAMES):
        return task.label_names
    return tuple(dict(zip(imdb.CLASS_NAMES, imdb.DISPLAY_NAMES))[name] for name in task.label_names)


def labelled(task, probabilities, threshold=0.5, top_k=1, names=None):
    """What the model says of one text, as predict.py's JSON Lines and serve.py's predictions give it
    (without the text): binary, the positive label's score, which label that is, and the label given;
    multi-class, the top label and its probability, and with top_k over 1 the top_k; multi-label, every
    label at or over its threshold (one for all, or a list with one per label), and each label's
    probability. names: how labels are named (default: display_names, as predict.py prints them). The
    export's client_example.py keeps a copy (it cannot import the suite), which a test holds to this one."""
    names = names or display_names(task)
    if task.kind == "binary":
        score = float(probabilities)
        return {"score": round(score, 6), "positive_label": names[1], "label": names[int(score >= threshold)]}
    if task.kind == "multiclass":
        ranked = np.argsort(-probabilities, kind="stable")[:top_k]
        top = [{"label": names[i], "probability": round(float(probabilities[i]), 6)} for i in ranked]
        result = {"label": top[0]["label"], "probability": top[0]["probability"]}
        return {**result, "top_k": top} if top_k > 1 else result
    limits = np.broadcast_to(np.asarray(threshold, dtype=np.float64), len(names))
    return {"labels": [name for name, p, limit in zip(names, probabilities, limits) if p >= limit],
            "probabilities": {name: round(float(p), 6) for name, p in zip(names, probabilities)}}


def table_line(text, result):
    """The aligned line the table format prints for one text and what labelled() says of it: for a
    binary task, the tutorial's `input: TEXT : score: S` with the label S is the probability of before
    it and the label given after it (`POSITIVE score: S (LABEL)`); otherwise the labels given, each
    with its probability. Long texts are cut to 60 characters."""
    shown = " ".join(text.split())
    shown = shown if len(shown) <= 60 else shown[:59] + "…"
    if "score" in result:
        return f"input: {shown:<30} : {result['positive_label']} score: {result['score']:.6f} ({result['label']})"
    if "label" in result:
        labels = ", ".join(f"{entry['label']} ({entry['probability']:.4f})" for entry in result.get("top_k", [result]))
    else:
        labels = ", ".join(f"{name} ({result['probabilities'][name]:.4f})" for name in result["labels"]) or "-"
    return f"input: {shown:<30} : {labels}"


WHY_WORDS = 6  # words the table format shows per text
GREEN, RED, RESET = "\033[32m", "\033[31m", "\033[0m"


def why_line(words, weights, label, colour=False):
    """The line that says which words drove a label: those with the largest weights, toward it (+, green
    on a terminal) or against it (-, red)."""
    weighted = sorted([(word, weight) for word, weight in zip(words, weights) if weight],
                      key=lambda pair: -abs(pair[1]))[:WHY_WORDS]
    shown = []
    for word, weight in weighted:
        item = f"{word} ({weight:+.3f})"
        shown.append(f"{GREEN if weight > 0 else RED}{item}{RESET}" if colour else item)
    return f"    why {label}: " + (", ".join(shown) or "no word moved it")


def is_terminal(stream):
    return hasattr(stream, "isatty") and stream.isatty()


OUTPUT_FIELDS = {"text", "score", "positive_label", "label", "probability", "top_k", "labels", "probabilities",
                 "explained_label", "words", "offsets", "weights", "explained_probability", "baseline_probability"}


class Writer:
    """Writes each text's label(s) and probabilities as an aligned table, JSON Lines or CSV.

    binary: the positive label's score, its name, and the label given; multi-class: the top_k labels with
    their probabilities; multi-label: every label at or over the threshold, and each label's probability.
    """

    def __init__(self, output_format, task, threshold=0.5, top_k=1, stream=None, kept_columns=()):
        self.format, self.task, self.threshold, self.top_k = output_format, task, threshold, top_k
        self.stream = stream or sys.stdout
        self.csv = csv.writer(self.stream) if output_format == "csv" else None
        # A kept column named like an output field (a test file's "label") is written as input_<name>.
        own = set(self._csv_header()) | OUTPUT_FIELDS
        taken = own | set(kept_columns)
        self.kept_columns = []
        for name in kept_columns:
            if name in own:
                while name in taken:
                    name = f"input_{name}"
                taken.add(name)
            self.kept_columns.append(name)
        if self.csv:
            self.csv.writerow(self.kept_columns + self._csv_header())

    def _csv_header(self):
        if self.task.kind == "binary":
            return ["text", "score", "positive_label", "label"]
        if self.task.kind == "multiclass":
            return ["text"] + [f"{field}_{rank}" if rank > 1 else field for rank in range(1, self.top_k + 1)
                               for field in ("label", "probability")]
        return ["text", "labels"] + list(self.task.label_names)

    def write(self, text, probabilities, kept=(), explanation=None):
        """One text's line; kept: the values of the kept columns, in their order; explanation: an
        attribution.Explanation (JSON Lines: its fields; the table: a line of the top words)."""
        text = tokenization.as_text(text)
        result = labelled(self.task, probabilities, self.threshold, self.top_k)
        if self.format == "jsonl":
            why = explanation.as_json(display_names(self.task)) if explanation else {}
            self.stream.write(json.dumps({**dict(zip(self.kept_columns, kept)), "text": text, **result, **why}) + "\n")
        elif self.csv:
            self.csv.writerow(list(kept) + [text] + self._csv_fields(result))
        else:
            self.stream.write(table_line(text, result) + "\n")
            if explanation:
                label = display_names(self.task)[explanation.label]
                self.stream.write(why_line(explanation.words, explanation.weights, label, is_terminal(self.stream))
                                  + "\n")

    def _csv_fields(self, result):
        if self.task.kind == "binary":
            return [f"{result['score']:.6f}", result["positive_label"], result["label"]]
        if self.task.kind == "multiclass":
            return [value for entry in result.get("top_k", [result])
                    for value in (entry["label"], f"{entry['probability']:.6f}")]
        return ["|".join(result["labels"])] + [f"{p:.6f}" for p in result["probabilities"].values()]


def check_top_k(task, top_k):
    """ValueError unless --top-k suits the model: only multi-class models rank labels."""
    if top_k != 1 and task.kind != "multiclass":
        raise ValueError(f"--top-k is for multi-class models; this one is {task.kind}: "
                         + ("use --threshold" if task.kind == "multilabel" else "drop --top-k"))
    if not 1 <= top_k <= len(task.label_names):
        raise ValueError(f"--top-k must be between 1 and the model's {len(task.label_names)} labels, "
                         f"got {top_k}")
    return top_k


def stdout_text():
    """stdout that never fails on characters the terminal's encoding lacks."""
    if hasattr(sys.stdout, "reconfigure"):  # a text stream (cli.run's LineEnds passes it through)
        sys.stdout.reconfigure(errors="replace")
    return sys.stdout
