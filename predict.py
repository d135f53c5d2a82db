"""Label texts with a saved classifier: the label(s) given to each, with their probabilities.

    python predict.py --model-dir models/imdb_bert "The movie was great!" "The movie was terrible..."
    python predict.py --file reviews.txt --format jsonl > scores.jsonl
    cat reviews.txt | python predict.py --format csv
"""
import argparse
import sys

import config
from tfhub_classifier import cli

MEMORY_FLAGS = "--batch-size"  # named by cli.run when memory runs out; the model fixes the sequence length


def parse(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sentences", nargs="*", help="texts to label; none = read --file or standard input")
    parser.add_argument("--file", metavar="PATH", help="score each line of PATH ('-' = standard input)")
    parser.add_argument("--format", choices=config.OUTPUT_FORMATS, default="table",
                        help="table (aligned, as the tutorial prints), jsonl or csv (default: table)")
    config.add_flags(parser, config.PREDICT)
    return parser.parse_args(argv)


def stdin_is_terminal():
    """True when nothing is piped in, so reading standard input would wait for typing."""
    return sys.stdin is None or sys.stdin.isatty()


def main(argv=None):
    args = parse(argv)
    if args.sentences and args.file:
        raise ValueError("give texts as arguments or with --file, not both")
    if not args.sentences and not args.file and stdin_is_terminal():
        raise ValueError("no texts to label: give them as arguments (python predict.py \"Great film!\"), "
                         "with --file PATH (one a line), or pipe them in (cat reviews.txt | python predict.py)")
    cfg = config.from_args(args, script=config.PREDICT)
    cli.require_model_dir(args.model_dir or config.Config.model_dir)
    from tfhub_classifier.inference import prediction  # TensorFlow loads only once the flags are known to be good
    from tfhub_classifier.model import saving  # TensorFlow loads only once the flags are known to be good
    model, record, _ = saving.load_model(cfg.model_dir, cfg.precision)
    task = saving.task_of_record(record)
    prediction.check_top_k(task, cfg.top_k)
    texts = args.sentences or prediction.read_lines(args.file or "-")
    threshold = saving.threshold_in_use(cfg.threshold, record)
    writer = prediction.Writer(args.format, task, threshold, cfg.top_k, prediction.stdout_text())
    results = []
    for text, probabilities in prediction.predict(model, task, texts, cfg.eval_batch_size,
                                                 progress=bool(args.file)):
        writer.write(text, probabilities)
        results.append(float(probabilities) if task.kind == "binary" else probabilities.tolist())
    return results


if __name__ == "__main__":
    sys.exit(cli.run(main))
