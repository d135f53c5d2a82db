"""A frozen float32 graph's attention run as one kernel of the suite's own (model/kernels/fused_attention.cc).

TensorFlow computes a BERT's attention as separate ops over the whole batch: the product of queries and
keys, a scale, the additive mask, softmax, the product with the values, and transposes of the heads
around them, each writing its [batch, heads, length, length] or [batch, heads, length, size] result to
memory. The kernel does it per text, head and block of query rows with the scores in cache, and reads
and writes the heads in place. Where it can't be compiled (no C++ compiler), attention stays TensorFlow's
ops, in chunks (model/attention_chunks.py); docs/benchmarks.md#the-fused-graph measures the two.

An attention (as attention_chunks.find() finds them) is replaced when its ops are those forms:
BatchMatMul of queries and keys (keys adjoint) or Keras' Einsum of them; then at most a scale by a
scalar constant and an added mask of rank 4, the softmax, Identity nodes, and BatchMatMul or Einsum with
the values. A transpose of the heads before an operand or after the output is taken into the kernel.
Each replacement is checked on probe values against the nodes it replaces, and left as it was if it differs.
"""
import dataclasses

import numpy as np
from tensorflow.core.framework import node_def_pb2

from tfhub_classifier import cli, runtime
from tfhub_classifier.model import attention_chunks
from tfhub_classifier.model.graph_edits import Edit, const_node, cut_out, first_output, node_of, probe_values, run_nodes
from tfhub_classifier.runtime import tf

OP = "ClassifierFusedAttention"
MATMULS = {"BatchMatMulV2", "BatchMatMulV3"}
# Keras' MultiHeadAttention (as TF-Hub's BERTs): queries and keys [batch, length, heads, size], scores
# [batch, heads, queries, keys]; which operand of the scores' Einsum is the query's, which the key's.
SCORE_EQUATIONS = {"aecd,abcd->acbe": (1, 0), "abcd,aecd->acbe": (0, 1)}
OUTPUT_EQUATION = "acbe,aecd->abcd"  # the probabilities with the values [batch, keys, heads, size]
HEADS_SWAPPED = [0, 2, 1, 3]  # the transpose between [batch, heads, length, size] and [batch, length, heads, size]
PROBE_TEXTS, PROBE_WIDTH = 3, 70  # past one of the kernel's blocks of query rows (60, or 64)
PROBE_TOLERANCE = 1e-5  # float32, the same arithmetic summed in another order


@dataclasses.dataclass
class Match:
    """An attention as the kernel takes it: its operands (the mask None if it has none), the axis of
    the heads in each of them and in the output (1 or 2), the scale, the nodes it replaces (the last of
    which it is named after), and the transposes of the heads before its operands that it takes in."""
    query: str
    key: str
    value: str
    mask: str
    heads_axes: list
    scale: float
    nodes: list
    transposes: list


def find(graph):
    """The Matches of graph's (a graph_edits.Graph's) float32 attentions the kernel computes."""
    return [match for match in map(lambda attention: _match(graph, attention), attention_chunks.find(graph)) if match]


def _match(graph, attention):
    nodes = attention.nodes
    product, softmax = nodes[0], next(node for node in nodes if node.op == "Softmax")
    operands = graph.data_inputs(product)
    if product.op in MATMULS and not product.attr["adj_x"].b and product.attr["adj_y"].b:
        (query, key), axes = operands, [1, 1]
    elif product.op == "Einsum" and _equation(product) in SCORE_EQUATIONS:
        q, k = SCORE_EQUATIONS[_equation(product)]
        query, key, axes = operands[q], operands[k], [2, 2]
    else:
        return None
    scale, mask, previous = 1.0, None, product.name
    for node in nodes[1:nodes.index(softmax)]:
        inputs = graph.data_inputs(node)
        other = [name for name in inputs if node_of(name) != previous]
        if len(other) != len(inputs) - 1 or not all(first_output(name) for name in inputs if name not in other):
            return None
        if node.op in ("Mul", "RealDiv") and mask is None and scale == 1.0 and graph.scalar(other[0]) \
                and (node.op == "Mul" or node_of(inputs[0]) == previous):
            factor = np.float32(graph.constant(other[0]).reshape(()))
            scale = float(factor if node.op == "Mul" else np.float32(1) / factor)
        elif node.op in ("AddV2", "Add") and mask is None and graph.rank(other[0]) == 4:
            mask = other[0]
        elif node.op != "Identity":
            return None
        previous = node.name
    output = nodes[-1]
    probabilities, value = graph.data_inputs(output)
    if node_of(probabilities) != nodes[-2].name:
        return None
    if output.op in MATMULS and not output.attr["adj_x"].b and not output.attr["adj_y"].b:
        axes += [1, 1]
    elif output.op == "Einsum" and _equation(output) == OUTPUT_EQUATION:
        axes += [2, 2]
    else:
        return None
    operands, transposes = [query, key, value], []
    for k, name in enumerate(operands):  # a transpose of the heads before an operand: read what it transposes
        node = graph.nodes.get(node_of(name))
        if axes[k] == 1 and first_output(name) and _swaps_heads(graph, node):
            operands[k], axes[k] = graph.data_inputs(node)[0], 2
            transposes += [node] if node not in transposes else []
    readers = graph.readers[output.name]
    if axes[3] == 1 and len(readers) == 1 and _swaps_heads(graph, readers[0]):
        nodes, axes[3] = nodes + [readers[0]], 2
    tensors = operands + ([mask] if mask else [])
    if any(graph.tensor(name) is None or graph.tensor(name).dtype != tf.float32 for name in tensors + [output.name]):
        return None
    return Match(*operands, mask, axes, scale, nodes, transposes)


def _equation(node):
    return node.attr["equation"].s.decode().replace(" ", "")


def _swaps_heads(graph, node):
    if node is None or node.op != "Transpose":
        return False
    perm = graph.constant(node.input[1])
    return perm is not None and perm.tolist() == HEADS_SWAPPED and graph.rank(node.input[0]) == 4


def replace(graph, matches, library, log=print):
    """(Edit, how many attentions it replaces): each of matches (find(graph)'s) whose kernel (library's,
    from kernel_library.load("fused_attention")) gives its nodes' values on probe values, as one kernel
    node; a note says how many stay as they were, and why the first did."""
    edit, count, reasons = Edit(), 0, []
    for match in matches:
        try:  # the kernel only saves time: an attention it doesn't reproduce stays as it is
            _check(graph, match, library)
        except Exception as error:  # noqa: BLE001
            reasons.append(cli.error_summary(error))
            continue
        replaced = {node.name for node in match.nodes}
        edit.added += _kernel_nodes(match)
        edit.removed |= replaced | {node.name for node in match.transposes
                                    if all(reader.name in replaced for reader in graph.readers[node.name])}
        count += 1
    if reasons:
        log(f"note: {len(reasons)} of {len(matches)} attentions stay TensorFlow's ops: {reasons[0]}")
    return edit, count


def _kernel_nodes(match):
    """[the zero mask if the attention has none, the kernel's node, named as the last node it replaces]."""
    name = match.nodes[-1].name
    added = []
    query, key, value, mask = match.query, match.key, match.value, match.mask
    if mask is None:
        added.append(const_node(f"{name}/no_mask", np.zeros([1, 1, 1, 1], np.float32)))
        mask = added[0].name
    node = node_def_pb2.NodeDef(name=name, op=OP, input=[query, key, value, mask])
    node.attr["scale"].f = match.scale
    node.attr["heads_axes"].list.i.extend(match.heads_axes)
    return added + [node]


def _check(graph, match, library):
    """Raises ValueError unless the kernel gives what match's nodes give, on random values shaped as the
    graph knows each input (PROBE_TEXTS texts, PROBE_WIDTH for every other axis it leaves open)."""
    piece = cut_out(graph, match.transposes + match.nodes, "kernel")
    values = dict(zip(piece.inputs, probe_values(graph, piece.inputs, PROBE_TEXTS, PROBE_WIDTH)))
    operands = [match.query, match.key, match.value] + ([match.mask] if match.mask else [])
    if not set(operands) <= set(values):
        raise ValueError("the kernel reads a tensor the attention's nodes don't")
    feeds = {f"{placeholder}:0": values[name] for name, placeholder in zip(piece.inputs, piece.placeholders)}
    with runtime.float32_rewrites():
        expected = run_nodes(list(piece.body.node), match.nodes[-1].name, feeds)
    mask = values[match.mask] if match.mask else np.zeros([1, 1, 1, 1], np.float32)
    got = library.classifier_fused_attention(values[match.query], values[match.key], values[match.value], mask,
                                             scale=match.scale, heads_axes=match.heads_axes).numpy()
    if got.shape != expected.shape or not np.allclose(got, expected, rtol=PROBE_TOLERANCE, atol=PROBE_TOLERANCE):
        raise ValueError("the kernel differs from the attention's nodes on probe values")
