"""Our pipeline with TensorFlow's oneDNN kernels (the suite's default on x86 CPUs) against without them.

    python benchmarks/onednn.py                      # 128 tokens, float32, best of 2 rounds
    python benchmarks/onednn.py --seq-lengths 128 512 --rounds 3

TensorFlow turns oneDNN on by itself only on some x86 CPUs (AVX512-VNNI, AVX512-BF16, AVX-VNNI or AMX);
the suite sets TF_ENABLE_ONEDNN_OPTS=1 before TensorFlow loads, so AVX2 CPUs run oneDNN's kernels too
(and grappler's oneDNN fusions of the fused graph). This measures what that buys: speed.py's protocol
(8 training steps of batch 32 after a warm-up epoch, 512 test reviews through the fused graph from
the raw texts) in float32, in a process with TF_ENABLE_ONEDNN_OPTS=1 and one with
TF_ENABLE_ONEDNN_OPTS=0, the two taking turns to go first over --rounds rounds, each keeping its best.
On a CPU where TensorFlow turns oneDNN on itself, the rows differ only by TF_ENABLE_ONEDNN_OPTS=0
turning it off.

Prints each run, then `onednn seq=128 train=1.25 eval=1.17` (oneDNN on / off); writes
benchmarks/results/onednn.json after every run.
"""
import common

# Both keep every weight constant: held weights before GELU (model/fusion.py) are oneDNN's alone to use.
SETTINGS = {"on": ({"gelu_weights_held": False}, {"TF_ENABLE_ONEDNN_OPTS": "1"}),
            "off": ({"gelu_weights_held": False}, {"TF_ENABLE_ONEDNN_OPTS": "0"})}


def check(setting, figures, first):
    if figures["onednn"] != (setting == "on"):
        return f"ran with oneDNN {'on' if figures['onednn'] else 'off'}: its figures would not be its setting's"
    if figures["fused"] != first["fused"]:
        return f"fused {figures['fused']}, {first['name']} {first['fused']}: the two would not score the same graph"
    return None


def main(argv=None):
    return common.compare_settings("onednn", SETTINGS, check, argv, __doc__.splitlines()[0])


if __name__ == "__main__":
    main()
