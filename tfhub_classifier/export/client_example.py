"""Score texts with a core-ops export of a BERT classifier (written by export.py as client_example.py).

The export takes token ids, so this client tokenizes, in plain Python: with the export's vocab.txt and
the settings in tokenizer.json it makes the ids the classifier's own preprocessing makes (BERT's basic
tokenizer and WordPiece, [CLS] and [SEP], the same truncation of long texts), then scores them locally
(needs tensorflow, not tensorflow-text; a TFLite export needs only ai-edge-litert or tensorflow) or asks
TF Serving (needs nothing but Python's standard library).
It prints a JSON line per text, as `predict.py --format jsonl` does; with --explain, also each word's
weight toward the label, by deleting one word at a time and rescoring (predict.py --explain's occlusion).

    python client_example.py "The movie was great!" "The movie was terrible..."
    python client_example.py --request "The movie was great!" > request.json   # TF Serving's REST body
    curl -d @request.json http://localhost:8501/v1/models/bert_classifier:predict
    python client_example.py --server http://localhost:8501/v1/models/bert_classifier "The movie was great!"
    python client_example.py --explain "A slow start, but a wonderful film."
"""
import argparse
import http.client
import json
import os
import platform
import sys
import unicodedata
import urllib.error
import urllib.request
import warnings

HERE = os.path.dirname(os.path.abspath(__file__))
TFLITE_FILE = "model.tflite"  # in a TFLite export, scored in place of the SavedModel
TOKEN_KEYS = ("input_word_ids", "input_mask", "input_type_ids")
SERVER_TIMEOUT_S = 300  # for one request: a batch of 32 texts, on a loaded server

# What ICU's NFKC_Casefold (TF Text's case_fold_utf8) deletes: Unicode's Default_Ignorable_Code_Point.
DEFAULT_IGNORABLE = ((0x00AD, 0x00AD), (0x034F, 0x034F), (0x061C, 0x061C), (0x115F, 0x1160), (0x17B4, 0x17B5),
                     (0x180B, 0x180F), (0x200B, 0x200F), (0x202A, 0x202E), (0x2060, 0x206F), (0x3164, 0x3164),
                     (0xFE00, 0xFE0F), (0xFEFF, 0xFEFF), (0xFFA0, 0xFFA0), (0xFFF0, 0xFFF8),
                     (0x1BCA0, 0x1BCA3), (0x1D173, 0x1D17A), (0xE0000, 0xE0FFF))
# CJK ideographs, each a word of its own (BERT's _is_chinese_char).
CJK = ((0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0x20000, 0x2A6DF), (0x2A700, 0x2B73F), (0x2B740, 0x2B81F),
       (0x2B820, 0x2CEAF), (0xF900, 0xFAFF), (0x2F800, 0x2FA1F))
WHITESPACE = " \t\n\f\r"
ASCII_WHITESPACE = " \t\n\r\x0b\x0c"  # where BERT's tokenizer always splits words, whatever its casing
NO_WORDS = "the tokenizer's word pieces could not be matched to the text's words, so no word has a weight"


def _in(ranges, char):
    code = ord(char)
    return any(low <= code <= high for low, high in ranges)


def is_punctuation(char):
    """BERT's punctuation: all non-alphanumeric ASCII, and Unicode's P* categories."""
    code = ord(char)
    return (33 <= code <= 47 or 58 <= code <= 64 or 91 <= code <= 96 or 123 <= code <= 126
            or unicodedata.category(char).startswith("P"))


def case_fold(text):
    """NFKC_Casefold, as ICU (TF Text's case_fold_utf8) does it: compatibility forms, case folded,
    default-ignorable characters (soft hyphens, zero-width joiners, ...) removed."""
    text = "".join(char for char in text if not _in(DEFAULT_IGNORABLE, char))
    return unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", text).casefold())


class Tokenizer:
    """Texts -> the export's inputs: lists of seq_length int ids per text, as the classifier makes them.

    BERT's tokenizer as TF Text's BertTokenizer runs it (google-research/bert's tokenization.py, with
    TF Text's differences): uncased vocabularies are case-folded, NFD-normalized and stripped of accents;
    control and format characters become spaces; words split at whitespace, each punctuation mark and
    each CJK ideograph is a word of its own; then greedy longest-match-first WordPiece ('##' marks a
    word's continuation), a word it cannot cover, or one over max_word_bytes UTF-8 bytes, being [UNK].
    """

    def __init__(self, vocab_file, lower_case, seq_length, truncation, head_tokens, cls_id, sep_id, pad_id=0,
                 unk_token="[UNK]", max_word_bytes=100):
        self.vocab = {}
        with open(vocab_file, encoding="utf-8") as f:
            for number, line in enumerate(f):
                self.vocab.setdefault(line.rstrip("\n"), number)
        self.lower_case, self.max_word_bytes = lower_case, max_word_bytes
        self.unk_id = self.vocab[unk_token]
        self.seq_length, self.truncation, self.head_tokens = seq_length, truncation, head_tokens
        self.cls_id, self.sep_id, self.pad_id = cls_id, sep_id, pad_id

    @classmethod
    def of_export(cls, export_dir=HERE):
        with open(os.path.join(export_dir, "tokenizer.json")) as f:
            settings = json.load(f)
        return cls(os.path.join(export_dir, "vocab.txt"), **settings)

    def words(self, text):
        """The basic tokenizer: text -> words and punctuation marks."""
        if self.lower_case:
            text = unicodedata.normalize("NFD", case_fold(text))
            text = "".join(char for char in text if unicodedata.category(char) != "Mn")
        words, word = [], []
        for char in text:
            if unicodedata.category(char) in ("Cc", "Cf") or char in WHITESPACE:
                split, keep = True, False
            else:
                split = keep = is_punctuation(char) or _in(CJK, char)
            if not split:
                word.append(char)
                continue
            if word:
                words.append("".join(word))
                word = []
            if keep:
                words.append(char)
        if word:
            words.append("".join(word))
        return words

    def wordpiece(self, word):
        """A word's ids, longest vocabulary piece first; [UNK] if it can't be covered or is too long."""
        if len(word.encode("utf-8")) > self.max_word_bytes:
            return [self.unk_id]
        ids, start = [], 0
        while start < len(word):
            for end in range(len(word), start, -1):
                piece = word[start:end] if start == 0 else "##" + word[start:end]
                if piece in self.vocab:
                    ids.append(self.vocab[piece])
                    start = end
                    break
            else:
                return [self.unk_id]
        return ids

    def pieces(self, text):
        """A text's word-piece ids, before truncation."""
        if isinstance(text, bytes):  # as the suite reads texts: invalid UTF-8 replaced, never an error
            text = text.decode("utf-8", errors="replace")
        text = text.encode("utf-8", errors="replace").decode("utf-8")
        return [piece for word in self.words(text) for piece in self.wordpiece(word)]

    def keep(self, pieces):
        """The word pieces a long text keeps: its head, its tail, or head_tokens of the head and the rest
        from the tail, within seq_length - 2 ([CLS] and [SEP])."""
        budget = self.seq_length - 2
        if self.truncation == "head":
            return pieces[:budget]
        if self.truncation == "tail":
            return pieces[max(len(pieces) - budget, 0):]
        head = min(len(pieces), self.head_tokens)
        tail = min(len(pieces) - head, budget - head)
        return pieces[:head] + pieces[len(pieces) - tail:]

    def __call__(self, texts):
        tokens = {key: [] for key in TOKEN_KEYS}
        for text in texts:
            packed = [self.cls_id] + self.keep(self.pieces(text)) + [self.sep_id]
            padding = self.seq_length - len(packed)
            tokens["input_word_ids"].append(packed + [self.pad_id] * padding)
            tokens["input_mask"].append([1] * len(packed) + [0] * padding)
            tokens["input_type_ids"].append([0] * self.seq_length)
        return tokens


def word_spans(text, pieces_split_words):
    """[start, end) offsets (in characters) of the words of text: separated by ASCII whitespace, and (where
    the tokenizer splits words itself, as BERT's does) each punctuation mark or CJK ideograph a word of its
    own. It splits nowhere the tokenizer does not (other spaces may or may not split, by casing), so each
    word's pieces, tokenized alone, are its pieces in the text."""
    spans, start = [], None
    for index, char in enumerate(text):
        if char in ASCII_WHITESPACE:
            if start is not None:
                spans.append([start, index])
            start = None
        elif pieces_split_words and _stands_alone(char):
            if start is not None:
                spans.append([start, index])
            spans.append([index, index + 1])
            start = None
        elif start is None:
            start = index
    if start is not None:
        spans.append([start, len(text)])
    return spans


def _stands_alone(char):
    """A word of its own in BERT's basic tokenizer: a punctuation mark or a CJK ideograph."""
    return is_punctuation(char) or _in(CJK, char)



def without(text, spans):
    """text with the words at spans ([start, end) pairs) deleted; a word between two others ("don't"'s
    apostrophe) leaves a space, so its neighbours stay the words they were ("don t", as BERT splits them)."""
    kept, last = [], 0
    for start, end in sorted(spans):
        joined = 0 < start and end < len(text) and text[start - 1] not in ASCII_WHITESPACE \
            and text[end] not in ASCII_WHITESPACE
        kept.append(text[last:start] + (" " if joined else ""))
        last = end
    return "".join(kept) + text[last:]


def words_of(text, count_pieces, total, split_options=(True, False)):
    """(spans, counts): text's words (word_spans, trying each of split_options) and how many word pieces
    each makes alone (count_pieces: words -> counts), for the first split whose counts add up to total,
    the text's own; (spans, None) if none does."""
    for split in split_options:
        spans = word_spans(text, split)
        counts = list(count_pieces([text[start:end] for start, end in spans]))
        if sum(counts) == total:
            return spans, counts
    return spans, None


def label_probability(task, probabilities, label):
    """The probability of label (an index) in one text's probabilities (binary: the positive label's score)."""
    if task == "binary":
        return float(probabilities) if label == 1 else 1 - float(probabilities)
    return float(probabilities[label])


def explained_label(task, probabilities, threshold=0.5):
    """The label a text's explanation is toward: the one given (binary, multi-class), or the most likely
    (multi-label)."""
    if task == "binary":
        return int(float(probabilities) >= threshold)
    return max(range(len(probabilities)), key=lambda i: probabilities[i])


def explain(text, label, tokenizer, score, task, batch_size=32):
    """Leave-one-word-out occlusion, as predict.py --explain runs it by default: (spans, weights, probability,
    note), each word's weight the fall in label's (an index) probability when that word alone is deleted
    from the text, None for a word the truncation leaves out of the model's window. score: token ids ->
    probabilities, as score_locally or score_on_server."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="replace")
    total = len(tokenizer.pieces(text))
    spans, counts = words_of(text, lambda words: [len(tokenizer.pieces(word)) for word in words], total)
    in_window = [False] * len(spans)
    if counts is not None:
        owner = [word for word, count in enumerate(counts) for _ in range(count)]
        for piece in tokenizer.keep(list(range(total))):
            in_window[owner[piece]] = True
    variants = [text] + [without(text, [span]) for span, seen in zip(spans, in_window) if seen]
    probabilities = []
    for start in range(0, len(variants), batch_size):
        probabilities += score(tokenizer(variants[start:start + batch_size]))
    falls = iter([label_probability(task, probabilities[0], label) - label_probability(task, p, label)
                  for p in probabilities[1:]])
    weights = [next(falls) if seen else None for seen in in_window]
    return spans, weights, label_probability(task, probabilities[0], label), "" if counts is not None else NO_WORDS


def rest_request(tokens):
    """TF Serving's REST predict body, one instance per text."""
    return {"signature_name": "serving_default",
            "instances": [dict(zip(TOKEN_KEYS, row)) for row in zip(*(tokens[key] for key in TOKEN_KEYS))]}


def score_locally(tokens, export_dir=HERE):
    """Probabilities from the export loaded in this process (needs tensorflow, not tensorflow-text)."""
    return local_scorer(export_dir)(tokens)


def local_scorer(export_dir=HERE):
    """tokens -> probabilities, by the export loaded once in this process: its model.tflite if it has one
    (a TFLite export), else its SavedModel."""
    if os.path.isfile(os.path.join(export_dir, TFLITE_FILE)):
        return tflite_scorer(os.path.join(export_dir, TFLITE_FILE))
    if platform.machine().lower() in ("x86_64", "amd64"):
        # TensorFlow's oneDNN kernels, which it turns on by itself only on some x86 CPUs, score faster on
        # any (as the suite that wrote this export runs); TF_ENABLE_ONEDNN_OPTS=0 keeps them off.
        os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
    import tensorflow as tf
    serve = tf.saved_model.load(export_dir).signatures["serving_default"]

    def score(tokens):
        outputs = serve(**{key: tf.constant(value, tf.int32) for key, value in tokens.items()})
        return outputs["probabilities"].numpy().tolist()
    return score


def tflite_scorer(path):
    """tokens -> probabilities by a TFLite export: LiteRT's interpreter (pip install ai-edge-litert) or,
    without it, TensorFlow's tf.lite; each batch trimmed to the smallest of the model's input widths
    (a signature each) that holds its longest text."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        import tensorflow as tf
        Interpreter = tf.lite.Interpreter  # noqa: N806 (a class)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    try:
        with warnings.catch_warnings():  # tf.lite's notice that LiteRT's package will replace it: either scores
            warnings.simplefilter("ignore")
            interpreter = Interpreter(model_path=path, num_threads=cores)
        runners = signature_runners(interpreter)
        if not runners:
            raise ValueError("it has no signature")
    except (ValueError, RuntimeError, KeyError) as error:  # not a .tflite, or not one export.py wrote
        first = (str(error).splitlines() or [type(error).__name__])[0][:200]
        raise ExportError(f"{path} cannot be read as this export's model ({first}); export the model "
                          "again with export.py --format tflite") from None

    def score(tokens):
        rows, width = fitted(tokens, runners)
        return runners[width](**rows)["probabilities"].tolist()
    return score


def fitted(tokens, widths):
    """(tokens as [texts, width] int32 arrays, width): cut or padded (with zeros, masked out) to the
    smallest of widths (the model's input widths) that holds the longest text; ValueError if none does."""
    import numpy as np
    rows = {key: np.asarray(value, dtype=np.int32).reshape(len(value), -1) for key, value in tokens.items()}
    longest = int(rows["input_mask"].sum(axis=1).max()) if len(rows["input_mask"]) else 1
    width = min((width for width in widths if width >= longest), default=None)
    if width is None:
        raise ValueError(f"texts of {longest} tokens are longer than the model's widest input ({max(widths)})")
    return {key: np.pad(value[:, :width], ((0, 0), (0, width - min(width, value.shape[1]))))
            for key, value in rows.items()}, width


def signature_runners(interpreter):
    """{width: signature runner} of a TFLite export, a signature per input width, read from each one's input
    shape (a model of one width has TFLite's one default signature name)."""
    runners = {}
    for key in interpreter.get_signature_list():
        runner = interpreter.get_signature_runner(key)
        runners[int(runner.get_input_details()["input_word_ids"]["shape_signature"][1])] = runner
    return runners


class ServerError(Exception):
    """TF Serving could not score: the message says why, in one line, and what to check."""


class ExportError(Exception):
    """The export's own files cannot be used: the message says which, in one line, and what to do."""


def score_on_server(tokens, url):
    """Probabilities from TF Serving at url (http://host:8501/v1/models/NAME); ServerError if it can't give them."""
    try:
        request = urllib.request.Request(url.rstrip("/") + ":predict", json.dumps(rest_request(tokens)).encode(),
                                         {"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=SERVER_TIMEOUT_S) as response:
            answer = json.load(response)
    except urllib.error.HTTPError as error:
        raise ServerError(f"the server at {url} answered HTTP {error.code} ({error.reason}): check that --server "
                          "names the model's URL (http://HOST:8501/v1/models/NAME) and that it serves this "
                          "export") from None
    except TimeoutError:
        raise ServerError(f"the server at {url} did not answer within {SERVER_TIMEOUT_S} s: check that it is up "
                          "and not overloaded") from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as error:
        reason = getattr(error, "reason", None) or str(error) or type(error).__name__
        raise ServerError(f"can't get an answer from the server at {url} ({reason}): start it, or fix --server") \
            from None
    except ValueError:
        raise ServerError(f"the server at {url} did not answer in JSON: check that --server is TF Serving's REST "
                          "URL (http://HOST:8501/v1/models/NAME)") from None
    predictions = answer.get("predictions") if isinstance(answer, dict) else None
    if not isinstance(predictions, list) or len(predictions) != len(tokens[TOKEN_KEYS[0]]):
        raise ServerError(f"the server at {url} answered without a prediction per text: check that --server is TF "
                          "Serving's REST URL for this export (http://HOST:8501/v1/models/NAME)")
    return [p["probabilities"] if isinstance(p, dict) else p for p in predictions]


def labelled(probabilities, task, names, threshold=0.5, top_k=1):
    """One text's result as predict.py --format jsonl gives it (after the text): binary: the positive
    (second) label's score, its name, and the label given; multi-class: the top label and its probability
    (and the top_k); multi-label: the labels at or over their threshold (one for all, or one per label),
    and each label's probability."""
    if task == "binary":
        score = float(probabilities)
        return {"score": round(score, 6), "positive_label": names[1], "label": names[int(score >= threshold)]}
    if task == "multiclass":
        ranked = sorted(range(len(names)), key=lambda i: -probabilities[i])[:top_k]  # stable, as predict.py
        top = [{"label": names[i], "probability": round(float(probabilities[i]), 6)} for i in ranked]
        result = {"label": top[0]["label"], "probability": top[0]["probability"]}
        return {**result, "top_k": top} if top_k > 1 else result
    limits = threshold if isinstance(threshold, (list, tuple)) else [threshold] * len(names)
    return {"labels": [name for name, p, limit in zip(names, probabilities, limits) if p >= limit],
            "probabilities": {name: round(float(p), 6) for name, p in zip(names, probabilities)}}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("texts", nargs="+")
    parser.add_argument("--export-dir", default=HERE, help="the export (default: this file's folder)")
    parser.add_argument("--request", action="store_true", help="print TF Serving's REST request and stop")
    parser.add_argument("--server", metavar="URL", help="score with TF Serving at URL instead of locally")
    parser.add_argument("--threshold", type=float, default=None,
                        help="binary: score at or above which a text gets the positive label; multi-label: "
                             "probability at or above which a label is given (default: the model's own, "
                             "in labels.json)")
    parser.add_argument("--top-k", type=int, default=1, metavar="K",
                        help="multi-class: also list the K most likely labels (default: 1)")
    parser.add_argument("--explain", action="store_true",
                        help="also give each word's weight toward the label (one model call per word)")
    parser.add_argument("--explain-label", metavar="NAME", help="with --explain: explain this label instead")
    args = parser.parse_args(argv)
    if args.top_k < 1:
        parser.error("--top-k must be 1 or more")
    missing = [name for name in ("tokenizer.json", "vocab.txt", "labels.json")
               if not os.path.isfile(os.path.join(args.export_dir, name))]
    if missing:
        sys.exit(f"error: {args.export_dir} is not an export ({', '.join(missing)} missing): give --export-dir "
                 "the folder export.py wrote")
    try:
        return scored(args, parser)
    except (ServerError, ExportError) as error:
        sys.exit(f"error: {error}")
    except ModuleNotFoundError as error:
        if error.name not in ("tensorflow", "numpy"):
            raise
        sys.exit(f"error: scoring locally needs {error.name} (pip install tensorflow; a TFLite export needs only "
                 "pip install ai-edge-litert), or score on TF Serving with --server URL")


def scored(args, parser):
    """main's work once its arguments are checked: the results it prints."""
    tokenizer = Tokenizer.of_export(args.export_dir)
    tokens = tokenizer(args.texts)
    if args.request:
        print(json.dumps(rest_request(tokens)))
        return None
    with open(os.path.join(args.export_dir, "labels.json")) as f:
        labels = json.load(f)
    task, names = labels["task"], labels["display_names"]
    chosen = None
    if args.explain_label is not None and not args.explain:
        parser.error("--explain-label says which label to explain; add --explain")
    if args.explain_label is not None:
        for known in (names, labels["label_names"]):
            if args.explain_label in known:
                chosen = known.index(args.explain_label)
                break
        else:
            parser.error(f"--explain-label {args.explain_label!r} is not one of this model's labels: "
                         f"{', '.join(names)}")
    score = (lambda rows: score_on_server(rows, args.server)) if args.server else local_scorer(args.export_dir)
    probabilities = score(tokens)
    threshold = args.threshold if args.threshold is not None else labels.get("threshold", 0.5)
    results = [{"text": text, **labelled(p, task, names, threshold, args.top_k)}
               for text, p in zip(args.texts, probabilities)]
    if args.explain:
        for result, text, p in zip(results, args.texts, probabilities):
            label = chosen if chosen is not None else explained_label(task, p, threshold)
            spans, weights, probability, note = explain(text, label, tokenizer, score, task)
            result.update(explained_label=names[label], words=[text[start:end] for start, end in spans],
                          offsets=spans, weights=[None if w is None else round(w, 6) for w in weights],
                          explained_probability=round(probability, 6), **({"note": note} if note else {}))
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(errors="replace")  # as predict.py: never fail on what the terminal can't show
    for result in results:
        print(json.dumps(result))
    return results


if __name__ == "__main__":
    main()
