"""A fused graph's dense layers as oneDNN int8 products, activations quantized per batch or over a fixed range.

After model/fusion.py's rewrite every dense layer is MatMul (of constant weights) -> BiasAdd [-> GELU].
Here each becomes TensorFlow's _QuantizedMatMul, oneDNN's u8 x s8 product with its bias [and exact GELU]
applied and float32 out, as PyTorch's quantize_dynamic runs its Linear layers, but with the weights
giving up a bit where it takes one from the activations:

- weights: int8, one scale for the layer or one for each output column (the op takes either),
  |q| <= 64 (255 * 64 * 2 fits int16), since on CPUs without VNNI oneDNN sums pairs of u8 x s8 products
  in int16 (VPMADDUBSW), which 8-bit weights could saturate;
- activations: uint8 over a range [low, high]: x - low quantized with the op's SCALED mode, and low
  times the dequantized weights' column sums added to the bias, so the output is x @ W + b. The range
  is either each batch's own (low = min(x), padding included, so a text's scores move slightly with the
  texts batched with it, as with quantize_dynamic) or fixed, measured on calibration texts and widened
  by RANGE_MARGIN (a text then scores the same in any batch; values beyond the range are clipped to it).
- smoothing (optional): a few channels of a BERT's activations run far above the rest and would set the
  batch's range; dividing each channel by a SmoothQuant scale and multiplying the weights' rows by it
  leaves the product as it was and evens the channels out (one element-wise op an input).

Measured in benchmarks/int8_layers.py and, as --engine fused-int8, in benchmarks/peer.py and parity.py
(docs/benchmarks.md#int8-dense-layers).
"""
import numpy as np
from tensorflow.core.framework import node_def_pb2

from tfhub_classifier.model.graph_edits import Edit, const_node, node_of
from tfhub_classifier.runtime import tf

SCALES = ("per-layer", "per-column")  # the weights' quantization scales: one a layer, or one a column
WEIGHT_LEVELS = 127  # the op's weight scale is max|range| / 127 ...
WEIGHT_RANGE_FACTOR = 2.0  # ... and the range twice the largest weight keeps |q| <= 64 (7 bits)
SMALLEST_RANGE = 1e-6  # an all-zero column's or layer's: any scale quantizes it to zeros
SMOOTHING = 0.5  # SmoothQuant's migration strength: the activations' outliers shared evenly with the weights
RANGE_MARGIN = 0.1  # a fixed range is the calibration texts' widened by this share of its span on each side


def quantized_weights(weights, per_column=False):
    """(int8 weights, their range's bound, the dequantized weights' column sums) for a [in, out] float
    array. per_column: the bound is a vector, column j quantized over its own range, so one large weight
    (a BERT's feed-forward output has a few) costs only its column's precision."""
    largest = np.max(np.abs(weights), axis=0) if weights.size else np.zeros(weights.shape[1:], weights.dtype)
    if not per_column:
        largest = np.max(largest, initial=0)
    bound = np.maximum(WEIGHT_RANGE_FACTOR * largest, SMALLEST_RANGE).astype(np.float32)
    scale = bound / WEIGHT_LEVELS
    quantized = np.clip(np.round(weights / scale), -WEIGHT_LEVELS, WEIGHT_LEVELS).astype(np.int8)
    return quantized, bound, (quantized.astype(np.float64).sum(0) * scale).astype(np.float32)


def quantize_dense(graph, bias_adds, scales="per-layer", gelus=None, after_gelu=True, channel_ranges=None,
                   activation_ranges=None):
    """(An Edit, how many layers it changes): each of bias_adds (BiasAdd node names reading a MatMul of
    constant two-axis weights, as fuse_dense and fuse_einsum write them) becomes an int8 product whose
    output stands in for the BiasAdd's, or for its GELU's where gelus ({BiasAdd name: (the GELU's output
    node, its chain's node names)}) names one: oneDNN then applies the GELU too. Layers reading the same
    activations (attention's queries, keys and values) share one quantization of them. scales:
    "per-layer" (one scale for a layer's weights, as quantize_dynamic does) or "per-column" (each
    column's own). after_gelu: False leaves in float32 the layers reading a GELU's output (in a BERT,
    the feed-forward block's second, whose weights and activations int8 rounds worst). channel_ranges:
    {activations' key (activation_inputs'): each channel's largest |value| on calibration texts}: those
    activations' channels are divided by smoothing_scales before quantization and the weights' rows
    multiplied by them (SmoothQuant), so a few large channels no longer set the whole range.
    activation_ranges: {activations' key: (each channel's smallest value, its largest) on calibration
    texts}: those activations are quantized over that fixed range (after smoothing), not each batch's."""
    if scales not in SCALES:
        raise ValueError(f"int8 weight scales must be one of {', '.join(SCALES)}, not {scales!r}")
    gelus = gelus or {}
    layers = _layers(graph, bias_adds, gelus, after_gelu)
    smoothing = {}
    for key, largest in (channel_ranges or {}).items():
        rows = [np.abs(weights).max(1) for _, _, weights, same in layers if same == key]
        if rows:  # each channel's largest weight in any layer reading it
            smoothing[key] = smoothing_scales(largest, np.max(rows, axis=0))
    edit, quantized_inputs = Edit(), {}
    for name, matmul, weights, key in layers:
        if key not in quantized_inputs:
            fixed = None
            if key in (activation_ranges or {}):
                fixed = fixed_range(*activation_ranges[key], smoothing.get(key))
            nodes, quantized_inputs[key] = _quantized_activations(f"{name}/int8", matmul.input[0],
                                                                  smoothing.get(key), fixed)
            edit.added += nodes
        if key in smoothing:
            weights = weights * smoothing[key][:, None]
        gelu_output, gelu_chain = gelus.get(name, (None, ()))
        edit.added += _int8_product(f"{name}/int8", *quantized_inputs[key], graph.nodes[name].input[1],
                                    *quantized_weights(weights, scales == "per-column"), gelu=gelu_output is not None)
        edit.removed.update({matmul.name, name, *gelu_chain})
        edit.rewired[gelu_output or name] = edit.added[-1].name
    return edit, len(layers)


def activation_inputs(graph, bias_adds, gelus=None, after_gelu=True):
    """{activations' key: a tensor holding them, [rows, channels]} for the layers quantize_dense would change."""
    return {key: matmul.input[0] for _, matmul, _, key in _layers(graph, bias_adds, gelus or {}, after_gelu)}


def fixed_range(channel_lows, channel_highs, divisors=None, margin=RANGE_MARGIN):
    """(low, high): the range of activations whose channels reached channel_lows..channel_highs on calibration
    texts, after dividing them by divisors (if given), widened by margin times its span on each side."""
    if divisors is not None:  # positive: each channel keeps its order
        channel_lows, channel_highs = channel_lows / divisors, channel_highs / divisors
    low, high = float(np.min(channel_lows)), float(np.max(channel_highs))
    widening = margin * max(high - low, SMALLEST_RANGE)
    return low - widening, high + widening


def smoothing_scales(channel_largest, row_largest, strength=SMOOTHING):
    """SmoothQuant's scale for each input channel: max|x_k|^strength / max|w_k|^(1 - strength), so that
    dividing the activations by it and multiplying the weights' rows leaves their product as it was but
    evens out the channels the activations' range must cover."""
    return (np.maximum(channel_largest, 1e-5) ** strength
            / np.maximum(row_largest, 1e-5) ** (1 - strength)).astype(np.float32)


def _layers(graph, bias_adds, gelus, after_gelu):
    """(BiasAdd name, its MatMul, its weights as [in, out], its activations' key) of each of bias_adds
    that quantize_dense changes: float32 MatMuls of constant weights [not reading a GELU's output]."""
    gelu_outputs, layers = {output for output, _ in gelus.values()}, []
    for name in bias_adds:
        matmul = graph.nodes[node_of(graph.nodes[name].input[0])]
        weights = graph.constant(matmul.input[1])
        # ("in" first: reading a missing attr of a NodeDef's map would add an empty one.)
        if ("transpose_a" in matmul.attr and matmul.attr["transpose_a"].b) or weights is None \
                or matmul.attr["T"].type != tf.float32.as_datatype_enum:
            continue
        if not after_gelu and node_of(_reshaped_from(graph, matmul.input[0])) in gelu_outputs:
            continue
        if "transpose_b" in matmul.attr and matmul.attr["transpose_b"].b:
            weights = weights.T
        layers.append((name, matmul, weights, _same_activations(graph, matmul.input[0])))
    return layers


def _reshaped_from(graph, x):
    """What x holds before the Reshapes, Identities and identity Transposes between: a dense layer reads
    the one before it through its Reshape back to [batch, length, ...] and its own to two axes (Keras'
    Dense through Tensordot, which transposes by the identity first)."""
    while True:
        node = graph.nodes.get(node_of(x))
        perm = graph.constant(node.input[1]) if node is not None and node.op == "Transpose" else None
        if node is None or not (node.op in ("Reshape", "Identity")
                                or (perm is not None and np.array_equal(perm, np.arange(perm.size)))):
            return x
        x = node.input[0]


def _same_activations(graph, x):
    """What identifies the tensor x holds: fuse_einsum reshapes the same activations once per layer, so a
    Reshape to a constant shape is known by what it reshapes (through the Identity nodes an inlined
    function's inputs pass by: Keras' attention takes its query and its value as two) and to which shape."""
    node = graph.nodes.get(node_of(x))
    shape = graph.constant(node.input[1]) if node is not None and node.op == "Reshape" else None
    if shape is None:
        return x
    source = node.input[0]
    while graph.nodes.get(node_of(source)) is not None and graph.nodes[node_of(source)].op == "Identity":
        source = graph.nodes[node_of(source)].input[0]
    return source, tuple(shape.reshape(-1).tolist())


def _op(nodes, kind, name, inputs, **attrs):
    """Append a node (attrs: a bytes value is a string, a bool a bool, an int a dtype, a list a list of
    strings or of dtypes) and return its name."""
    node = node_def_pb2.NodeDef(name=name, op=kind)
    node.input.extend(inputs)
    for key, value in attrs.items():
        if isinstance(value, bytes):
            node.attr[key].s = value
        elif isinstance(value, bool):
            node.attr[key].b = value
        elif isinstance(value, list) and all(isinstance(item, bytes) for item in value):
            node.attr[key].list.s.extend(value)
        elif isinstance(value, list):
            node.attr[key].list.type.extend(value)
        else:
            node.attr[key].type = value
    nodes.append(node)
    return node.name


def _quantized_activations(prefix, x, divisors=None, fixed=None):
    """(nodes, (the QuantizeV2 node's name, low's)): x - low as uint8 over [0, high - low], low kept to put
    back; (low, high) is fixed, or min(x) and max(x); x's channels divided by divisors first, if given."""
    float32, int32 = tf.float32.as_datatype_enum, tf.int32.as_datatype_enum
    nodes = [const_node(f"{prefix}/zero", np.float32(0))]
    if divisors is not None:
        nodes.append(const_node(f"{prefix}/inverse_smoothing", (1 / divisors).astype(np.float32)))
        x = _op(nodes, "Mul", f"{prefix}/smoothed", [x, f"{prefix}/inverse_smoothing"], T=float32)
    if fixed is not None:
        nodes += [const_node(f"{prefix}/low", np.float32(fixed[0])),
                  const_node(f"{prefix}/span", np.float32(fixed[1] - fixed[0]))]
        low, span = f"{prefix}/low", f"{prefix}/span"
    else:
        nodes.append(const_node(f"{prefix}/axes", np.array([0, 1], np.int32)))
        low = _op(nodes, "Min", f"{prefix}/low", [x, f"{prefix}/axes"], T=float32, Tidx=int32)
        high = _op(nodes, "Max", f"{prefix}/high", [x, f"{prefix}/axes"], T=float32, Tidx=int32)
        # An empty batch's min and max are +inf and -inf: its span is clamped to 0, which QuantizeV2 accepts.
        difference = _op(nodes, "Sub", f"{prefix}/difference", [high, low], T=float32)
        span = _op(nodes, "Maximum", f"{prefix}/span", [difference, f"{prefix}/zero"], T=float32)
    shifted = _op(nodes, "Sub", f"{prefix}/shifted", [x, low], T=float32)
    # Over a fixed range, QuantizeV2 clips what falls outside it to its ends.
    activations = _op(nodes, "QuantizeV2", f"{prefix}/activations", [shifted, f"{prefix}/zero", span],
                      T=tf.quint8.as_datatype_enum, mode=b"SCALED", round_mode=b"HALF_TO_EVEN")
    return nodes, (activations, low)


def _int8_product(prefix, activations, low, bias, quantized, bound, column_sums, gelu=False):
    """The nodes computing x @ W + bias [then exact GELU] from _quantized_activations' (activations, low)
    by oneDNN's int8 product (W = quantized * bound / 127, bound a scalar or one a column), the output last."""
    float32, nodes = tf.float32.as_datatype_enum, []
    nodes += [const_node(f"{prefix}/weights", quantized, tf.qint8),
              const_node(f"{prefix}/weights_min", -bound),
              const_node(f"{prefix}/weights_max", bound),
              const_node(f"{prefix}/column_sums", column_sums)]
    # low times the weights' column sums puts back what the shift took off each output.
    restored = _op(nodes, "Mul", f"{prefix}/restored", [low, f"{prefix}/column_sums"], T=float32)
    shifted_bias = _op(nodes, "AddV2", f"{prefix}/bias", [bias, restored], T=float32)
    inputs = [activations, f"{prefix}/weights", shifted_bias, f"{activations}:1", f"{activations}:2",
              f"{prefix}/weights_min", f"{prefix}/weights_max"]
    types = [tf.quint8, tf.qint8] + [tf.float32] * 5
    _op(nodes, "_QuantizedMatMul", f"{prefix}/product", inputs, T1=tf.quint8.as_datatype_enum,
                  T2=tf.qint8.as_datatype_enum, Tbias=float32, Tout=float32, U=float32,
                  fused_ops=[b"BiasAdd", *([b"GeluExact"] if gelu else []), b"Dequantize"],
                  input_quant_mode=b"SCALED", output_quant_mode=b"SCALED", transpose_a=False, transpose_b=False,
                  is_weight_const=True, is_bias_const=False,  # with each batch's range, the bias moves with its min(x)
                  Tdevice_inputs=[dtype.as_datatype_enum for dtype in types], Tdevice_outputs=[float32])
    return nodes
