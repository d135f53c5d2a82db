"""The fused graph's dense layers before GELU with their weights held (PlaceholderWithDefault) against
constant weights.

    python benchmarks/gelu_weights.py                   # 128 and 512 tokens, best of 2 rounds
    python benchmarks/gelu_weights.py --seq-lengths 128 --rounds 3

speed.py's protocol in float32, after one training step so the model is the one train.py saves:
evaluation (512 test reviews from the raw texts, in batches of 128, through the fused graph) and the
fused graph's latency for one review a call (the median of 50 calls), in a process whose fused graph
holds those weights, which oneDNN then multiplies with its gemm kernel, and one whose weights stay
constants, which it multiplies with brgemm (model/fusion.py), the two taking turns to go first, each
keeping its best. Each run must have held the weights of every GELU's layer or of none, as its setting
says, and both must have fused the same layers and attentions.

Prints each run, then `gelu_weights seq=128 eval=1.07 latency=0.93` (held / constant: above 1 for eval,
below 1 for latency, means held is faster); writes benchmarks/results/gelu_weights.json after every run.
"""
import common

SETTINGS = {"held": ({"gelu_weights_held": True, "train_steps": 1, "predict": True}, {}),
            "constant": ({"gelu_weights_held": False, "train_steps": 1, "predict": True}, {})}
FIGURES = ("eval_reviews_per_s", "predict_latency_ms")
SAME = ("dense_layers", "gelus", "layer_norms", "attention_kernels", "attentions_in_chunks")


def check(setting, figures, first):
    fused = figures["fused"]
    if fused["gelu_weights_held"] != (fused["gelus"] if setting == "held" else 0):
        return f"held the weights of {fused['gelu_weights_held']} of {fused['gelus']} GELUs' dense layers: " \
               "its figures would not be its setting's"
    return common.same_fusion(figures, first, SAME)


def main(argv=None):
    return common.compare_settings("gelu_weights", SETTINGS, check, argv, __doc__.splitlines()[0],
                                   seq_lengths=(128, 512), figures=FIGURES)


if __name__ == "__main__":
    main()
