"""A frozen graph's attention computed a few texts of the batch at a time, so its scores stay in cache.

A BERT's attention builds [batch, heads, length, length] scores, adds the mask, takes the softmax and
multiplies by the values: at 512 tokens and 12 heads one text's scores are 3.1 M numbers, a batch of
128's 400 M (800 MB in bfloat16), which each of those kernels streams through memory. Run on a few
texts at a time (as many as SCORES_PER_CHUNK allows), the scores one kernel writes are still in the
CPU's cache when the next reads them; the arithmetic is the same, text by text.

Each attention, from the product of queries and keys to the product with the values, is moved into
a function that loops over chunks of the batch axis; the graph calls it in its place
(docs/benchmarks.md#the-fused-graph measures it). An attention is only moved when every op in it
keeps the batch axis first and apart, and when nothing outside reads its scores.
"""
import dataclasses

from tensorflow.core.framework import attr_value_pb2, graph_pb2, node_def_pb2
from tensorflow.python.framework import tensor_util

from tfhub_classifier.runtime import tf

# Score elements a chunk may hold: 4 MiB in bfloat16, about one core's L2 cache on the CPUs measured.
SCORES_PER_CHUNK = 2 ** 21
PRODUCTS = {"BatchMatMulV2", "BatchMatMulV3", "Einsum"}
ON_THE_SCORES = {"AddV2", "Add", "Mul", "RealDiv", "Sub", "Identity"}  # scaling and masking
MOST_ON_THE_SCORES = 4  # ops between the product and the softmax (BERT has at most a scale and a mask)


@dataclasses.dataclass
class Attention:
    """One attention's nodes, from the scores' product to the product with the values (the output)."""
    scores: object
    nodes: list
    output: object


def _source(name):
    return name.lstrip("^").split(":")[0]


def _data_inputs(node):
    return [name for name in node.input if not name.startswith("^")]


def _keeps_batch_first(node, rank):
    """Whether a product's batch axis is axis 0 of both operands and of its result."""
    if node.op == "Einsum":
        equation = node.attr["equation"].s.decode().replace(" ", "")
        if "..." in equation or "->" not in equation:
            return False
        terms = equation.replace("->", ",").split(",")
        batch = terms[0][:1]
        return all(term[:1] == batch and term.count(batch) == 1 for term in terms)
    ranks = {rank(name) for name in _data_inputs(node)}
    return len(ranks) == 1 and None not in ranks and ranks.pop() >= 3


def find(graph):
    """The attentions in graph (fusion.Graph) that can run a chunk of the batch at a time."""
    found = []
    for softmax in graph.graph_def.node:
        if softmax.op != "Softmax":
            continue
        path = _path_to_product(graph, graph.nodes.get(_source(softmax.input[0])), MOST_ON_THE_SCORES)
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
        rank = graph.rank
        if graph.outside_readers(nodes[:-1], output.name) or not all(
                _keeps_batch_first(node, rank) for node in (path[0], output)) or any(
                rank(name) is None for node in nodes for name in _data_inputs(node) if _source(name) not in names):
            continue
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
    for name in _data_inputs(node):
        path = _path_to_product(graph, graph.nodes.get(_source(name)), steps - 1)
        if path is not None:
            return path + [node]
    return None


def chunk(graph):
    """(GraphDef, functions): graph's GraphDef with each attention find() returns replaced by a call
    of a function that computes it a chunk of the batch at a time, and those functions (concrete
    functions, to add to the graph the GraphDef is imported into)."""
    attentions = find(graph)
    moved = {node.name for attention in attentions for node in attention.nodes}
    out = graph_pb2.GraphDef()
    out.versions.CopyFrom(graph.graph_def.versions)
    out.library.CopyFrom(graph.graph_def.library)
    out.node.extend(node for node in graph.graph_def.node if node.name not in moved)
    functions = []
    for attention in attentions:
        call, function = _call(graph, attention)
        out.node.append(call)
        functions.append(function)
    return out, functions


def _call(graph, attention):
    """(a node calling the chunked attention, named as its output so its readers stay wired; the
    concrete function it calls)."""
    names = {node.name for node in attention.nodes}
    body, inputs, constants = graph_pb2.GraphDef(), [], {}
    for node in attention.nodes:  # what the attention reads from outside it: constants are copied into the body
        for name in _data_inputs(node):
            value = None if _source(name) in names or name in inputs or name in constants else graph.constant(name)
            if value is not None:
                constants[name] = f"constant_{len(constants)}"
                body.node.add(name=constants[name], op="Const").attr["value"].tensor.CopyFrom(
                    tensor_util.make_tensor_proto(value))
                body.node[-1].attr["dtype"].type = tf.as_dtype(value.dtype).as_datatype_enum
            elif _source(name) not in names and name not in inputs and name not in constants:
                inputs.append(name)
    # The products' operands hold the batch on axis 0 (find() checked); an element-wise op's operand does if it
    # has the scores' rank, and one of a lower rank broadcasts without the batch axis, so it is passed whole.
    products = {name for node in (attention.scores, attention.output) for name in _data_inputs(node)}
    full_rank = graph.rank(attention.scores.name)
    sliced = [name in products or graph.rank(name) == full_rank for name in inputs]
    dtypes = [graph.tensor(name).dtype for name in inputs]
    for k, dtype in enumerate(dtypes):
        body.node.add(name=f"input_{k}", op="Placeholder").attr["dtype"].type = dtype.as_datatype_enum
    for node in attention.nodes:
        copy = body.node.add()
        copy.CopyFrom(node)
        copy.ClearField("device")
        del copy.input[:]
        copy.input.extend(f"input_{inputs.index(name)}" if name in inputs else constants.get(name, name)
                          for name in _data_inputs(node))

    def run(values):
        operands = [values[inputs.index(name)] if name in inputs else tf.constant(graph.constant(name))
                    for name in _data_inputs(attention.scores)]
        return _in_chunks(body, attention, list(zip(values, sliced)), _scores_per_text(attention.scores, *operands))

    function = tf.function(run).get_concrete_function([tf.TensorSpec(None, dtype) for dtype in dtypes])
    call = node_def_pb2.NodeDef(name=attention.output.name, op="PartitionedCall", input=inputs)
    call.attr["Tin"].list.type.extend(dtype.as_datatype_enum for dtype in dtypes)
    call.attr["Tout"].list.type.append(attention.output.attr["T"].type)
    call.attr["f"].func.CopyFrom(attr_value_pb2.NameAttrList(name=function.function_def.signature.name))
    return call, function


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


def _in_chunks(body, attention, inputs, per_text):
    """The attention of body over inputs [(tensor, whether its axis 0 is the batch)], a chunk of texts
    at a time: as many as SCORES_PER_CHUNK holds at per_text numbers a text, and at least one."""
    batch = tf.reduce_max([tf.shape(value)[0] for value, cut in inputs if cut])
    rows = tf.cast(tf.maximum(tf.constant(1, tf.int64), SCORES_PER_CHUNK // tf.maximum(per_text, 1)), tf.int32)

    def step(start, index, pieces):
        feeds = {}
        for k, (value, cut) in enumerate(inputs):
            if cut:  # an input of one row along the batch axis broadcasts: it is passed whole
                size = tf.shape(value)[0]
                begin = tf.minimum(start, tf.maximum(size - 1, 0))
                value = value[begin:begin + rows]
            feeds[f"input_{k}:0"] = value
        output = tf.graph_util.import_graph_def(body, input_map=feeds, return_elements=[f"{attention.output.name}:0"],
                                                name="chunk")[0]
        return start + rows, index + 1, pieces.write(index, output)

    pieces = tf.TensorArray(attention.output.attr["T"].type, size=0, dynamic_size=True, infer_shape=False)
    # At least one step, so that an empty batch gives an empty result.
    _, _, pieces = tf.while_loop(lambda start, index, pieces: tf.logical_or(start < batch, index == 0), step,
                                 (0, 0, pieces))
    return pieces.concat()

