"""Export a saved classifier for runtimes without TF Text (stock TF Serving, TF.js, ...).

    python export.py --model-dir models/imdb_bert --out exports/imdb_bert_core --format core-ops
    python export.py --model-dir models/imdb_bert --out exports/imdb_bert_lite --format tflite --quantize int8

core-ops: a SavedModel whose graph uses only core TensorFlow ops, taking token ids (input_word_ids,
input_mask, input_type_ids) and returning probabilities, with vocab.txt, tokenizer.json (how the
model tokenizes, checked on probe texts), labels.json/labels.txt (the names predict.py prints) and
client_example.py, which tokenizes the same way in plain Python (no TF Text) and scores locally or
through TF Serving's REST API. tflite: the same graph as model.tflite (float32, or int8 or float16
weights with --quantize), with the same files; the client scores it with TFLite's interpreter.
--out must be a new or empty folder (an empty one keeps its mode and group; not a mount point); nothing
else is touched.
"""
import argparse

import config
from tfhub_classifier import cli

FORMATS = ("core-ops", "tflite")


def parse(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, metavar="DIR",
                        help="the new (or empty) folder to write the export to (refused if it holds anything)")
    parser.add_argument("--format", choices=FORMATS, default="core-ops",
                        help="core-ops: token ids in, probabilities out, no TF Text ops; tflite: the same graph "
                             "as model.tflite for TFLite/LiteRT (default: core-ops)")
    parser.add_argument("--quantize", choices=config.QUANTIZATIONS, default=None,
                        help="tflite: none = float32 weights; int8 = int8 weights (dynamic range), a quarter "
                             "of the size, a little off, its speed against float32 depending on the CPU "
                             "(docs/benchmarks.md#tflite); float16 = float16 weights, half the size (default: none)")
    config.add_flags(parser, config.EXPORT)
    return parser.parse_args(argv)


def main(argv=None):
    args = parse(argv)
    if args.quantize not in (None, "none") and args.format != "tflite":
        raise ValueError("--quantize applies to --format tflite; add --format tflite, or drop --quantize")
    model_dir = cli.require_model_dir(args.model_dir or config.Config.model_dir)
    from tfhub_classifier.export import core_ops  # TensorFlow loads only once the flags are known to be good
    return core_ops.export_core_ops(model_dir, args.out, export_format=args.format, quantize=args.quantize or "none")


if __name__ == "__main__":
    cli.exit_with(main)
