"""Fine-tune a TF-Hub BERT to classify texts (IMDB reviews by default), then test, save and reload it.

    python train.py                       # the best recipe on the whole dataset
    python train.py --recipe tutorial     # the seed tutorial, exactly
    python train.py --max-examples 500 --epochs 1   # a quick run
"""
import argparse

import config
from tfhub_classifier import cli

MEMORY_FLAGS = cli.TRAINING_MEMORY_FLAGS  # named by cli.run when memory runs out


def parse(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--list-models", action="store_true",
                        help="print every known --bert-model with its encoder and preprocessor, and exit")
    config.add_flags(parser, config.TRAIN)
    return parser.parse_args(argv)


def list_models():
    lines = []
    for name, encoder in config.BERT_ENCODERS.items():
        lines += [name, f"  encoder:      {encoder}", f"  preprocessor: {config.BERT_PREPROCESSORS[name]}"]
    return lines


def main(argv=None):
    args = parse(argv)
    if args.list_models:
        print("\n".join(list_models()))
        return config.BERT_ENCODERS
    cfg = config.from_args(args, script=config.TRAIN).validate_training_data()
    from tfhub_classifier.training import trainer  # TensorFlow loads only once the flags are known to be good
    return trainer.run(cfg)


if __name__ == "__main__":
    cli.exit_with(main)
