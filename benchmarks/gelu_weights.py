"""The fused graph's dense layers before GELU with their weights held (PlaceholderWithDefault) against
constant weights.

    python benchmarks/gelu_weights.py                   # 128 and 512 tokens, best of 2 rounds
    python benchmarks/gelu_weights.py --seq-lengths 128 --rounds 3

speed.py's protocol, evaluation only (512 test reviews from the raw texts, in batches of 128, through the
fused graph, after one training step so the model is the one train.py saves), in float32, in a process
whose fused graph holds those weights, which oneDNN then multiplies with its gemm kernel, and one whose
weights stay constants, which it multiplies with brgemm (model/fusion.py), the two taking turns to go
first, each keeping its best. Each run must have held what its setting says, and both fused the same
layers and attentions.

Prints each run, then `gelu_weights seq=128 eval=1.06` (held / constant); writes
benchmarks/results/gelu_weights.json after every run.
"""
import common

SETTINGS = {"held": ({"gelu_weights_held": True, "train_steps": 1}, {}),
            "constant": ({"gelu_weights_held": False, "train_steps": 1}, {})}
FIGURES = ("eval_reviews_per_s",)
SAME = ("dense_layers", "layer_norms", "attention_kernels", "attentions_in_chunks")


def check(setting, figures, first):
    fused, kept = figures["fused"], first["fused"]
    if (fused["gelu_weights_held"] > 0) != (setting == "held"):
        return f"held the weights of {fused['gelu_weights_held']} dense layers: its figures would not be its setting's"
    if any(fused[key] != kept[key] for key in SAME):
        return f"fused {fused}, {first['name']} {kept}: the two would not score the same layers"
    return None


def main(argv=None):
    return common.compare_settings("gelu_weights", SETTINGS, check, argv, __doc__.splitlines()[0],
                                   seq_lengths=(128, 512), figures=FIGURES)


if __name__ == "__main__":
    main()
