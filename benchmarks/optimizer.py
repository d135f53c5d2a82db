"""Training with the suite's AdamW (each variable's step as TensorFlow's fused Adam kernel and one multiply)
against tf-keras' own AdamW (about ten element-wise ops per variable).

    python benchmarks/optimizer.py                      # 128 tokens, batches of 4, best of 2 rounds
    python benchmarks/optimizer.py --batch-size 32 --rounds 3

speed.py's protocol, training only (the `official` recipe's AdamW with decay and clipping at global norm
1, a warm-up epoch, then an epoch of 256 reviews timed), in float32, in a process that trains with
training/optimization.AdamW and one that trains with keras.optimizers.AdamW, the two taking turns to go
first, each keeping its best. The update's cost doesn't depend on the batch, so its share of a step is
largest at small batches: --batch-size 4 is the `tutorial` recipe's, 32 the others'. Each run must have
used its setting's optimizer.

Prints each run, then `optimizer seq=128 train=1.03` (the suite's / tf-keras'); writes
benchmarks/results/optimizer.json after every run.
"""
import argparse

import common

REVIEWS = 256  # the timed epoch's
OPTIMIZERS = {"kernels": "tfhub_classifier.training.optimization.AdamW",
              "tf-keras": "tf_keras.src.optimizers.adamw.AdamW"}
FIGURES = ("train_reviews_per_s",)


def check(setting, figures, first):
    if figures["optimizer"] != OPTIMIZERS[setting]:
        return f"trained with {figures['optimizer']}: its figures would not be its setting's"
    return None


def main(argv=None):
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--batch-size", type=int, default=4)
    args, rest = parser.parse_known_args(argv)
    if not 1 <= args.batch_size <= REVIEWS:
        parser.error(f"--batch-size must be 1 to {REVIEWS}")
    run = {"batch_size": args.batch_size, "train_steps": REVIEWS // args.batch_size, "eval_reviews": 64,
           "predict": False}
    settings = {"kernels": (dict(run, optimizer_kernels=True), {}),
                "tf-keras": (dict(run, optimizer_kernels=False), {})}
    print(f"batches of {args.batch_size}", flush=True)
    return common.compare_settings("optimizer", settings, check, rest, __doc__.splitlines()[0], figures=FIGURES)


if __name__ == "__main__":
    main()
