"""Training with the suite's AdamW (each variable's step as TensorFlow's fused Adam kernel) against
tf-keras' own AdamW (about ten element-wise ops per variable).

    python benchmarks/optimizer.py                      # 128 tokens, batches of 4, best of 2 rounds
    python benchmarks/optimizer.py --batch-size 32 --rounds 3

speed.py's protocol, training only (the `official` recipe's AdamW with decay and clipping at global norm
1; a warm-up epoch, then an epoch of 256 reviews timed), in float32, in a process that trains with
training/optimization.AdamW and one that trains with keras.optimizers.AdamW, the two taking turns to go
first, each keeping its best. An update's cost doesn't depend on the batch, so its share of a step is
largest at small batches: 4 is the `tutorial` recipe's batch size, 32 the other recipes'. Each run must
have trained with its setting's optimizer and batch size.

Prints each run, then `optimizer seq=128 train=1.03` (the suite's / tf-keras'); writes
benchmarks/results/optimizer.json after every run.
"""
import common

REVIEWS = 256  # the timed epoch's
FIGURES = ("train_reviews_per_s",)


def add_arguments(parser):
    parser.add_argument("--batch-size", type=int, default=4,
                        help=f"reviews per training step, a divisor of {REVIEWS} (default 4, the tutorial recipe's)")


def settings(parser, args):
    if args.batch_size < 1 or REVIEWS % args.batch_size:
        parser.error(f"--batch-size must divide {REVIEWS}, so that each epoch times {REVIEWS} reviews")
    run = {"batch_size": args.batch_size, "train_steps": REVIEWS // args.batch_size, "eval_reviews": 64,
           "predict": False}
    return {"suite": (dict(run, optimizer_kernels=True), {}), "tf-keras": (dict(run, optimizer_kernels=False), {})}


def check(setting, figures, first):
    if figures["optimizer"] != setting:
        return f"trained with {figures['optimizer']}'s AdamW: its figures would not be its setting's"
    if figures["batch_size"] != first["batch_size"]:
        return f"trained in batches of {figures['batch_size']}, {first['name']} of {first['batch_size']}"
    return None


def main(argv=None):
    return common.compare_settings("optimizer", settings, check, argv, __doc__.split("\n\n")[0].replace("\n", " "),
                                   figures=FIGURES, add_arguments=add_arguments)


if __name__ == "__main__":
    main()
