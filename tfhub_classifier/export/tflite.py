"""A saved classifier's token half (the core-ops export's graph) converted to TFLite, optionally quantized.

TFLite's converter needs every dimension but the batch static here (the encoder's StridedSlices that
add an axis become TFLite builtins only then), and XNNPACK cannot resize a graph converted at one
width to another, so the model holds one signature per input width ("width_N": input_word_ids,
input_mask, input_type_ids [batch, N] -> probabilities, logits; a model of one width has TFLite's
default name, serving_default), all sharing one set of weights; a batch runs through the smallest
width that holds its longest text, padded with zeros (masked out).
"""
import warnings

import config
from tfhub_classifier.data import tokenization
from tfhub_classifier.export import client_example, core_ops
from tfhub_classifier.runtime import tf

# Signature widths below the sequence length: steps of 1.5x to 2x, so a length-sorted batch is
# padded by less than half again; each adds seconds to the conversion but no weights.
WIDTHS = (32, 48, 64, 96, 128, 192, 256, 384)
SIGNATURE_PREFIX = "width_"
signature_runners = client_example.signature_runners  # the export's client reads them alike


def widths(seq_length):
    """The input widths a model of seq_length gets a signature for: WIDTHS below it, and itself."""
    return sorted({width for width in WIDTHS if width < seq_length} | {seq_length})


def convert(model, kind, seq_length, quantize="none", instead="export it with --format core-ops instead"):
    """The .tflite bytes of a loaded classifier's token half (saving.load's model) for task kind,
    with quantize: none (float32), int8 (dynamic range: int8 weights, float activations) or float16
    (float16 weights). ValueError, ending with instead (what to do), if TFLite's builtin ops can't express it."""
    if quantize not in config.QUANTIZATIONS:
        raise ValueError(f"unknown quantization {quantize!r}; use one of {', '.join(config.QUANTIZATIONS)}")
    module = core_ops.CoreOpsClassifier(model.classify_tokens, kind)
    functions = [_fixed_width(module, width).get_concrete_function() for width in widths(seq_length)]
    converter = tf.lite.TFLiteConverter.from_concrete_functions(functions, module)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]  # no Flex: runs on bare LiteRT
    if quantize != "none":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if quantize == "float16":
        converter.target_spec.supported_types = [tf.float16]
    try:
        return converter.convert()
    except Exception as error:  # the converter raises its own ConverterError, with pages of MLIR
        first = next((line for line in str(error).splitlines() if "error" in line.lower()), str(error))[:200]
        raise ValueError(f"this model could not be converted to TFLite's builtin ops ({first.strip()}); "
                         f"{instead}") from None


def _fixed_width(module, width):
    """module.serve at [batch, width], under the signature name width_<width>."""
    def serve(input_word_ids, input_mask, input_type_ids):
        return module.serve(input_word_ids, input_mask, input_type_ids)
    serve.__name__ = f"{SIGNATURE_PREFIX}{width}"
    return tf.function(serve, input_signature=[tf.TensorSpec([None, width], tf.int32, name=key)
                                               for key in tokenization.TOKEN_KEYS])


def interpreter(model_content, threads=None):
    """tf.lite.Interpreter on the model, with XNNPACK (its default delegate) on threads threads."""
    with warnings.catch_warnings():  # its notice that LiteRT's package will replace it: this one ships with TF
        warnings.simplefilter("ignore")
        return tf.lite.Interpreter(model_content=model_content, num_threads=threads)
