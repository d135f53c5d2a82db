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
import argparse
import importlib.metadata

import common

SETTINGS = {"on": ({}, {"TF_ENABLE_ONEDNN_OPTS": "1"}), "off": ({}, {"TF_ENABLE_ONEDNN_OPTS": "0"})}


def check(setting, figures, first):
    if figures["onednn"] != (setting == "on"):
        return f"ran with oneDNN {'on' if figures['onednn'] else 'off'}: its figures would not be its setting's"
    if figures["fused"] != first["fused"]:
        return f"fused {figures['fused']}, {first['name']} {first['fused']}: the two would not score the same graph"
    return None


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seq-lengths", type=int, nargs="+", default=[128])
    parser.add_argument("--rounds", type=int, default=2, help="runs of each setting, taking turns (default 2)")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    common.real_data_flags()  # build MiniLM and check the data before the children start
    flags = common.cpu_flags()
    print(common.machine_header(flags), flush=True)
    record = {"machine": common.machine(), "cpu_flags": flags, "tensorflow": importlib.metadata.version("tensorflow"),
              "rounds": args.rounds, "runs": []}
    best = common.take_turns("onednn", SETTINGS, args.seq_lengths, args.rounds, record, check)
    ratios = {}
    for seq in args.seq_lengths:
        on, off = best[(seq, "on")], best[(seq, "off")]
        ratios[seq] = {figure.split("_")[0]: on[figure] / off[figure] for figure in common.TURN_FIGURES}
        print(f"onednn seq={seq} " + " ".join(f"{name}={ratio:.2f}" for name, ratio in ratios[seq].items()),
              flush=True)
    record.update(best={f"{setting}@{seq}": figures for (seq, setting), figures in best.items()}, ratios=ratios)
    path = common.save_result("onednn", record)
    print(f"Results: {path}")
    return ratios


if __name__ == "__main__":
    main()
