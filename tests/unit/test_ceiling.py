"""benchmarks/ceiling.py's int8 measurements: oneDNN's int8 multiply timed only as it multiplies its
operands, and the instruction-rate probe."""
import os
import shutil
import sys

import numpy as np
import pytest

from tfhub_classifier import hardware, runtime
from tfhub_classifier.model import kernel_library
from tfhub_classifier.runtime import tf

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                                "benchmarks"))
import ceiling  # noqa: E402


@pytest.fixture(autouse=True)
def seeded():
    tf.random.set_seed(0)


def test_onednn_int8_multiply_is_the_product_of_its_8_bit_operands():
    """The figure is only int8's if the op multiplied the quantized numbers: with 7-bit weights its
    product equals float32's product of the same numbers up to rounding (8-bit weights saturate on
    CPUs without VNNI, off by about 3e-3)."""
    if not runtime.onednn_enabled():
        pytest.skip("TensorFlow's oneDNN kernels are off in this process: its int8 multiply has no kernel")
    a_operand, b_operand = ceiling.int8_operands(tf.random.normal([300, 384]), tf.random.normal([384, 96]))
    assert ceiling.int8_error(a_operand, b_operand) < 1e-5
    assert np.abs(b_operand[0].numpy().astype(np.int32)).max() <= 64  # 2 * 255 * 64 fits 16 bits


def test_instruction_rates_times_each_multiply_add_form():
    if not {"avx2", "fma"} <= hardware.cpu_flags():
        pytest.skip("the probe's instructions need AVX2 and FMA")
    if shutil.which(kernel_library.compiler()[0]) is None:
        pytest.skip(f"no C++ compiler: {kernel_library.FIX}")
    rates = ceiling.instruction_rates()
    assert set(rates) == {"fma_float32", "vpmaddwd_int16", "vpmaddubsw_int8", "vpmaddubsw_pair_int8",
                          "vpmaddubsw_bare_int8"}
    # Plausible for one core: AVX2 issues at most two vector multiplies a cycle, clocks are under 6 GHz.
    assert all(0 < rate <= 2 * 32 * 6 for rate in rates.values()), rates
    # Each form counts the multiply-adds its instructions do: an integer form never beats its bare multiply.
    assert max(rates["vpmaddubsw_int8"], rates["vpmaddubsw_pair_int8"]) <= 1.1 * rates["vpmaddubsw_bare_int8"], rates
