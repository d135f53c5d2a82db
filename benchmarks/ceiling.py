"""The fastest the peer comparison's evaluation could run on this CPU if only the encoder's dense layers took time.

    python benchmarks/ceiling.py                     # 128 and 512 tokens; float32, and bfloat16 where the CPU has it
    python benchmarks/ceiling.py --seq-lengths 128

benchmarks/peer.py evaluates EVAL_REVIEWS test reviews (speed.py's protocol) in length-sorted batches of
128, each padded to its longest. This counts the arithmetic of that evaluation, from the reviews' token
counts (the MiniLM checkpoint's own tokenizer) and the checkpoint's shape (its config.json), and times
TensorFlow's matrix multiply (oneDNN's kernels, as the fused graph runs them) on the dense layers' own
shapes. The ceiling is the reviews/s of an engine whose dense layers ran at that speed on batches
padded as peer.py's are, while nothing else (attention, softmax, normalization, tokenization) took
any time: no engine padding so and multiplying with these kernels evaluates faster. Dividing a
peer.py figure by it says how much of that ceiling each side reaches.

Prints, per sequence length, the arithmetic a review takes, and per precision a line
`ceiling seq=128 precision=float32 dense_gflops=373 reviews_per_s=137.2`.
"""
import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the suite's root
import common  # noqa: E402
import peer  # noqa: E402
import speed  # noqa: E402

from tfhub_classifier import hardware  # noqa: E402

EVAL_BATCH = 128  # peer.py's (and speed.py's) evaluation batch


def eval_lengths(seq_length):
    """The token counts of peer.py's evaluation reviews (special tokens included), each cut at seq_length."""
    import config
    from tfhub_classifier.data import imdb
    cfg = config.resolve(recipe="official", seq_length=seq_length, pipeline="fast", precision="float32",
                         truncation="head", **common.real_data_flags())
    _, _, test = imdb.load_splits(cfg, caps=(speed.TRAIN_STEPS * cfg.batch_size, 1, speed.EVAL_REVIEWS))
    from tokenizers import Tokenizer
    tokenizer = Tokenizer.from_file(os.path.join(peer.minilm_hf(), "tokenizer.json"))
    tokenizer.no_truncation()
    tokenizer.no_padding()  # the checkpoint's tokenizer.json pads to 128
    lengths = [len(encoding.ids) for encoding in tokenizer.encode_batch(list(test.texts[:speed.EVAL_REVIEWS]))]
    return np.minimum(np.array(lengths), seq_length)


def arithmetic(lengths, shape):
    """(floating-point operations of the dense layers, of the attention products) over length-sorted batches."""
    width, inner, layers = shape["hidden_size"], shape["intermediate_size"], shape["num_hidden_layers"]
    dense = attention = 0
    ordered = np.sort(lengths)
    for start in range(0, len(ordered), EVAL_BATCH):
        rows, padded = len(ordered[start:start + EVAL_BATCH]), int(ordered[start:start + EVAL_BATCH].max())
        dense += layers * rows * padded * 2 * (4 * width * width + 2 * width * inner)  # q, k, v, output; two FFN
        attention += layers * rows * 2 * 2 * padded * padded * width  # queries x keys, scores x values
    return dense, attention


def dense_rate(shape, precision, rows):
    """Floating-point operations a second of TensorFlow's matrix multiply on the dense layers' shapes (rows
    activations at a time), weighted as a layer uses them (fastest of 5 each)."""
    from tfhub_classifier.runtime import tf
    width, inner = shape["hidden_size"], shape["intermediate_size"]
    dtype = tf.as_dtype(precision)
    seconds = operations = 0.0  # per row of activations, through one layer's dense layers
    for k, n, count in ((width, width, 4), (width, inner, 1), (inner, width, 1)):
        a = tf.cast(tf.random.normal([rows, k]), dtype)
        b = tf.cast(tf.random.normal([k, n]), dtype)
        multiply = tf.function(lambda a, b: tf.matmul(a, b)[:1, :1])  # a one-number result: no copy out timed
        seconds += count * common.fastest(lambda multiply=multiply, a=a, b=b: multiply(a, b).numpy(), repeats=5) / rows
        operations += count * 2 * k * n
    return operations / seconds


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seq-lengths", type=int, nargs="+", default=[128, 512])
    args = parser.parse_args(argv)
    with open(os.path.join(peer.minilm_hf(), "config.json"), encoding="utf-8") as f:
        shape = json.load(f)
    precisions = ["float32", "bfloat16"] if hardware.cpu_supports_bfloat16() else ["float32"]
    flags = common.cpu_flags()
    print(f"{common.machine_header(flags)}\n"
          f"MiniLM: {shape['num_hidden_layers']} layers, width {shape['hidden_size']}, "
          f"intermediate {shape['intermediate_size']}; {speed.EVAL_REVIEWS} reviews in batches of {EVAL_BATCH}",
          flush=True)
    record = {"machine": common.machine(), "cpu_flags": flags, "dense_flops_per_s": {}, "ceilings": {}}
    for seq in args.seq_lengths:
        lengths = eval_lengths(seq)
        dense, attention = arithmetic(lengths, shape)
        reviews = len(lengths)
        print(f"seq={seq}: mean length {lengths.mean():.0f} tokens; {(dense + attention) / reviews / 1e9:.2f} "
              f"GFLOP a review, {dense / (dense + attention):.0%} of it in the dense layers")
        # The dense layers' rows in a batch of 128 reviews at this length (the longest batch's).
        rates = {precision: dense_rate(shape, precision, EVAL_BATCH * int(lengths.max())) for precision in precisions}
        record["dense_flops_per_s"][seq] = rates
        for precision, rate in rates.items():
            ceiling = reviews / (dense / rate)
            record["ceilings"][f"{precision}@{seq}"] = ceiling
            print(f"ceiling seq={seq} precision={precision} dense_gflops={rate / 1e9:.0f} reviews_per_s={ceiling:.1f}")
    print(f"Results: {common.save_result('ceiling', record)}")
    return record


if __name__ == "__main__":
    main()
