"""ONNX Runtime as a scoring engine: the classifier converted by tf2onnx, timed against the fused graph.

    python benchmarks/onnx_runtime.py                    # 128 and 512 tokens
    python benchmarks/onnx_runtime.py --seq-lengths 128

On the MiniLM stand-in, a token classifier (pooled output -> Dense(1), seeded) in float32 scores the
same batch of EVAL_BATCH random token ids (peer.py's evaluation batch; the last rows half padding)
through:

  saved     the graph as trained (the SavedModel's)
  fused     the fused graph (model/fusion.py; what evaluate.py, predict.py and serve.py run); the
            benchmark stops if it fused no dense layer or layer normalization
  ort       ONNX Runtime on tf2onnx's conversion of the saved graph, all graph optimizations on, as
            many threads as os.cpu_count() (TensorFlow's default); the op types its session runs
            after its own fusions are printed
  ort-bert  the same after onnxruntime.transformers' BERT optimizer for tf2onnx's conversions
            (model_type bert_tf: its attention, GELU and layer normalization fusions; what it fused
            is printed)

Each engine's figure is the fastest of REPEATS calls after one warm-up, with its largest difference
from the saved graph's scores. Prints `onnx-runtime seq=128 engine=ort reviews_per_s=58.9
vs_fused=0.65 max_difference=2.0e-07`.
"""
import argparse
import collections
import os
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the suite's root
import common  # noqa: E402

EVAL_BATCH = 128
REPEATS = 3
OPSET = 17
MINILM_HEADS, MINILM_WIDTH = 12, 384


def tokens_of(seq_length):
    rng = np.random.default_rng(0)
    ids = rng.integers(1000, 30000, size=(EVAL_BATCH, seq_length)).astype(np.int32)
    mask = np.ones_like(ids)
    mask[-EVAL_BATCH // 4:, seq_length // 2:] = 0
    return {"input_word_ids": ids * mask, "input_mask": mask, "input_type_ids": np.zeros_like(ids)}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seq-lengths", type=int, nargs="+", default=[128, 512])
    args = parser.parse_args(argv)
    from tfhub_classifier import runtime  # before tf2onnx, which imports TensorFlow
    try:
        import onnx
        import onnxruntime
        import tf2onnx
        from onnxruntime.transformers import optimizer
    except ImportError:
        raise SystemExit("this benchmark needs onnxruntime, tf2onnx and onnx: "
                         "pip install --no-deps -r requirements-bench.txt") from None
    from tfhub_classifier.model import fusion
    from tfhub_classifier.runtime import hub, keras, tf

    runtime.set_precision("float32")
    flags = common.cpu_flags()
    print(f"{common.machine_header(flags)}\n"
          f"TensorFlow {tf.__version__}, ONNX Runtime {onnxruntime.__version__}, tf2onnx {tf2onnx.__version__}; "
          f"batches of {EVAL_BATCH}, fastest of {REPEATS} calls", flush=True)
    keras.utils.set_random_seed(0)
    inputs = {key: keras.Input((None,), dtype=tf.int32, name=key) for key in tokens_of(8)}
    encoder = hub.KerasLayer(common.minilm()[1])
    model = keras.Model(inputs, keras.layers.Dense(1)(encoder(inputs)["pooled_output"]))
    signature = {key: tf.TensorSpec([None, None], tf.int32, name=key) for key in inputs}

    @tf.function(input_signature=[signature])
    def saved(tokens):
        return model(tokens, training=False)

    fused = fusion.fuse(saved.get_concrete_function())
    if not fused.dense_layers or not fused.layer_norms:
        raise SystemExit(f"the fused graph fused {fused.dense_layers} dense layers and {fused.layer_norms} layer "
                         "normalizations: its figures would be the saved graph's")
    print(f"fused graph: {fused.dense_layers} dense layers, {fused.gelus} GELUs, {fused.layer_norms} layer "
          f"normalizations, {fused.attention_kernels} attentions as the suite's kernel, {fused.attentions_in_chunks} "
          "in chunks", flush=True)
    onnx_proto, _ = tf2onnx.convert.from_function(saved, input_signature=[signature], opset=OPSET)
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = os.cpu_count()  # TensorFlow's default too
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    with tempfile.TemporaryDirectory() as scratch:
        converted = os.path.join(scratch, "model.onnx")
        with open(converted, "wb") as f:
            f.write(onnx_proto.SerializeToString())
        options.optimized_model_filepath = os.path.join(scratch, "optimized.onnx")
        ort = onnxruntime.InferenceSession(converted, options, providers=["CPUExecutionProvider"])
        options.optimized_model_filepath = ""
        session_ops = collections.Counter(node.op_type for node in onnx.load(
            os.path.join(scratch, "optimized.onnx")).graph.node)
        print(f"ONNX Runtime's session runs {sum(session_ops.values())} nodes: " + ", ".join(
            f"{op} {count}" for op, count in session_ops.most_common()), flush=True)
        bert = optimizer.optimize_model(converted, model_type="bert_tf", num_heads=MINILM_HEADS,
                                        hidden_size=MINILM_WIDTH)
        fusions = {name: count for name, count in bert.get_fused_operator_statistics().items() if count}
        print(f"onnxruntime.transformers' BERT optimizer fused: {fusions or 'nothing'}", flush=True)
        bert.save_model_to_file(os.path.join(scratch, "bert.onnx"))
        ort_bert = onnxruntime.InferenceSession(os.path.join(scratch, "bert.onnx"), options,
                                                providers=["CPUExecutionProvider"])
    engines = {"saved": lambda tokens: saved({k: tf.constant(v) for k, v in tokens.items()}).numpy(),
               "fused": lambda tokens: fused(tokens).numpy(),  # FusedFunction converts the arrays itself
               "ort": lambda tokens: ort.run(None, tokens)[0],
               "ort-bert": lambda tokens: ort_bert.run(None, tokens)[0]}
    record = {"machine": common.machine(), "cpu_flags": flags, "onnxruntime": onnxruntime.__version__,
              "tf2onnx": tf2onnx.__version__, "session_ops": dict(session_ops), "bert_optimizer_fused": fusions,
              "results": {}}
    for seq in args.seq_lengths:
        tokens = tokens_of(seq)
        reference = engines["saved"](tokens)
        figures = {}
        for name, score in engines.items():
            difference = float(np.max(np.abs(score(tokens) - reference)))
            seconds = common.fastest(lambda: score(tokens), repeats=REPEATS)  # noqa: B023 (called at once)
            figures[name] = {"reviews_per_s": EVAL_BATCH / seconds, "max_difference": difference}
        for name, figure in figures.items():
            figure["vs_fused"] = figure["reviews_per_s"] / figures["fused"]["reviews_per_s"]
            print(f"onnx-runtime seq={seq} engine={name} reviews_per_s={figure['reviews_per_s']:.1f} "
                  f"vs_fused={figure['vs_fused']:.2f} max_difference={figure['max_difference']:.1e}", flush=True)
        record["results"][str(seq)] = figures
    print(f"Results: {common.save_result('onnx_runtime', record)}")
    return record


if __name__ == "__main__":
    main()
