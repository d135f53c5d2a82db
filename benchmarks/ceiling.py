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

Whether int8 could raise the ceiling: it also times oneDNN's int8 multiply (TensorFlow's
QuantizedMatMulWithBiasAndDequantize: 8-bit activations, weights within 7 bits, its product checked
first against float32's product of the same numbers) on the same shapes, the `int8` precision; and,
on an x86 CPU with AVX2 and FMA and a C++ compiler, it runs multiply_add_rates.cc, which counts the
multiply-adds a second one core issues with each AVX2 instruction form a dense layer can use (float32
FMA, int16 VPMADDWD, int8 VPMADDUBSW widened at once or after summing a pair in int16; the file says
which are exact when).

Prints, per sequence length, the arithmetic a review takes, and per precision a line
`ceiling seq=128 precision=float32 dense_gflops=373 reviews_per_s=137.2`; then a line per instruction
form, `form=fma_float32 multiply_adds_per_ns=53.6`.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the suite's root
import common  # noqa: E402
import peer  # noqa: E402
import speed  # noqa: E402

from tfhub_classifier import hardware  # noqa: E402

EVAL_BATCH = 128  # peer.py's (and speed.py's) evaluation batch
RATES_SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "multiply_add_rates.cc")


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


def int8_operands(a, b):
    """oneDNN's int8 operands for a @ b: (a - min(a) as uint8, its range), (b as int8, its range). a is
    shifted to start at zero so that uint8 spans its range; b takes about 7 bits (|b| <= 64), as oneDNN
    advises where the CPU lacks VNNI, so that VPMADDUBSW's 16-bit sums of two products can't saturate."""
    from tfhub_classifier.runtime import tf
    low = tf.reduce_min(a)
    a_quantized = tf.quantization.quantize(a - low, 0.0, tf.reduce_max(a) - low, tf.quint8, mode="SCALED")
    b_max = tf.reduce_max(tf.abs(b))
    b_quantized = tf.quantization.quantize(b, -2 * b_max, 2 * b_max, tf.qint8, mode="SCALED")  # 7 bits
    return tuple(a_quantized), tuple(b_quantized)


def int8_multiply(a_operand, b_operand):
    """The float32 product of two int8_operands, by oneDNN's int8 kernel (TensorFlow's op for it has no
    kernel without oneDNN)."""
    from tfhub_classifier.runtime import tf
    (a, a_min, a_max), (b, b_min, b_max) = a_operand, b_operand
    return tf.raw_ops.QuantizedMatMulWithBiasAndDequantize(
        a=a, b=b, bias=tf.zeros([b.shape[1]]), min_a=a_min, max_a=a_max, min_b=b_min, max_b=b_max,
        min_freezed_output=-1.0, max_freezed_output=1.0, Toutput=tf.float32, input_quant_mode="SCALED")


def int8_error(a_operand, b_operand):
    """How far int8_multiply is from a multiple of float32's product of the same 8-bit numbers, relative
    to its largest output: float rounding (about 1e-6) if the kernel multiplied its operands as they are.
    A multiple, because the op scales int8 by the range / 128 where tf.quantization's convention is / 127."""
    from tfhub_classifier.runtime import tf
    exact = tf.matmul(*(tf.quantization.dequantize(*operand, mode="SCALED") for operand in (a_operand, b_operand)))
    product = int8_multiply(a_operand, b_operand)
    factor = tf.reduce_sum(product * exact) / tf.reduce_sum(exact * exact)
    return float(tf.reduce_max(tf.abs(product - factor * exact)) / tf.reduce_max(tf.abs(exact)))


def int8_rate(shape, rows):
    """Multiply-add operations (counted as two, as float32's) a second of oneDNN's int8 multiply on the
    dense layers' shapes, weighted as dense_rate's; None, with the reason printed, where TensorFlow runs
    without oneDNN. The operands are quantized before the clock starts, so an engine, which quantizes each
    layer's activations, runs slower than this. Each product is first checked against float32's."""
    from tfhub_classifier import runtime
    from tfhub_classifier.runtime import tf
    if not runtime.onednn_enabled():
        print("int8: skipped: TensorFlow's oneDNN kernels are off in this process (TF_ENABLE_ONEDNN_OPTS=0, "
              "or not an x86 CPU)")
        return None
    width, inner = shape["hidden_size"], shape["intermediate_size"]
    multiply = tf.function(lambda a, b: int8_multiply(a, b)[:1, :1])  # a one-number result: no copy out timed
    seconds = operations = 0.0
    for k, n, count in ((width, width, 4), (width, inner, 1), (inner, width, 1)):
        a_operand, b_operand = int8_operands(tf.random.normal([rows, k]), tf.random.normal([k, n]))
        error = int8_error(a_operand, b_operand)
        if not error < 1e-4:
            sys.exit(f"int8: oneDNN's int8 product is off by {error:.1e} of its largest output; not timing it")
        seconds += count * common.fastest(lambda a=a_operand, b=b_operand: multiply(a, b).numpy(), repeats=5) / rows
        operations += count * 2 * k * n
    return operations / seconds


def instruction_rates():
    """{form: multiply-adds a nanosecond on one core} from multiply_add_rates.cc, or {} with the reason
    printed where it can't run (not x86 with AVX2 and FMA, or no C++ compiler)."""
    from tfhub_classifier.model import kernel_library
    if not {"avx2", "fma"} <= hardware.cpu_flags():
        print("instruction rates: skipped: the CPU has no AVX2 and FMA")
        return {}
    with tempfile.TemporaryDirectory() as scratch:
        program = os.path.join(scratch, "multiply_add_rates")
        try:
            subprocess.run([*kernel_library.compiler(), "-O2", "-mavx2", "-mfma", RATES_SOURCE, "-o", program],
                           check=True, capture_output=True, text=True)
        except (OSError, subprocess.CalledProcessError) as error:
            print(f"instruction rates: skipped: can't compile {os.path.basename(RATES_SOURCE)} "
                  f"({kernel_library.FIX}): {getattr(error, 'stderr', '') or error}".strip())
            return {}
        output = subprocess.run([program], check=True, capture_output=True, text=True).stdout
    rates = {}
    for line in output.splitlines():
        fields = dict(field.split("=", 1) for field in line.split())
        rates[fields["form"]] = float(fields["multiply_adds_per_ns"])
    return rates


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
        rows = EVAL_BATCH * int(lengths.max())
        rates = {precision: dense_rate(shape, precision, rows) for precision in precisions}
        rates["int8"] = int8_rate(shape, rows)
        rates = {precision: rate for precision, rate in rates.items() if rate is not None}
        record["dense_flops_per_s"][seq] = rates
        for precision, rate in rates.items():
            ceiling = reviews / (dense / rate)
            record["ceilings"][f"{precision}@{seq}"] = ceiling
            print(f"ceiling seq={seq} precision={precision} dense_gflops={rate / 1e9:.0f} reviews_per_s={ceiling:.1f}")
    record["multiply_adds_per_ns"] = instruction_rates()
    for form, rate in record["multiply_adds_per_ns"].items():
        print(f"form={form} multiply_adds_per_ns={rate:.1f}")
    print(f"Results: {common.save_result('ceiling', record)}")
    return record


if __name__ == "__main__":
    main()
