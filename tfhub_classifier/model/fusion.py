"""A classifier's token graph rewritten so oneDNN runs each dense layer, GELU and layer normalization as one kernel.

TF-Hub encoders apply a dense layer to [batch, length, width] activations as Reshape, MatMul, Reshape,
then the bias add, and GELU and layer normalization as chains of element-wise ops. grappler's remapper
fuses MatMul + BiasAdd + GELU into one oneDNN kernel only when they follow each other directly, so
the reshape back to three axes sits between them; and its own layer-normalization fusion, which fires
once the weights are constants, drops the model's epsilon (a BERT's 1e-12 becomes 0.001;
docs/benchmarks.md#the-fused-graph). So, on a copy of the graph with its variables frozen into
constants:

- dense layers: MatMul -> Reshape -> BiasAdd [-> GELU] becomes MatMul -> BiasAdd [-> GELU in the form
  the remapper matches] -> Reshape (the bias runs along the last axis, which the reshape keeps, so
  the order doesn't change a value); Keras's EinsumDense (an Einsum of the activations with the
  kernel, then the bias) becomes Reshape -> MatMul -> BiasAdd [-> GELU] -> Reshape alike;
- layer normalization: tf.nn.moments + batch_normalization over the last axis becomes one
  _MklLayerNorm with the model's own epsilon, gamma and beta; any normalization left as it was gets
  its constants through PlaceholderWithDefault, so grappler's own fusion can't take it;
- attention, in float32, runs as one kernel of the suite's own (model/attention_kernel.py); any it
  doesn't take, or in bfloat16, runs a few texts of the batch at a time (model/attention_chunks.py);
- on AVX2 CPUs without AVX-512, in float32, a dense layer followed by GELU reads its weights through
  PlaceholderWithDefault: oneDNN then runs the layer, bias and GELU included, on its gemm kernel rather
  than the brgemm kernel it picks for constant weights, which scored slower there
  (docs/benchmarks.md#gelu-after-a-dense-layer).

Each rewrite is checked before it is made: a GELU or layer normalization chain is run on probe
values beside its reference formula, an attention's kernel or chunks on probe values beside its nodes,
and one that computes anything else is left as it is (inference/engines.py then checks the whole graph
against the saved one). The saved model on disk is never changed.
"""
import dataclasses

import numpy as np
from tensorflow.core.framework import node_def_pb2

import tfhub_classifier
from tfhub_classifier import hardware, runtime
from tfhub_classifier.model import attention_chunks, attention_kernel, kernel_library, quantization
from tfhub_classifier.model.graph_edits import (
    ELEMENTWISE,
    Edit,
    Graph,
    apply,
    const_node,
    first_output,
    frozen_graph,
    node_of,
    run_as_function,
    without_unread,
)
from tfhub_classifier.runtime import tf

NORMALIZATION = {"Mean", "SquaredDifference", "StopGradient", "AddV2", "Add", "Sub", "Mul", "Rsqrt", "RealDiv",
                 "Sqrt", "Square", "Reciprocal"}
GELU_TOLERANCE = 1e-5  # on probes in [-6, 6]: GELU's own float32 rounding is far below
LAYER_NORM_TOLERANCE = 1e-4  # on unit-scale probes, the sums' float32 rounding across 384-1024 columns


def _gelu(graph, start):
    """The element-wise chain after start and its last node, if that node is exact GELU of start (else None, None)."""
    chain = graph.chain(start, ELEMENTWISE, graph.scalar)
    ends, names = graph.outside_readers(chain, start), {node.name for node in chain}
    if len(ends) != 1 or any(reader.name not in names for reader in graph.readers[start]):
        return None, None
    probe = np.linspace(-6, 6, 97, dtype=np.float32)[None, :]
    got = graph.run_chain(start, chain, ends[0], probe)
    want = 0.5 * probe * (1 + tf.math.erf(probe / np.sqrt(2)).numpy())
    if got.shape != probe.shape or np.max(np.abs(got - want)) > GELU_TOLERANCE:
        return None, None
    return chain, ends[0]


def fuse_dense(graph):
    """An Edit turning each MatMul -> Reshape -> BiasAdd [-> GELU] into MatMul -> BiasAdd [-> GELU] -> Reshape."""
    edit = Edit()
    for reshape in graph.graph_def.node:
        if reshape.op != "Reshape":
            continue
        matmul = graph.nodes.get(node_of(reshape.input[0]))
        readers = graph.readers[reshape.name]
        if matmul is None or matmul.op != "MatMul" or len(readers) != 1 or readers[0].op != "BiasAdd" \
                or len(graph.readers[matmul.name]) != 1 or not first_output(reshape.input[0]):
            continue
        bias_add = readers[0]
        weights, bias = graph.constant(matmul.input[1]), graph.constant(bias_add.input[1])
        if weights is None or weights.ndim != 2 or bias is None \
                or bias_add.attr["data_format"].s not in (b"", b"NHWC") or bias_add.input[0] != reshape.name:
            continue
        # The bias must match the MatMul's columns, which then stay the last axis through the reshape.
        if bias.shape != (weights.shape[0 if matmul.attr["transpose_b"].b else 1],):
            continue
        dtype = matmul.attr["T"]
        bias_2d = _op("BiasAdd", f"{bias_add.name}/before_reshape", [matmul.name, bias_add.input[1]], dtype)
        edit.added.append(bias_2d)
        output, replaced = _then_gelu(graph, edit, bias_2d.name, bias_add, f"{bias_add.name}/gelu", dtype)
        reshape_after = _op("Reshape", f"{reshape.name}/after", [output, reshape.input[1]], reshape.attr["T"])
        reshape_after.attr["Tshape"].CopyFrom(reshape.attr["Tshape"])
        edit.added.append(reshape_after)
        edit.removed.update({reshape.name, bias_add.name})
        edit.rewired[replaced.name] = reshape_after.name
    return edit


def fuse_einsum(graph):
    """An Edit turning each dense layer written as an Einsum of the activations with a constant kernel,
    then its bias added [then GELU] (Keras' EinsumDense, e.g. "abc,cde->abde"), into Reshape -> MatMul
    -> BiasAdd [-> GELU] -> Reshape, the kernel and bias flattened to two axes and one."""
    edit = Edit()
    for einsum in graph.graph_def.node:
        kernel = graph.constant(einsum.input[1]) if einsum.op == "Einsum" and len(einsum.input) == 2 else None
        readers = graph.readers[einsum.name]
        if kernel is None or len(readers) != 1 or readers[0].op not in ("AddV2", "Add", "BiasAdd"):
            continue
        equation = einsum.attr["equation"].s.decode()
        contracted = _contracted_axes(equation, kernel.ndim)
        add = readers[0]
        bias_input = [name for name in graph.data_inputs(add) if node_of(name) != einsum.name]
        bias = graph.constant(bias_input[0]) if len(bias_input) == 1 else None
        if contracted is None or bias is None or bias.shape != kernel.shape[contracted:] \
                or (add.op == "BiasAdd" and bias.ndim != 1):
            continue
        dtype, prefix = einsum.attr["T"], f"{einsum.name}/as_matmul"
        rows, columns = int(np.prod(kernel.shape[:contracted])), int(np.prod(kernel.shape[contracted:]))
        x = einsum.input[0]
        edit.added += [const_node(f"{prefix}/rows_shape", np.array([-1, rows], np.int32)),
                       const_node(f"{prefix}/kernel", kernel.reshape(rows, columns)),
                       const_node(f"{prefix}/bias", bias.reshape(columns))]
        flat = _op("Reshape", f"{prefix}/rows", [x, f"{prefix}/rows_shape"], dtype)
        flat.attr["Tshape"].type = tf.int32.as_datatype_enum
        matmul = _op("MatMul", f"{prefix}/matmul", [flat.name, f"{prefix}/kernel"], dtype)
        bias_2d = _op("BiasAdd", f"{prefix}/bias_add", [matmul.name, f"{prefix}/bias"], dtype)
        edit.added += [flat, matmul, bias_2d]
        output, replaced = _then_gelu(graph, edit, bias_2d.name, add, f"{prefix}/gelu", dtype)
        # The result's shape: the activations' leading axes (as many as the equation keeps), then the kernel's last.
        leading = len(equation.replace(" ", "").split(",")[0]) - contracted
        shape = node_def_pb2.NodeDef(name=f"{prefix}/input_shape", op="Shape", input=[x])
        shape.attr["T"].CopyFrom(dtype)
        shape.attr["out_type"].type = tf.int32.as_datatype_enum
        edit.added += [shape, const_node(f"{prefix}/zero", np.array([0], np.int32)),
                       const_node(f"{prefix}/leading", np.array([leading], np.int32)),
                       const_node(f"{prefix}/one", np.array([1], np.int32)),
                       const_node(f"{prefix}/kept", np.array(kernel.shape[contracted:], np.int32)),
                       const_node(f"{prefix}/axis", np.array(0, np.int32))]
        kept = node_def_pb2.NodeDef(name=f"{prefix}/leading_shape", op="StridedSlice",
                                    input=[shape.name, f"{prefix}/zero", f"{prefix}/leading", f"{prefix}/one"])
        kept.attr["T"].type = kept.attr["Index"].type = tf.int32.as_datatype_enum
        target = node_def_pb2.NodeDef(name=f"{prefix}/output_shape", op="ConcatV2",
                                      input=[kept.name, f"{prefix}/kept", f"{prefix}/axis"])
        target.attr["N"].i = 2
        target.attr["T"].type = tf.int32.as_datatype_enum
        target.attr["Tidx"].type = tf.int32.as_datatype_enum
        reshaped = _op("Reshape", f"{prefix}/output", [output, target.name], dtype)
        reshaped.attr["Tshape"].type = tf.int32.as_datatype_enum
        edit.added += [kept, target, reshaped]
        edit.removed.update({einsum.name, add.name})
        edit.rewired[replaced.name] = reshaped.name
    return edit


def _contracted_axes(equation, kernel_axes):
    """How many of the kernel's leading axes an equation like "abc,cde->abde" contracts with the
    activations' trailing ones (the rest pass through in order), or None if it is another product."""
    if "..." in equation or "->" not in equation or equation.count(",") != 1:
        return None
    inputs, output = equation.replace(" ", "").split("->")
    activations, kernel = inputs.split(",")
    if len(kernel) != kernel_axes or len(set(activations)) != len(activations) or len(set(kernel)) != len(kernel):
        return None
    for contracted in range(1, len(kernel)):
        if activations.endswith(kernel[:contracted]) and len(activations) > contracted \
                and output == activations[:-contracted] + kernel[contracted:] \
                and not set(activations[:-contracted]) & set(kernel):
            return contracted
    return None


def _op(kind, name, inputs, dtype):
    node = node_def_pb2.NodeDef(name=name, op=kind)
    node.input.extend(inputs)
    node.attr["T"].CopyFrom(dtype)
    return node


def _then_gelu(graph, edit, bias_2d, bias_add, prefix, dtype):
    """(the new output, the old node it stands for): bias_2d, standing for bias_add; or, if GELU of
    bias_add follows it, GELU of bias_2d in the remapper's form, standing for the old GELU's last node."""
    gelu_chain, gelu_end = _gelu(graph, bias_add.name)
    if gelu_chain is None:
        return bias_2d, bias_add
    edit.removed.update(node.name for node in gelu_chain)
    return _add_gelu(edit, bias_2d, prefix, dtype), gelu_end


def _add_gelu(edit, x, prefix, dtype):
    """x * ((erf(x * sqrt(1/2)) + 1) * 0.5): the form grappler's remapper fuses into the MatMul before it."""
    def constant(name, value):
        edit.added.append(const_node(f"{prefix}/{name}", np.asarray(value, tf.as_dtype(dtype.type).as_numpy_dtype)))
        return edit.added[-1].name

    def op(kind, name, *inputs):
        edit.added.append(_op(kind, f"{prefix}/{name}", inputs, dtype))
        return edit.added[-1].name

    scaled = op("Mul", "scaled", x, constant("sqrt_one_half", np.sqrt(0.5)))
    plus_one = op("AddV2", "plus_one", op("Erf", "erf", scaled), constant("one", 1.0))
    return op("Mul", "output", op("Mul", "halved", plus_one, constant("one_half", 0.5)), x)


def fuse_layer_norm(graph):
    """An Edit turning each layer normalization over the last axis (as tf.nn.moments and
    tf.nn.batch_normalization build it) into one _MklLayerNorm."""
    edit = Edit()
    for mean in graph.graph_def.node:
        x = node_of(mean.input[0]) if mean.op == "Mean" else None
        if x is None or not mean.attr["keep_dims"].b or x in edit.removed or mean.name in edit.removed:
            continue
        rank, axes = graph.rank(x), graph.constant(mean.input[1])
        # _MklLayerNorm normalizes the last axis of a 2- or 3-axis tensor.
        if rank not in (2, 3) or axes is None or axes.size != 1 or int(axes.reshape(-1)[0]) not in (-1, rank - 1):
            continue
        chain = graph.chain(x, NORMALIZATION, lambda name: graph.constant(name) is not None)
        members = {x} | {node.name for node in chain}
        ends = graph.outside_readers(chain, x)
        outside = [name for node in chain for name in graph.data_inputs(node) if node_of(name) not in members]
        vectors = {name: graph.constant(name) for name in outside if graph.constant(name).ndim == 1
                   and graph.constant(name).size > 1}
        epsilons = [float(graph.constant(name)) for node in chain if node.op in ("AddV2", "Add")
                    for name in graph.data_inputs(node) if node_of(name) not in members and graph.scalar(name)]
        if len(ends) != 1 or len(vectors) != 2 or len(epsilons) != 1:
            continue
        matched = _layer_norm_weights(graph, x, chain, ends[0], vectors, epsilons[0], rank)
        if matched is None:
            continue
        gamma, beta = matched
        node = node_def_pb2.NodeDef(name=f"{ends[0].name}/layer_norm", op="_MklLayerNorm")
        node.input.extend([x, gamma, beta])
        node.attr["T"].type = tf.float32.as_datatype_enum
        node.attr["epsilon"].f = epsilons[0]
        edit.added.append(node)
        edit.removed.update(node.name for node in chain)
        edit.rewired[ends[0].name] = node.name
    return edit


def _layer_norm_weights(graph, x, chain, end, vectors, epsilon, rank):
    """(gamma's input, beta's input) if the chain from x to end computes layer normalization over the last
    axis with them and epsilon, else None. Probed at unit scale, and at a variance ten times epsilon's,
    where only the right placement of epsilon gives the right values."""
    width = next(iter(vectors.values())).size
    rng = np.random.default_rng(0)
    probes = [rng.normal(1.0, 3.0, size=(3, 5, width)),
              rng.normal(0.0, np.sqrt(10 * max(epsilon, 1e-30)), size=(3, 5, width))]
    outputs = [graph.run_chain(x, chain, end, probe.astype(np.float32).reshape((-1, width) if rank == 2 else
                                                                             probe.shape)) for probe in probes]
    for gamma, beta in (tuple(vectors), tuple(vectors)[::-1]):
        for probe, got in zip(probes, outputs):
            normalized = (probe - probe.mean(-1, keepdims=True)) / np.sqrt(probe.var(-1, keepdims=True) + epsilon)
            want = (normalized * vectors[gamma] + vectors[beta]).reshape(got.shape if got.size == probe.size else -1)
            if got.shape != want.shape or np.max(np.abs(got - want) / (np.abs(want) + 1)) > LAYER_NORM_TOLERANCE:
                break
        else:
            return gamma, beta
    return None


def holds_gelu_weights():
    """Whether fuse() holds the weights of dense layers followed by GELU by default: where oneDNN runs in
    float32 on an x86 CPU with AVX2 and without AVX-512, as on the AMD EPYC it was measured on (not
    measured on CPUs with AVX-512)."""
    flags = hardware.cpu_flags()
    return bool(tfhub_classifier.ONEDNN_CPU and "avx2" in flags and "avx512f" not in flags
                and runtime.onednn_enabled() and not runtime.reduced_precision_rewrites())


def hold_gelu_weights(graph, erfs):
    """(An Edit, how many MatMuls it changes): each MatMul whose BiasAdd feeds GELU in _add_gelu's form
    (erfs: the names of those GELUs' Erf nodes) reads its weights through a PlaceholderWithDefault of its
    own, which grappler never folds; other readers of the same weights keep reading them as they were."""
    edit = Edit()
    for erf in erfs:  # fuse_dense and fuse_einsum wrote Erf <- Mul <- BiasAdd <- MatMul of constant weights
        scaled = graph.nodes[node_of(graph.nodes[erf].input[0])]
        bias_add = graph.nodes[node_of(scaled.input[0])]
        matmul = graph.nodes[node_of(bias_add.input[0])]
        held = _held(matmul.name, matmul.input[1], graph.constant(matmul.input[1]))
        swapped = node_def_pb2.NodeDef()
        swapped.CopyFrom(matmul)
        swapped.input[1] = held.name
        edit.added += [held, swapped]
        edit.removed.add(matmul.name)
    return edit, len(edit.removed)


def gelu_chains(graph, erfs):
    """{BiasAdd name: (the GELU's output node, its chain's node names)} for the GELUs in _add_gelu's form
    whose Erf nodes are erfs: x -> Mul (scaled) -> Erf -> AddV2 -> Mul (halved) -> Mul (output, by x)."""
    chains = {}
    for erf in erfs:
        scaled = graph.nodes[node_of(graph.nodes[erf].input[0])]
        plus_one = graph.readers[erf][0]
        halved = graph.readers[plus_one.name][0]
        output = graph.readers[halved.name][0]
        chains[node_of(scaled.input[0])] = (output.name, (scaled.name, erf, plus_one.name, halved.name, output.name))
    return chains


def _held(owner, name, value):
    """A PlaceholderWithDefault named after owner, reading name, whose value is value."""
    held = node_def_pb2.NodeDef(name=f"{owner}/held", op="PlaceholderWithDefault", input=[name])
    held.attr["dtype"].type = tf.as_dtype(value.dtype).as_datatype_enum
    held.attr["shape"].shape.CopyFrom(tf.TensorShape(value.shape).as_proto())
    return held


def shield_normalizations(graph):
    """An Edit feeding the constants of every normalization left unfused (gamma, beta, epsilon) through
    PlaceholderWithDefault, which grappler never folds: its own layer-normalization fusion needs them
    constant, and would otherwise drop the model's epsilon."""
    edit = Edit()
    for mean in graph.graph_def.node:
        if mean.op != "Mean" or not mean.attr["keep_dims"].b:
            continue
        chain = graph.chain(node_of(mean.input[0]), NORMALIZATION, lambda name: graph.constant(name) is not None)
        for node in chain:
            if node.op == "Mean":
                continue
            for name in graph.data_inputs(node):
                value, source = graph.constant(name), node_of(name)
                if value is None or source in edit.rewired:
                    continue
                edit.added.append(_held(source, name, value))
                edit.rewired[source] = edit.added[-1].name
    return edit


@dataclasses.dataclass
class FusedFunction:
    """A token classifier's frozen, rewritten graph as a function of the token dict; the counts say what was
    rewritten (dense layers, GELUs and layer normalizations fused; attentions run as the suite's kernel,
    in chunks, and as saved: recognized, but neither rewrite reproduced them; dense layers before GELU
    whose weights are held; dense layers run as int8 products)."""
    function: object
    dense_layers: int
    gelus: int
    layer_norms: int
    attentions_in_chunks: int
    attention_kernels: int = 0
    attentions_as_saved: int = 0
    gelu_weights_held: int = 0
    int8_layers: int = 0

    def __call__(self, tokens):
        return self.function({key: tf.convert_to_tensor(value) for key, value in tokens.items()})


def _placeholders(concrete_function):
    """{token dict key: the name of the graph's placeholder tensor for it}."""
    signature = concrete_function.structured_input_signature[0][0]
    arguments = concrete_function.inputs[:len(tf.nest.flatten(signature))]
    return {key: tensor.name for key, tensor in tf.nest.pack_sequence_as(signature, arguments).items()}


INT8_RANGES = ("batch", "calibrated")  # over what int8 layers quantize their activations (fuse's int8_ranges)


def fuse(concrete_function, log=print, kernel=True, gelu_weights_held=None, int8=None, int8_after_gelu=True,
         int8_calibration=None, int8_ranges="batch"):
    """The FusedFunction of a concrete function taking one dict of tensors and returning one tensor. Its
    attentions run as one kernel each (unless kernel is False) if the graph runs in float32
    (runtime.set_precision) and the kernel can be compiled here; if it can't, a note says why.
    gelu_weights_held: whether to hold the weights of dense layers before GELU (None: holds_gelu_weights()).
    int8: None, or the dense layers as oneDNN int8 products with their weights' scales "per-layer" or
    "per-column" (model/quantization.py), GELU included; int8_after_gelu: False leaves those reading a
    GELU's output in float32; int8_calibration: a token dict whose activations set each int8 layer's
    SmoothQuant scales (None: no smoothing); int8_ranges: "batch" quantizes each int8 layer's activations
    over each batch's range, "calibrated" over the range they took on int8_calibration (widened a little),
    the same for every batch. A GELU's layer left in float32 holds its weights as without int8."""
    if int8_ranges not in INT8_RANGES:
        raise ValueError(f"int8 activation ranges must be one of {', '.join(INT8_RANGES)}, not {int8_ranges!r}")
    if int8 and int8_ranges == "calibrated" and int8_calibration is None:
        raise ValueError("calibrated int8 activation ranges need calibration tokens (int8_calibration)")
    graph_def = frozen_graph(concrete_function)
    dense = fuse_dense(Graph(graph_def))
    graph_def = apply(graph_def, dense)
    einsum = fuse_einsum(Graph(graph_def))
    graph_def = apply(graph_def, einsum)
    held, int8_layers, erfs = 0, 0, [node.name for node in dense.added + einsum.added if node.op == "Erf"]
    if int8:
        bias_adds = [node.name for node in dense.added + einsum.added if node.op == "BiasAdd"]
        graph = Graph(graph_def)
        gelus, ranges, extremes = gelu_chains(graph, erfs), None, None
        if int8_calibration is not None:
            inputs = quantization.activation_inputs(graph, bias_adds, gelus, int8_after_gelu)
            feeds = {tensor: int8_calibration[key] for key, tensor in _placeholders(concrete_function).items()}
            values = run_as_function(graph_def, inputs.values(), feeds)
            ranges = {key: np.abs(value).max(0) for key, value in zip(inputs, values)}
            if int8_ranges == "calibrated":
                extremes = {key: (value.min(0), value.max(0)) for key, value in zip(inputs, values)}
        quantize, int8_layers = quantization.quantize_dense(graph, bias_adds, int8, gelus=gelus,
                                                            after_gelu=int8_after_gelu, channel_ranges=ranges,
                                                            activation_ranges=extremes)
        graph_def = apply(graph_def, quantize)
        erfs = [erf for erf in erfs if erf not in quantize.removed]
    if erfs and (holds_gelu_weights() if gelu_weights_held is None else gelu_weights_held):
        hold, held = hold_gelu_weights(Graph(graph_def), erfs)
        graph_def = apply(graph_def, hold)
    layer_norm = fuse_layer_norm(Graph(graph_def))
    graph_def = apply(graph_def, layer_norm)
    graph_def = apply(graph_def, shield_normalizations(Graph(graph_def)))
    graph, kernels = Graph(graph_def), 0
    attentions = len(attention_chunks.find(graph))
    matches = attention_kernel.find(graph) if kernel and not runtime.reduced_precision_rewrites() else []
    if matches:
        try:
            library = kernel_library.load("fused_attention", log)
        except kernel_library.Unavailable as error:
            log(f"note: attention runs as TensorFlow's ops: {error}")
        else:
            kernel_edit, kernels = attention_kernel.replace(graph, matches, library, log)
            graph_def = apply(graph_def, kernel_edit)
            graph = Graph(graph_def) if kernels else graph
    graph_def, chunked = attention_chunks.chunk(graph)
    signature = concrete_function.structured_input_signature[0][0]
    placeholders = _placeholders(concrete_function)
    output = concrete_function.outputs[0].name
    kept = [without_unread(graph_def, keep={node_of(output)})]  # let go once traced: the function holds the weights

    @tf.function(input_signature=[signature])
    def function(tokens):
        for attention in chunked:
            attention.add_to_graph()
        return tf.graph_util.import_graph_def(
            kept[0], input_map={placeholders[key]: tokens[key] for key in placeholders},
            return_elements=[output], name="fused")[0]

    traced = function.get_concrete_function()
    kept.clear()
    added = dense.added + einsum.added
    return FusedFunction(traced, sum(node.op == "BiasAdd" for node in added),
                         sum(node.op == "Erf" for node in added), len(layer_norm.added), len(chunked), kernels,
                         max(0, attentions - kernels - len(chunked)), held, int8_layers)
