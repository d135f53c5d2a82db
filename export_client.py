"""Score texts with a core-ops export of a BERT classifier (written by export.py as client_example.py).

The export takes token ids, so the client tokenizes: with the export's vocab.txt and the settings in
tokenizer.json it reproduces the classifier's own preprocessing (WordPiece, lower-casing, [CLS] and
[SEP], and the same truncation of long texts), then scores locally or asks TF Serving.

    pip install tensorflow tensorflow-text   # the tokenizer; the export itself needs no TF Text
    python client_example.py "The movie was great!" "The movie was terrible..."
    python client_example.py --request "The movie was great!" > request.json   # TF Serving's REST body
    curl -d @request.json http://localhost:8501/v1/models/bert_classifier:predict
    python client_example.py --server http://localhost:8501/v1/models/bert_classifier "The movie was great!"
"""
import argparse
import json
import os
import urllib.request

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
TOKEN_KEYS = ("input_word_ids", "input_mask", "input_type_ids")


class Tokenizer:
    """Texts -> the export's inputs: int32 arrays of [texts, seq_length], as the classifier makes them."""

    def __init__(self, vocab_file, lower_case, seq_length, truncation, head_tokens, cls_id, sep_id, pad_id=0):
        import tensorflow as tf
        import tensorflow_text  # any WordPiece tokenizer with this vocabulary and casing would do
        self.tf = tf
        self.tokenizer = tensorflow_text.BertTokenizer(vocab_file, lower_case=lower_case, token_out_type=tf.int32)
        self.seq_length, self.truncation, self.head_tokens = seq_length, truncation, head_tokens
        self.cls_id, self.sep_id, self.pad_id = cls_id, sep_id, pad_id

    @classmethod
    def of_export(cls, export_dir=HERE):
        with open(os.path.join(export_dir, "tokenizer.json")) as f:
            settings = json.load(f)
        return cls(os.path.join(export_dir, "vocab.txt"), settings["lower_case"], settings["seq_length"],
                   settings["truncation"], settings["head_tokens"], settings["cls_id"], settings["sep_id"],
                   settings["pad_id"])

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
        encoded = [t.encode("utf-8", errors="replace") if isinstance(t, str) else t for t in texts]
        pieces = self.tokenizer.tokenize(self.tf.constant(encoded, self.tf.string)).merge_dims(-2, -1).to_list()
        ids = np.full((len(texts), self.seq_length), self.pad_id, dtype=np.int32)
        mask = np.zeros((len(texts), self.seq_length), dtype=np.int32)
        for row, text_pieces in enumerate(pieces):
            packed = [self.cls_id] + self.keep(text_pieces) + [self.sep_id]
            ids[row, :len(packed)] = packed
            mask[row, :len(packed)] = 1
        return {"input_word_ids": ids, "input_mask": mask, "input_type_ids": np.zeros_like(ids)}


def rest_request(tokens):
    """TF Serving's REST predict body, one instance per text."""
    count = len(tokens["input_word_ids"])
    return {"signature_name": "serving_default",
            "instances": [{key: tokens[key][i].tolist() for key in TOKEN_KEYS} for i in range(count)]}


def score_locally(tokens, export_dir=HERE):
    """Probabilities from the export loaded in this process."""
    import tensorflow as tf
    serve = tf.saved_model.load(export_dir).signatures["serving_default"]
    return serve(**{key: tf.constant(value) for key, value in tokens.items()})["probabilities"].numpy()


def score_on_server(tokens, url):
    """Probabilities from TF Serving at url (http://host:8501/v1/models/NAME)."""
    request = urllib.request.Request(url.rstrip("/") + ":predict", json.dumps(rest_request(tokens)).encode(),
                                     {"Content-Type": "application/json"})
    with urllib.request.urlopen(request) as response:
        predictions = json.load(response)["predictions"]
    return np.array([p["probabilities"] if isinstance(p, dict) else p for p in predictions])


def labelled(probabilities, task, names, threshold=0.5):
    """What the scores say, as predict.py says it: binary: the second label's score; otherwise each label's."""
    if task == "binary":
        return {"score": round(float(probabilities), 6), "label": names[int(probabilities >= threshold)]}
    scores = {name: round(float(p), 6) for name, p in zip(names, probabilities)}
    best = [names[int(np.argmax(probabilities))]] if task == "multiclass" else [
        name for name, p in zip(names, probabilities) if p >= threshold]
    return {"labels": best, "probabilities": scores}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("texts", nargs="+")
    parser.add_argument("--export-dir", default=HERE, help="the export (default: this file's folder)")
    parser.add_argument("--request", action="store_true", help="print TF Serving's REST request and stop")
    parser.add_argument("--server", metavar="URL", help="score with TF Serving at URL instead of locally")
    args = parser.parse_args(argv)
    tokens = Tokenizer.of_export(args.export_dir)(args.texts)
    if args.request:
        print(json.dumps(rest_request(tokens)))
        return None
    probabilities = score_on_server(tokens, args.server) if args.server else score_locally(tokens, args.export_dir)
    with open(os.path.join(args.export_dir, "labels.json")) as f:
        labels = json.load(f)
    results = [{"text": text, **labelled(p, labels["task"], labels["label_names"])}
               for text, p in zip(args.texts, probabilities)]
    for result in results:
        print(json.dumps(result))
    return results


if __name__ == "__main__":
    main()
