"""The fused graph's attention as the suite's kernel (its float32 default) against TensorFlow's ops in chunks.

    python benchmarks/attention.py                      # 128 and 512 tokens, best of 2 rounds
    python benchmarks/attention.py --seq-lengths 512 --rounds 3

speed.py's protocol, evaluation only (512 test reviews from the raw texts, in batches of 128, through the
fused graph, after one training step so the model is the one train.py saves), in float32, in a process
whose fused graph runs each attention as model/kernels/fused_attention.cc and one whose fused graph
runs it as TensorFlow's ops a few texts at a time (model/attention_chunks.py, what runs without a
compiler and in bfloat16), the two taking turns to go first, each keeping its best. Each run must
have rewritten what its setting says, and both the same dense layers and layer normalizations.

Prints each run, then `attention seq=128 eval=1.11` (kernel / chunks); writes
benchmarks/results/attention.json after every run.
"""
import common

# Both keep every weight constant, so the two differ in attention alone (benchmarks/gelu_weights.py measures
# holding the weights before GELU).
SETTINGS = {"kernel": ({"attention_kernel": True, "gelu_weights_held": False, "train_steps": 1}, {}),
            "chunks": ({"attention_kernel": False, "gelu_weights_held": False, "train_steps": 1}, {})}
FIGURES = ("eval_reviews_per_s",)


def check(setting, figures, first):
    fused = figures["fused"]
    kernels = fused["attention_kernels"]
    if (kernels > 0, fused["attentions_in_chunks"] > 0) != (setting == "kernel", setting == "chunks"):
        return f"rewrote {kernels} attentions as the kernel and {fused['attentions_in_chunks']} in chunks: " \
               "its figures would not be its setting's"
    return common.same_fusion(figures, first, ("dense_layers", "layer_norms"))


def main(argv=None):
    return common.compare_settings("attention", SETTINGS, check, argv, __doc__.splitlines()[0], seq_lengths=(128, 512),
                                   figures=FIGURES)


if __name__ == "__main__":
    main()
