"""Editing a frozen GraphDef: who reads each node, the constants it computes, nodes swapped in and out.

The graph rewrites (model/fusion.py, model/attention_chunks.py) work on a copy of a concrete function's
graph with its variables frozen into constants; these are the steps they share. TensorFlow has no public
API for editing a GraphDef in place, so this is written by hand on its protocol buffers.
"""
import collections
import dataclasses

import numpy as np
from tensorflow.core.framework import graph_pb2, node_def_pb2
from tensorflow.python.framework import convert_to_constants, tensor_util

from tfhub_classifier.runtime import tf

ELEMENTWISE = {"Mul", "RealDiv", "AddV2", "Add", "Sub", "Neg", "Erf", "Erfc", "Tanh", "Pow", "Square", "Sqrt", "Rsqrt",
               "Reciprocal", "Cast"}
# What may compute a constant from constants (ConcatV2: Keras' Tensordot builds its permutation by one).
FOLDABLE = ELEMENTWISE | {"Reshape", "ExpandDims", "Squeeze", "ConcatV2"}


@dataclasses.dataclass
class Edit:
    """Nodes to add, nodes to drop, and the readers of a dropped node's output to point at a new one."""
    added: list = dataclasses.field(default_factory=list)
    removed: set = dataclasses.field(default_factory=set)
    rewired: dict = dataclasses.field(default_factory=dict)


def node_of(name):
    """The node an input ("node", "node:0", "^node") reads."""
    return name.lstrip("^").split(":")[0]


def first_output(name):
    return ":" not in name or name.rpartition(":")[2] == "0"


class Graph:
    """A GraphDef with who reads each node, and the value of any tensor computed from constants alone."""

    def __init__(self, graph_def):
        self.graph_def = graph_def
        self.nodes = {node.name: node for node in graph_def.node}
        self.readers = collections.defaultdict(list)
        for node in graph_def.node:
            for name in node.input:
                self.readers[node_of(name)].append(node)
        self._values = {}
        self._shapes = None  # a tf.Graph of graph_def, imported when a rank is first asked for

    def rank(self, name):
        """The static rank of tensor `name` ("node" or "node:k"; None if unknown), from TensorFlow's shape inference."""
        tensor = self.tensor(name)
        return None if tensor is None else tensor.shape.rank

    def tensor(self, name):
        """Tensor `name` ("node" or "node:k") of graph_def imported into a tf.Graph (None if there is none),
        for its static shape and dtype."""
        if self._shapes is None:
            with tf.Graph().as_default() as graph:
                tf.graph_util.import_graph_def(self.graph_def, name="")
            self._shapes = graph
        try:
            return self._shapes.get_tensor_by_name(name if ":" in name else name + ":0")
        except (KeyError, ValueError):
            return None

    @staticmethod
    def data_inputs(node):
        return [name for name in node.input if not name.startswith("^")]

    def constant(self, name):
        """The value of input `name` if constants alone compute it, else None."""
        if not first_output(name) or name.startswith("^"):
            return None
        name = node_of(name)
        if name not in self._values:
            self._values[name] = self._fold(name)
        return self._values[name]

    def _fold(self, name):
        node = self.nodes.get(name)
        if node is None:
            return None
        if node.op == "Const":
            return tensor_util.MakeNdarray(node.attr["value"].tensor)
        if node.op == "Identity":  # a frozen variable reads its constant through one
            return self.constant(node.input[0])
        if node.op not in FOLDABLE:
            return None
        inputs = [self.constant(name) for name in self.data_inputs(node)]
        if any(value is None for value in inputs):
            return None
        return run_nodes([const_node(f"input_{k}", value) for k, value in enumerate(inputs)]
                    + [copy_node(node, [f"input_{k}" for k in range(len(inputs))])], node.name, {})

    def scalar(self, name):
        value = self.constant(name)
        return value is not None and value.size == 1

    def chain(self, start, ops, other_input_ok):
        """The nodes downstream of start, in order, each of `ops` and reading only start, earlier
        nodes of the chain, or inputs other_input_ok accepts."""
        members, chain = {start}, []
        pending = list(self.readers[start])
        while pending:
            node = pending.pop(0)
            if node.name in members or node.op not in ops:
                continue
            inputs = self.data_inputs(node)
            if all((node_of(name) in members and first_output(name)) or other_input_ok(name) for name in inputs):
                members.add(node.name)
                chain.append(node)
                pending.extend(self.readers[node.name])  # re-queues a reader turned away before this joined
        return chain

    def outside_readers(self, nodes, start):
        """The nodes among `nodes` (plus start) that something outside them reads."""
        members = {start} | {node.name for node in nodes}
        return [node for node in nodes if any(reader.name not in members for reader in self.readers[node.name])]

    def run_chain(self, start, chain, output, probe):
        """output's value when probe is fed in place of start, the chain's constants folded."""
        members = {node.name for node in chain}
        constants = {node_of(name) for node in chain for name in self.data_inputs(node)
                     if node_of(name) not in members and node_of(name) != start}
        placeholder = node_def_pb2.NodeDef(name=start, op="Placeholder")
        placeholder.attr["dtype"].type = tf.float32.as_datatype_enum
        nodes = [placeholder] + [const_node(name, self.constant(name)) for name in constants]
        nodes += [copy_node(node, self.data_inputs(node)) for node in chain]
        return run_nodes(nodes, output.name, {start + ":0": probe})


@dataclasses.dataclass
class Cut:
    """Nodes of a graph alone: body holds them, each tensor they read from outside as a Placeholder
    (inputs[k] becomes placeholders[k]) and each constant they read as a copy (constants: name -> Const)."""
    body: graph_pb2.GraphDef
    inputs: list
    placeholders: list
    constants: dict

    @property
    def renamed(self):
        """What each input and constant is called in body."""
        return dict(zip(self.inputs, self.placeholders)) | {name: node.name for name, node in self.constants.items()}


def cut_out(graph, nodes, prefix):
    """The Cut of nodes (a list of graph's, in order), its placeholders named PREFIX_input_k and its
    constants PREFIX_constant_k. Raises ValueError if one of nodes already has such a name."""
    names = {node.name for node in nodes}
    inputs, constants = [], {}
    for node in nodes:
        for name in graph.data_inputs(node):
            if node_of(name) in names or name in inputs or name in constants:
                continue
            value = graph.constant(name)
            if value is None:
                inputs.append(name)
            else:
                constants[name] = const_node(f"{prefix}_constant_{len(constants)}", value)
    placeholders = [f"{prefix}_input_{k}" for k in range(len(inputs))]
    if (set(placeholders) | {node.name for node in constants.values()}) & names:
        raise ValueError(f"a node has a name the cut gives its inputs ({prefix}_...)")
    body = graph_pb2.GraphDef()
    for placeholder, name in zip(placeholders, inputs):
        body.node.add(name=placeholder, op="Placeholder").attr["dtype"].type = graph.tensor(name).dtype.as_datatype_enum
    body.node.extend(constants.values())
    piece = Cut(body, inputs, placeholders, constants)
    renamed = piece.renamed
    body.node.extend(copy_node(node, [renamed.get(name, name) for name in graph.data_inputs(node)]) for node in nodes)
    return piece


def probe_values(graph, inputs, texts, width, batch_first=None, seed=0):
    """Random standard-normal values for tensors `inputs` of graph, shaped as the graph knows each:
    an unknown axis 0 holds `texts` (if batch_first says the tensor has the batch there: all by
    default), any other unknown axis `width`."""
    rng = np.random.default_rng(seed)
    values = []
    for k, name in enumerate(inputs):
        tensor = graph.tensor(name)
        batch = batch_first is None or batch_first[k]
        shape = [texts if axis == 0 and batch and size is None else size or width
                 for axis, size in enumerate(tensor.shape.as_list())]
        values.append(rng.standard_normal(shape).astype(tensor.dtype.as_numpy_dtype))
    return values


def copy_node(node, inputs):
    copy = node_def_pb2.NodeDef()
    copy.CopyFrom(node)
    del copy.input[:]
    copy.input.extend(inputs)
    copy.ClearField("device")
    return copy


def const_node(name, value, dtype=None):
    """A Const of value, typed as value is, or as dtype (e.g. tf.qint8 for int8 values a quantized op takes)."""
    dtype = tf.as_dtype(dtype or value.dtype)
    node = node_def_pb2.NodeDef(name=name, op="Const")
    node.attr["dtype"].type = dtype.as_datatype_enum
    node.attr["value"].tensor.CopyFrom(tensor_util.make_tensor_proto(value, dtype=dtype))
    return node


def run_nodes(nodes, output, feeds):
    """Run a small graph of nodes once and return output's value."""
    graph_def = graph_pb2.GraphDef()
    graph_def.node.extend(nodes)
    return run_graph(graph_def, [output], feeds)[0]


def run_graph(graph_def, outputs, feeds):
    """The values of the tensors named in outputs ("node" or "node:k"), graph_def run once on feeds
    ({tensor name: value}) in a Session: for the small graphs whose rewrites are checked."""
    with tf.Graph().as_default() as graph:
        tf.graph_util.import_graph_def(graph_def, name="")
        with tf.compat.v1.Session(graph=graph) as session:
            return session.run([name if ":" in name else f"{name}:0" for name in outputs], feeds)


def run_as_function(graph_def, outputs, feeds):
    """run_graph's values with graph_def run as a tf.function, the way a model scores: a whole BERT-like graph
    computes its Keras layer normalizations differently in a TF1 Session, whose grappler rewrites them
    otherwise (measured on the tests' token classifier), so values read to calibrate must come from here."""
    names = [name if ":" in name else f"{name}:0" for name in outputs]
    nodes = {node.name: node for node in graph_def.node}
    values = []
    for name, value in feeds.items():
        node = nodes.get(node_of(name))
        dtype = tf.as_dtype(node.attr["dtype"].type) if node is not None and "dtype" in node.attr else None
        values.append(tf.constant(value, dtype=dtype))

    @tf.function
    def run(*tensors):
        return tf.graph_util.import_graph_def(graph_def, input_map=dict(zip(feeds, tensors)), return_elements=names,
                                              name="run")
    return [tensor.numpy() for tensor in run(*values)]


def apply(graph_def, edit):
    """A new GraphDef: graph_def without edit.removed, with edit.added (an added node may take a removed
    one's name, to stand in for it), readers rewired."""
    out = graph_pb2.GraphDef()
    out.versions.CopyFrom(graph_def.versions)
    out.library.CopyFrom(graph_def.library)
    for node in [node for node in graph_def.node if node.name not in edit.removed] + edit.added:
        copy = out.node.add()
        copy.CopyFrom(node)
        for k, name in enumerate(copy.input):
            target = edit.rewired.get(node_of(name))
            # (A node added to stand in front of a tensor reads that tensor itself.)
            if not name.startswith("^") and target is not None and target != copy.name and first_output(name):
                copy.input[k] = target
    return out


def without_unread(graph_def, keep):
    """graph_def without the constants and Identity nodes nothing reads any more (but keep's), e.g. an
    Einsum's kernel once its two-axis copy replaced it: they would hold the weights twice."""
    while True:
        read = {node_of(name) for node in graph_def.node for name in node.input}
        kept = [node for node in graph_def.node
                if node.name in read or node.name in keep or node.op not in ("Const", "Identity")]
        if len(kept) == len(graph_def.node):
            return graph_def
        del graph_def.node[:]
        graph_def.node.extend(kept)


def frozen_graph(concrete_function):
    """The concrete function's GraphDef with its variables as constants. TensorFlow's public
    convert_variables_to_constants_v2 also builds a function of it, which costs seconds here and is
    not needed, so its two inner steps are called (TensorFlow is pinned in requirements.txt)."""
    data = convert_to_constants._FunctionConverterDataInEager(func=concrete_function, lower_control_flow=True,
                                                               aggressive_inlining=False)
    graph_def, _ = convert_to_constants._replace_variables_by_constants(converter_data=data)
    return graph_def
