"""Score a saved classifier on the IMDB test split: metrics, plots, and its worst mistakes.

    python evaluate.py --model-dir models/imdb_bert --show-errors 5
"""
import argparse
import sys

import config
from tfhub_classifier import cli

MEMORY_FLAGS = "--batch-size"  # named by cli.run when memory runs out; the model fixes the sequence length


def parse(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    config.add_flags(parser, config.EVALUATE)
    return parser.parse_args(argv)


def main(argv=None):
    args = parse(argv)
    cli.require_model_dir(args.model_dir or config.Config.model_dir)
    from tfhub_classifier.inference import evaluation, prediction  # TensorFlow loads once the flags are good
    cfg = evaluation.evaluation_config(args)
    metrics = evaluation.evaluate(cfg)
    print("\n".join(evaluation.format_metrics(metrics, colour=prediction.is_terminal(sys.stdout))))
    return metrics


if __name__ == "__main__":
    cli.exit_with(main)
