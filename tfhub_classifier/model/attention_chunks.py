"""A frozen graph's attention computed a few texts of the batch at a time, so its scores stay in cache.

A BERT's attention builds [batch, heads, length, length] scores, scales and masks them, takes the
softmax and multiplies by the values: at 512 tokens and 12 heads one text's scores are 3.1 M numbers,
a batch of 128's 400 M (800 MB in bfloat16), which each of those kernels streams through memory.
Run on a few texts at a time (as many as SCORES_PER_CHUNK allows), the scores one kernel writes are
still in the CPU's cache when the next reads them; each text's arithmetic is the same.

Each attention, from the product of queries and keys to the product with the values, is moved into a
function that loops over chunks of the batch axis, and the graph calls it in its place
(docs/benchmarks.md#the-fused-graph measures it). An attention is moved only if both products keep the
batch axis first and apart, every op between them keeps the scores' rank, nothing outside reads what
it computes on the way, and its chunked function, run a text at a time on probe values, gives what
its nodes give on the whole batch.
"""
import dataclasses

import numpy as np
from tensorflow.core.framework import attr_value_pb2, node_def_pb2

from tfhub_classifier import runtime
from tfhub_classifier.model.graph_edits import Edit, apply, const_node, cut_out, node_of, probe_values, run_nodes
from tfhub_classifier.runtime import tf

# Score numbers a chunk may hold (4 MiB in bfloat16): at 512 tokens a text a chunk, at 128 ten; measured
# against the whole batch at once in docs/benchmarks.md#the-fused-graph.
SCORES_PER_CHUNK = 2 ** 21
PRODUCTS = {"BatchMatMulV2", "BatchMatMulV3", "Einsum"}
ON_THE_SCORES = {"AddV2", "Add", "Mul", "RealDiv", "Sub", "Identity"}  # scaling and masking
MOST_ON_THE_SCORES = 4  # ops between the product and the softmax (BERT has at most a scale and a mask)
PROBE_TEXTS, PROBE_WIDTH = 3, 5  # the self-check's batch, and its size for each axis the graph leaves open
PROBE_TOLERANCE = 1e-5  # float32, the same kernels on fewer rows


@dataclasses.dataclass
class Attention:
    """One attention's nodes, from the scores' product to the product with the values (the output)."""
    scores: object
    nodes: list
    output: object


def _keeps_batch_first(graph, node):
    """Whether a product of two operands has its batch axis at axis 0 of both and of its result."""
    operands = graph.data_inputs(node)
    if len(operands) != 2:
        return False
    if node.op == "Einsum":
        equation = node.attr["equation"].s.decode().replace(" ", "")
        if "..." in equation or "->" not in equation:
            return False
        terms = equation.replace("->", ",").split(",")
        batch = terms[0][:1]
        return all(term[:1] == batch and term.count(batch) == 1 for term in terms)
    ranks = {graph.rank(name) for name in operands}
    return len(ranks) == 1 and None not in ranks and ranks.pop() >= 3


def find(graph):
    """The attentions in graph (a graph_edits.Graph) that can run a chunk of the batch at a time."""
    found, taken = [], set()
    for softmax in graph.graph_def.node:
        if softmax.op != "Softmax":
            continue
        path = _path_to_product(graph, graph.nodes.get(node_of(softmax.input[0])), MOST_ON_THE_SCORES)
        probabilities, after = softmax, []
        while len(graph.readers[probabilities.name]) == 1 and graph.readers[probabilities.name][0].op == "Identity":
            probabilities = graph.readers[probabilities.name][0]
            after.append(probabilities)
        readers = graph.readers[probabilities.name]
        if path is None or len(readers) != 1 or readers[0].op not in PRODUCTS:
            continue
        output = readers[0]
        nodes = path + [softmax] + after + [output]
        names = {node.name for node in nodes}
        scores_rank = graph.rank(path[0].name)
        if names & taken or graph.outside_readers(nodes[:-1], output.name) \
                or not (_keeps_batch_first(graph, path[0]) and _keeps_batch_first(graph, output)) \
                or any(graph.rank(node.name) != scores_rank for node in nodes[:-1]) \
                or any(name.startswith("^") for node in nodes for name in node.input) \
                or any(graph.rank(name) is None for node in nodes for name in graph.data_inputs(node)
                       if node_of(name) not in names):
            continue
        taken |= names
        found.append(Attention(path[0], nodes, output))
    return found


def _path_to_product(graph, node, steps):
    """[product, ops on its result..., node]: the chain from a product of PRODUCTS up to node, through
    scaling and masking ops only (None if there is none within steps)."""
    if node is None:
        return None
    if node.op in PRODUCTS:
        return [node]
    if node.op not in ON_THE_SCORES or steps == 0:
        return None
    for name in graph.data_inputs(node):
        path = _path_to_product(graph, graph.nodes.get(node_of(name)), steps - 1)
        if path is not None:
            return path + [node]
    return None


def chunk(graph):
    """(GraphDef, functions): graph's GraphDef with each attention find() returns and its check passes
    replaced by a call of a function that computes it a chunk of the batch at a time, and those
    functions (concrete functions, to add to the graph the GraphDef is imported into)."""
    calls, moved, functions = [], set(), []
    for attention in find(graph):
        try:  # chunks only save time: an attention they can't reproduce, or fail to build, stays as it is
            nodes, function = _call(graph, attention)
        except Exception:  # noqa: BLE001
            continue
        calls += nodes
        moved |= {node.name for node in attention.nodes}
        functions.append(function)
    return apply(graph.graph_def, Edit(added=calls, removed=moved)), functions


def _call(graph, attention):
    """([the chunk budget's constant, a node calling the chunked attention, named as its output so its
    readers stay wired], the concrete function it calls). Raises ValueError if the function, run a text
    at a time on probe values, differs from the attention's nodes run on the whole batch."""
    piece = cut_out(graph, attention.nodes, "chunk")
    inputs, placeholders, constants, body, renamed = (piece.inputs, piece.placeholders, piece.constants, piece.body,
                                                      piece.renamed)
    dtypes = [graph.tensor(name).dtype for name in inputs]
    # The products' operands hold the batch on axis 0 (find() checked); an element-wise op's operand does if it
    # has the scores' rank, and one of a lower rank broadcasts without the batch axis, so it is passed whole.
    products = {name for node in (attention.scores, attention.output) for name in graph.data_inputs(node)}
    scores_rank = graph.rank(attention.scores.name)
    sliced = [name in products or graph.rank(name) == scores_rank for name in inputs]
    if any(cut and graph.tensor(name).shape[0] not in (None, 1) for name, cut in zip(inputs, sliced)):
        raise ValueError("an operand's axis 0 has a fixed size: it may not be the batch")
    operands = [renamed[name] for name in graph.data_inputs(attention.scores)]
    output_dtype = graph.tensor(attention.output.name).dtype

    def run(values, scores_per_chunk):
        by_name = dict(zip(placeholders, values))
        by_name |= {node.name: tf.constant(graph.constant(name)) for name, node in constants.items()}
        per_text = _scores_per_text(attention.scores, *(by_name[name] for name in operands))
        return _in_chunks(body, attention.output.name, output_dtype, list(zip(values, sliced)), per_text,
                          scores_per_chunk)

    function = tf.function(run).get_concrete_function([tf.TensorSpec(None, dtype) for dtype in dtypes],
                                                      tf.TensorSpec([], tf.int64))
    _check(graph, inputs, sliced, body, attention.output.name, function)
    budget = const_node(f"{attention.output.name}/scores_per_chunk", np.int64(SCORES_PER_CHUNK))
    call = node_def_pb2.NodeDef(name=attention.output.name, op="PartitionedCall", input=inputs + [budget.name])
    call.attr["Tin"].list.type.extend([dtype.as_datatype_enum for dtype in dtypes] + [tf.int64.as_datatype_enum])
    call.attr["Tout"].list.type.append(output_dtype.as_datatype_enum)
    call.attr["f"].func.CopyFrom(attr_value_pb2.NameAttrList(name=function.function_def.signature.name))
    return [budget, call], function


def _check(graph, inputs, sliced, body, output, function):
    """Raises ValueError unless the chunked function, a text a chunk, gives what body gives on the whole
    probe batch: random values shaped as the graph knows each input, PROBE_TEXTS along the batch axis."""
    values = probe_values(graph, inputs, PROBE_TEXTS, PROBE_WIDTH, batch_first=sliced)
    with runtime.float32_rewrites():  # both in float32, whatever --precision: the rewrite must be exact
        whole = run_nodes(list(body.node), output, {f"chunk_input_{k}:0": value for k, value in enumerate(values)})
        chunked = function([tf.constant(value) for value in values], tf.constant(1, tf.int64)).numpy()
    if chunked.shape != whole.shape or not np.allclose(chunked, whole, rtol=PROBE_TOLERANCE, atol=PROBE_TOLERANCE):
        raise ValueError("the chunked attention differs from the attention on probe values")


def _scores_per_text(product, x, y):
    """How many numbers one text's scores hold: the size of product's result over one row of axis 0."""
    if product.op == "Einsum":
        terms = product.attr["equation"].s.decode().replace(" ", "").replace("->", ",").split(",")
        sizes = {}
        for term, value in ((terms[0], x), (terms[1], y)):
            for axis, letter in enumerate(term):
                sizes.setdefault(letter, tf.shape(value, out_type=tf.int64)[axis])
        return tf.reduce_prod(tf.stack([sizes[letter] for letter in terms[2][1:]]))
    x_shape, y_shape = tf.shape(x, out_type=tf.int64), tf.shape(y, out_type=tf.int64)
    rows = x_shape[-1] if product.attr["adj_x"].b else x_shape[-2]
    columns = y_shape[-2] if product.attr["adj_y"].b else y_shape[-1]
    return tf.reduce_prod(tf.maximum(x_shape[1:-2], y_shape[1:-2])) * rows * columns


def _in_chunks(body, output, dtype, inputs, per_text, scores_per_chunk):
    """body's output over inputs [(tensor, whether its axis 0 is the batch)], a chunk of texts at a time:
    as many as scores_per_chunk holds at per_text numbers a text, and at least one."""
    batch = tf.reduce_max([tf.shape(value)[0] for value, cut in inputs if cut])
    rows = tf.cast(tf.maximum(tf.constant(1, tf.int64), scores_per_chunk // tf.maximum(per_text, 1)), tf.int32)

    def attention(feeds):
        return tf.graph_util.import_graph_def(body, input_map=feeds, return_elements=[f"{output}:0"], name="chunk")[0]

    def step(start, index, pieces):
        feeds = {}
        for k, (value, cut) in enumerate(inputs):
            if cut:  # an input of one row along the batch axis broadcasts: it is passed whole
                size = tf.shape(value)[0]
                begin = tf.minimum(start, tf.maximum(size - 1, 0))
                value = value[begin:begin + rows]
            feeds[f"chunk_input_{k}:0"] = value
        return start + rows, index + 1, pieces.write(index, attention(feeds))

    def in_chunks():
        pieces = tf.TensorArray(dtype, size=0, dynamic_size=True, infer_shape=False)
        # Chunks may overlap (tf.while_loop's default): one at a time ran 10% slower at 512 tokens, the
        # cores idle between a chunk's small ops.
        _, _, pieces = tf.while_loop(lambda start, index, pieces: start < batch, step, (0, 0, pieces))
        return pieces.concat()

    # A batch that fits in one chunk (a served text, an empty batch) skips the loop and its bookkeeping.
    def at_once():  # (tf.identity brings each input into the branch: import_graph_def doesn't capture)
        return attention({f"chunk_input_{k}:0": tf.identity(value) for k, (value, _) in enumerate(inputs)})

    return tf.cond(batch <= rows, at_once, in_chunks)
