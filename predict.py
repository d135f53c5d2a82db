"""Label texts with a saved classifier: the label(s) given to each, with their probabilities.

    python predict.py --model-dir models/imdb_bert "The movie was great!" "The movie was terrible..."
    python predict.py --file reviews.txt --format jsonl > scores.jsonl
    python predict.py --file tickets.csv --text-column body --keep-columns id,date --format csv > labelled.csv
    python predict.py --explain "The movie was great!"    # and the words that drove each label
    cat reviews.txt | python predict.py --format csv

A .csv, .tsv or .jsonl --file is read as train.py reads data (the model's recorded --text-column,
--encoding, ... unless given); any other file and standard input hold one text a line. Results are
written as each window of texts is scored, so memory does not grow with the file.
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
    parser.add_argument("--file", metavar="PATH", help="score each row of a .csv, .tsv or .jsonl PATH, or each "
                                                       "line of any other ('-' = standard input)")
    parser.add_argument("--format", choices=config.OUTPUT_FORMATS, default="table",
                        help="table (aligned, as the tutorial prints), jsonl or csv (default: table)")
    config.add_flags(parser, config.PREDICT)
    return parser.parse_args(argv)


def _reading_as_trained(args, cfg, jsonl):
    """cfg for reading a table --file: the model's recorded reading settings where no flag is given, said
    on stderr so a file laid out otherwise is understood; JSON Lines name their fields (no --no-header)."""
    import dataclasses
    if jsonl and args.no_header is None:
        cfg = dataclasses.replace(cfg, no_header=False)
    inherited = [name for name in ("text_column", "no_header", "encoding", "delimiter", "quoting")
                 if getattr(args, name) is None and getattr(cfg, name) != getattr(config.Config, name)]
    if inherited:
        shown = " ".join(f"--{config.flag_name(name, config.PREDICT)}" + ("" if isinstance(getattr(cfg, name), bool)
                                                                         else f" {getattr(cfg, name)!r}")
                         for name in inherited)
        print(f"Reading {args.file} as the model's training data was read: {shown} (give flags to read it "
              "otherwise)", file=sys.stderr)
    return cfg


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
    model_dir = cli.require_model_dir(args.model_dir or config.Config.model_dir)
    cfg = config.from_args(args, config.recorded_defaults(cli.read_run_record(model_dir)), script=config.PREDICT)
    from tfhub_classifier.data import table_files
    tabular = bool(args.file) and table_files.is_table(args.file)
    given = [name for name in ("text_column", "keep_columns", "no_header", "encoding", "delimiter", "quoting")
             if getattr(args, name) is not None]
    if given and not tabular:
        raise ValueError(f"--{config.flag_name(given[0], config.PREDICT)} is for a .csv, .tsv or .jsonl --file; "
                         "texts given as arguments, in other files or on standard input are one a line")
    if args.keep_columns and args.format == "table":
        raise ValueError("--keep-columns copies columns into JSON Lines or CSV results; add --format jsonl or "
                         "--format csv")
    if (args.explain_label or args.explain_method) and not args.explain:
        raise ValueError("--explain-label and --explain-method say how to explain; add --explain")
    if args.explain and args.format == "csv":
        raise ValueError("--explain gives each text a list of words and weights; use --format jsonl (or table)")
    if tabular:
        cfg = _reading_as_trained(args, cfg, table_files.is_jsonl(args.file))
    from tfhub_classifier.inference import prediction  # TensorFlow loads only once the flags are known to be good
    return prediction.run(cfg, args.sentences, args.file, args.format)

if __name__ == "__main__":
    cli.exit_with(main)
