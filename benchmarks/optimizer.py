"""Training with the suite's AdamW (each variable's step as TensorFlow's fused Adam and decay kernels) against
tf-keras' own AdamW (about a dozen element-wise ops per variable).

    python benchmarks/optimizer.py                      # 128 tokens, best of 2 rounds
    python benchmarks/optimizer.py --seq-lengths 128 512 --rounds 2

speed.py's protocol, training only (8 steps of batch 32 after a warm-up epoch of 8, the `official`
recipe: AdamW with decay and clipping at global norm 1), in float32, in a process that trains with
training/optimization.AdamW and one that trains with keras.optimizers.AdamW, the two taking turns to
go first, each keeping its best. Each run must have used its setting's optimizer.

Prints each run, then `optimizer seq=128 train=1.03` (the suite's / tf-keras'); writes
benchmarks/results/optimizer.json after every run.
"""
import common

SETTINGS = {"kernels": ({"optimizer_kernels": True, "eval_reviews": 64, "predict": False}, {}),
            "tf-keras": ({"optimizer_kernels": False, "eval_reviews": 64, "predict": False}, {})}
OPTIMIZERS = {"kernels": "tfhub_classifier.training.optimization.AdamW",
              "tf-keras": "tf_keras.src.optimizers.adamw.AdamW"}
FIGURES = ("train_reviews_per_s",)


def check(setting, figures, first):
    if figures["optimizer"] != OPTIMIZERS[setting]:
        return f"trained with {figures['optimizer']}: its figures would not be its setting's"
    return None


def main(argv=None):
    return common.compare_settings("optimizer", SETTINGS, check, argv, __doc__.splitlines()[0], figures=FIGURES)


if __name__ == "__main__":
    main()
