"""Where the time goes: one evaluation and one training step of the fast pipeline, split into parts.

    python benchmarks/profiling.py                       # 128 and 512 tokens, the precision `auto` picks
    python benchmarks/profiling.py --seq-lengths 512 --precision float32
    python benchmarks/profiling.py --threads 1,2         # TensorFlow's inter-op,intra-op threads

Same configuration, reviews and batch sizes as benchmarks/speed.py (MiniLM, `official` recipe's
head truncation, batch 32 to train and 128 to evaluate). Each part is timed alone, warmed up, on the
same data, after materializing what feeds it:
  tokenization     strings -> token ids (the preprocessor's tokenize + truncation + packing)
  input pipeline   the rest of scoring.score_texts (training: of tf.data): sorting by length, batching,
                   per-batch padding
  encoder          the BERT encoder (forward for evaluation; forward, backward and update for training)
  head             pooling, dropout and the Dense layer, on encoder outputs of the same shape
The encoder is the model's time less the head's. Shares are of the sum of the parts.

The model's part of evaluation is also timed at OTHER_EVAL_BATCHES batch sizes. End to end,
evaluation is also timed with a tf.data pipeline per window in place of scoring's NumPy
batching (what scoring used before), the attempt's baseline.

The model's part of evaluation is also timed through the fused graph (--engine fused, what
evaluate.py, predict.py and serve.py run by default).

Then TensorFlow's profiler traces the model's part of that evaluation (as trained and fused) and those
training steps op by op: the time in each op type (summed over threads) and its share, grouped into matrix multiplies,
element-wise and normalization ops, layout ops (transposes, reshapes, slices) and casts.
"""
import argparse
import collections
import glob
import json
import tempfile

import common

EVAL_REVIEWS = 512
EVAL_BATCH = 128
OTHER_EVAL_BATCHES = (64, 256)  # candidates: the model's part of evaluation at these batch sizes too
TRAIN_STEPS = 8
XLA_WIDTHS = (64, 128, 256, 512)
TOP_OPS = 12  # op types listed per traced phase
# Op kinds, by the op type's name (oneDNN's _Mkl... kernels and grappler's _Fused... ops included).
MATRIX_MULTIPLY_NAMES = ("MatMul", "Einsum", "Conv")
LAYOUT_OPS = ("Transpose", "Reshape", "StridedSlice", "Slice", "ConcatV2", "Pack", "GatherV2", "ResourceGather",
              "Pad", "Tile", "ExpandDims", "Squeeze", "Shape", "Prod", "Range", "Fill")
VARIABLE_OPS = ("ReadVariableOp", "AssignVariableOp", "AssignAddVariableOp", "AssignSubVariableOp", "Identity",
                "NoOp", "VarHandleOp")
# Ops that run other ops inside them: their time is their inner ops', so counting them would count it twice.
CALL_OPS = ("PartitionedCall", "StatefulPartitionedCall", "While", "If", "StatelessIf", "StatelessWhile", "Case",
            "StatelessCase", "RemoteCall", "XlaLaunch", "XlaRun", "XlaCompile")


def op_seconds(work):
    """{op type: seconds summed over threads} of one traced run of work(), from TensorFlow's profiler."""
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    from tfhub_classifier.runtime import tf
    registered = set(dir(tf.raw_ops)) | {"ClassifierFusedAttention"}  # and the suite's own kernel
    with tempfile.TemporaryDirectory() as logdir:
        tf.profiler.experimental.start(logdir)
        try:
            work()
        finally:
            tf.profiler.experimental.stop()
        space = xplane_pb2.XSpace()
        with open(glob.glob(f"{logdir}/**/*.xplane.pb", recursive=True)[0], "rb") as trace:
            space.ParseFromString(trace.read())
    seconds = collections.Counter()
    for plane in space.planes:
        names = {key: meta.name for key, meta in plane.event_metadata.items()}
        for line in plane.lines:
            for event in line.events:
                name, _, op_type = names.get(event.metadata_id, "").rpartition(":")
                kernel = op_type.removeprefix("_Mkl").removeprefix("_")
                # An op's event is named "node:OpType"; other events (tf.data, the executor) are not ops.
                if name and not op_type.startswith("__") and (op_type in registered or op_type.startswith("_")) \
                        and kernel not in CALL_OPS:
                    seconds[kernel] += event.duration_ps / 1e12
    return seconds


def op_kinds(seconds):
    """Shares of the traced op time by kind, and the TOP_OPS op types' own shares."""
    total = sum(seconds.values())
    kinds = collections.Counter()
    for op_type, spent in seconds.items():
        if any(part in op_type for part in MATRIX_MULTIPLY_NAMES):
            kind = "matrix multiplies"
        elif op_type == "ClassifierFusedAttention":  # the suite's kernel: both products, the softmax, the heads
            kind = "attention (the suite's kernel)"
        elif op_type in LAYOUT_OPS:
            kind = "layout"
        elif op_type == "Cast":
            kind = "casts"
        elif op_type in VARIABLE_OPS or op_type.startswith(("ResourceApply", "Assign")):
            kind = "variables and updates"
        else:
            kind = "element-wise and normalization"
        kinds[kind] += spent / total
    return {"kinds": dict(kinds), "top": {op: spent / total for op, spent in seconds.most_common(TOP_OPS)},
            "traced_op_s": total}


def child(spec):
    if spec.get("threads"):
        from tfhub_classifier import runtime
        inter, intra = spec["threads"]
        runtime.tf.config.threading.set_inter_op_parallelism_threads(inter)
        runtime.tf.config.threading.set_intra_op_parallelism_threads(intra)
    import config
    from tfhub_classifier.data import imdb, tokenization
    from tfhub_classifier.inference import engines, scoring
    from tfhub_classifier.runtime import keras, tf
    from tfhub_classifier.training import trainer

    cfg = config.resolve(recipe="official", seq_length=spec["seq_length"], pipeline="fast",
                         precision=spec["precision"], truncation="head", **common.real_data_flags())
    train_split, _, test = imdb.load_splits(cfg, caps=(TRAIN_STEPS * cfg.batch_size, 1, EVAL_REVIEWS))
    session = trainer.Session(cfg, log=lambda *_: None)
    model, exported = session.token_model, session.exported
    texts = [tokenization.sanitize(text) for text in test.texts[:EVAL_REVIEWS]]
    hidden = model.get_layer("classifier").kernel.shape[0]
    head_layers = [model.get_layer(name) for name in ("dropout", "classifier")]

    def head(batch, seq_width, training_step):
        """The head's own layers on a random encoder output of the batch's shape."""
        pooled = tf.random.normal([batch, hidden])
        if cfg.pooling == "mean":
            sequence = tf.random.normal([batch, seq_width, hidden])
            pooled = tf.reduce_mean(sequence, axis=1)
        net = pooled
        for layer in head_layers:
            net = layer(net, training=training_step)
        return net

    # Evaluation, tokenization included, as scoring.score_texts runs it.
    figures = {"end_to_end_eval_s": common.fastest(lambda: list(scoring.score_texts(exported, texts, EVAL_BATCH)))}

    def tf_data_scoring():
        """The same scoring with a tf.data pipeline per window, as score_texts had before NumPy."""
        examples = tf.data.Dataset.from_tensor_slices((texts, tf.range(len(texts))))
        batches = tokenization.length_sorted_batches(tokenization.tokenized(examples, exported.preprocess), EVAL_BATCH)
        return [exported.classify_tokens(tokens).numpy() for tokens, _ in batches.prefetch(tf.data.AUTOTUNE)]
    figures["end_to_end_eval_tf_data_s"] = common.fastest(tf_data_scoring)
    figures["tokenization_eval_s"] = common.fastest(lambda: tokenization.tokens_of(exported.preprocess, texts))
    tokens = tokenization.tokens_of(exported.preprocess, texts)
    figures["input_pipeline_eval_s"] = common.fastest(lambda: list(tokenization.sorted_batches(tokens, EVAL_BATCH)))
    batches = [(batch, rows) for rows, batch in tokenization.sorted_batches(tokens, EVAL_BATCH)]
    def model_eval():
        return [exported.classify_tokens(tokens).numpy() for tokens, _ in batches]
    figures["model_eval_s"] = common.fastest(model_eval)
    eval_head = tf.function(lambda b, w: head(b, w, False), reduce_retracing=True)
    figures["head_eval_s"] = common.fastest(
        lambda: [eval_head(tf.constant(len(p)), tf.shape(t["input_mask"])[1]).numpy() for t, p in batches])
    figures["encoder_eval_s"] = figures["model_eval_s"] - figures["head_eval_s"]
    for batch_size in OTHER_EVAL_BATCHES:
        other = [batch for _, batch in tokenization.sorted_batches(tokens, batch_size)]
        figures[f"model_eval_batch{batch_size}_s"] = common.fastest(
            lambda other=other: [exported.classify_tokens(batch).numpy() for batch in other])
    figures["ops_eval"] = op_kinds(op_seconds(model_eval))
    figures["ops_eval"]["model_s"] = figures["model_eval_s"]
    # The same through the fused graph (--engine fused, what evaluate.py runs), against model_eval_s.
    fused = engines.FusedClassifier(exported)

    def model_eval_fused():
        return [fused.classify_tokens(tokens).numpy() for tokens, _ in batches]
    figures["model_eval_fused_s"] = common.fastest(model_eval_fused)
    figures["ops_eval_fused"] = op_kinds(op_seconds(model_eval_fused))
    figures["ops_eval_fused"]["model_s"] = figures["model_eval_fused_s"]
    figures["eval_widths"] = [int(t["input_mask"].shape[1]) for t, _ in batches]
    # Candidate: XLA for scoring, each batch padded up to one of a few fixed widths, so it compiles
    # at most len(XLA_WIDTHS) times; timed after those compiles, against model_eval_s.
    widths = [w for w in XLA_WIDTHS if w < cfg.seq_length] + [cfg.seq_length]
    xla_classify = tf.function(lambda tokens: model(tokens, training=False), jit_compile=True)

    def padded(tokens):
        width = next(w for w in widths if w >= tokens["input_mask"].shape[1])
        extra = width - tokens["input_mask"].shape[1]
        return {key: tf.pad(value, [[0, 0], [0, extra]]) for key, value in tokens.items()}
    xla_batches = [padded(tokens) for tokens, _ in batches]
    figures["model_eval_xla_s"] = common.fastest(lambda: [xla_classify(tokens).numpy() for tokens in xla_batches])
    figures["xla_widths"] = widths

    # Training: TRAIN_STEPS steps of batch 32, as benchmarks/speed.py measures them.
    train_ds, _ = session.datasets(train_split, train_split)
    train_ds = train_ds.take(TRAIN_STEPS)
    figures["input_pipeline_train_s"] = common.fastest(lambda: [b for b in train_ds])
    texts_train = [tokenization.sanitize(text) for text in train_split.texts[:TRAIN_STEPS * cfg.batch_size]]
    figures["tokenization_train_s"] = common.fastest(lambda: tokenization.tokens_of(exported.preprocess, texts_train))
    figures["input_pipeline_train_s"] -= figures["tokenization_train_s"]
    train_batches = [b for b in train_ds]
    model = session.compile(TRAIN_STEPS)
    def model_train():
        return [model.train_on_batch(tokens, labels) for tokens, labels in train_batches]
    figures["model_train_s"] = common.fastest(model_train)
    head_variables = [v for layer in head_layers for v in layer.trainable_variables]
    optimizer = keras.optimizers.Adam(1e-5)

    @tf.function(reduce_retracing=True)
    def head_step(b, w):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.cast(head(b, w, True), tf.float32) ** 2)
        optimizer.apply_gradients(zip(tape.gradient(loss, head_variables), head_variables))
    figures["head_train_s"] = common.fastest(
        lambda: [head_step(tf.constant(cfg.batch_size), tf.shape(t["input_mask"])[1]) for t, _ in train_batches])
    figures["encoder_train_s"] = figures["model_train_s"] - figures["head_train_s"]
    figures["ops_train"] = op_kinds(op_seconds(model_train))
    figures["ops_train"]["model_s"] = figures["model_train_s"]
    figures["precision"] = session.precision
    return figures


PARTS = ("tokenization", "input_pipeline", "encoder", "head")


def shares(figures, phase):
    seconds = {part: max(figures[f"{part}_{phase}_s"], 0.0) for part in PARTS}
    total = sum(seconds.values())
    return {part: seconds[part] / total for part in PARTS}, total


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seq-lengths", type=int, nargs="+", default=[128, 512])
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--threads", help="inter,intra: TensorFlow's thread pools (default: TensorFlow's choice)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        common.report_child(child(json.loads(args.child)))
        return None
    common.real_data_flags()
    threads = [int(n) for n in args.threads.split(",")] if args.threads else None
    results = {}
    for seq_length in args.seq_lengths:
        spec = dict(name=f"seq {seq_length}", seq_length=seq_length, precision=args.precision, threads=threads)
        figures = common.run_child(__file__, spec)
        if figures is None:
            continue
        results[seq_length] = figures
        for phase, label in (("eval", f"evaluation of {EVAL_REVIEWS} reviews"),
                             ("train", f"{TRAIN_STEPS} training steps")):
            part_shares, total = shares(figures, phase)
            print(f"seq={seq_length} {figures['precision']} {label}: {total:.2f} s in parts; "
                  + ", ".join(f"{part} {100 * share:.1f}%" for part, share in part_shares.items()), flush=True)
        print(f"seq={seq_length} model part of evaluation: {figures['model_eval_s']:.2f} s as it runs, "
              f"{figures['model_eval_xla_s']:.2f} s with XLA at widths {figures['xla_widths']} "
              f"({figures['model_eval_s'] / figures['model_eval_xla_s']:.2f}x)", flush=True)
        print(f"seq={seq_length} model part of evaluation through the fused graph (--engine fused): "
              f"{figures['model_eval_fused_s']:.2f} s ({figures['model_eval_s'] / figures['model_eval_fused_s']:.2f}x "
              "the graph as trained)", flush=True)
        for phase in ("eval", "eval_fused", "train"):
            ops = figures[f"ops_{phase}"]
            # A sanity check: ops summed over threads, against the wall time of the same untraced work.
            print(f"seq={seq_length} ops of {phase}: {ops['traced_op_s']:.2f} s summed over threads "
                  f"({ops['traced_op_s'] / ops['model_s']:.2f}x the untraced wall time); by kind: "
                  + ", ".join(f"{kind} {100 * share:.1f}%"
                              for kind, share in sorted(ops["kinds"].items(), key=lambda kv: -kv[1]))
                  + "; top op types: "
                  + ", ".join(f"{op} {100 * share:.1f}%" for op, share in ops["top"].items()), flush=True)
        print(f"seq={seq_length} model part of evaluation at other batch sizes: " + ", ".join(
            f"{size}: {figures[f'model_eval_batch{size}_s']:.2f} s "
            f"({figures['model_eval_s'] / figures[f'model_eval_batch{size}_s']:.2f}x batch {EVAL_BATCH}'s speed)"
            for size in OTHER_EVAL_BATCHES), flush=True)
        print(f"seq={seq_length} end-to-end evaluation {figures['end_to_end_eval_s']:.2f} s "
              f"({EVAL_REVIEWS / figures['end_to_end_eval_s']:.1f} reviews/s); with a tf.data pipeline instead of "
              f"NumPy batching {figures['end_to_end_eval_tf_data_s']:.2f} s "
              f"(NumPy {figures['end_to_end_eval_tf_data_s'] / figures['end_to_end_eval_s']:.2f}x)", flush=True)
    common.save_result("profile", {"machine": common.machine(), "threads": threads, "results": results})
    return results


if __name__ == "__main__":
    main()
