"""Training and evaluation with TensorFlow's inter-op thread pool at one thread against its default.

    python benchmarks/threads.py                      # 128 tokens, float32, best of 2 rounds
    python benchmarks/threads.py --seq-lengths 128 512 --rounds 3

TensorFlow runs independent ops of a step side by side on its inter-op pool (by default one thread per
core), and each op splits its own work over the intra-op pool (also one thread per core). On a few
cores two large ops at once share the same cores, so running them one after the other, each on every
core, may be faster. This measures it: speed.py's protocol (8 training steps of batch 32 after a
warm-up epoch, 512 test reviews through the fused graph from the raw texts) in float32, in a process
whose inter-op pool has one thread and one with TensorFlow's default, the two taking turns to go first
over --rounds rounds, each keeping its best.

Prints each run, then `threads seq=128 train=1.05 eval=1.00` (one inter-op thread / the default);
writes benchmarks/results/threads.json after every run.
"""
import common

SETTINGS = {"one": ({"inter_op_threads": 1}, {}), "default": ({}, {})}


def check(setting, figures, first):
    wanted = 1 if setting == "one" else 0  # 0: TensorFlow's own choice
    if figures["inter_op_threads"] != wanted:
        return f"ran with {figures['inter_op_threads']} inter-op threads: its figures would not be its setting's"
    return None


def main(argv=None):
    return common.compare_settings("threads", SETTINGS, check, argv, __doc__.splitlines()[0])


if __name__ == "__main__":
    main()
