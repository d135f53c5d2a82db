"""Whether another form of the encoder would train faster than the TF-Hub graph train.py runs.

    python benchmarks/training_forms.py                  # 128 tokens; float32, and bfloat16 where the CPU has it
    python benchmarks/training_forms.py --seq-lengths 128 512 --precisions float32

train.py trains through the TF-Hub encoder's graph as it was published (hub.KerasLayer, trainable);
the fused graph's rewrites (model/fusion.py) work on frozen constants, for scoring only. This times,
before anyone builds one, what a training graph in fusable forms would buy. On the MiniLM stand-in,
each form trains the same classifier (pooled output -> dropout -> Dense(1), AdamW, binary
cross-entropy) on one batch of BATCH random token ids, seq-length wide with a quarter of the
positions padding (not peer.py's reviews: its figures compare forms with each other), each form in
a process of its own:

  hub         the TF-Hub graph, as train.py runs it: the baseline
  native      the same encoder written in tf-keras on the same variables (all-MiniLM-L6-v2's 12 heads
              and dropout rate 0.1), in the forms grappler and oneDNN fuse: each dense layer one
              MatMul + BiasAdd on [batch * length, width] (which grappler fuses), layer normalization
              as one FusedBatchNormV3 kernel then its scale and offset, GELU as tf.nn.gelu (its own
              ops in training: the gradient needs the value before it)
  float32 only:
  native-xla  native compiled by XLA (jit_compile), which fuses the element-wise ops between products
  bfloat16 only:
  native-bf16-casts      native computing in bfloat16 by its own casts (what Keras' mixed_bfloat16
                         policy does), the suite's grappler rewrite off
  native-bf16-casts-xla  that, compiled by XLA

Under bfloat16, hub and native run with the suite's bfloat16 rewrite (runtime.set_precision), as
train.py does. Before timing, native's outputs at training=False are checked against hub's on the
same batch (the largest difference is printed; over NATIVE_TOLERANCE the form is not timed). Each
form's figure is the fastest of REPEATS runs of STEPS steps, after WARMUP_STEPS and one more run,
and the best of --rounds rounds, the forms taking turns.
Then one traced step (not of the XLA forms: a cluster runs as one op) says how much of the op time
ran in fused kernels (oneDNN's and grappler's fused ops, FusedBatchNormV3 and their gradients), so
a form whose fusions did not happen can't pass for one whose did.

Prints each run (`round 2 seq=128 precision=float32 form=native reviews_per_s=16.8
max_difference_from_hub=3.1e-07 fused_kernels=14.3% (...)`), then each form's best against hub's:
`training-form seq=128 precision=float32 form=native reviews_per_s=16.8 vs_hub=1.16`.
"""
import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the suite's root
import common  # noqa: E402
import profiling  # noqa: E402

from tfhub_classifier import hardware  # noqa: E402

BATCH = 32  # train.py's batch size
WARMUP_STEPS, STEPS, REPEATS = 3, 5, 3
NATIVE_TOLERANCE = 1e-3  # float32 pooled outputs, in [-1, 1]
FORMS = {"float32": ("hub", "native", "native-xla"),
         "bfloat16": ("hub", "native", "native-bf16-casts", "native-bf16-casts-xla")}


def batch_of(seq_length):
    """BATCH rows of random word ids; the last half of the rows padding after their first half."""
    rng = np.random.default_rng(0)
    ids = rng.integers(1000, 30000, size=(BATCH, seq_length)).astype(np.int32)
    mask = np.ones_like(ids)
    mask[BATCH // 2:, seq_length // 2:] = 0
    labels = rng.integers(0, 2, size=(BATCH, 1)).astype(np.float32)
    return {"input_word_ids": ids * mask, "input_mask": mask, "input_type_ids": np.zeros_like(ids)}, labels


def native_encoder(encoder, compute_dtype):
    """The MiniLM stand-in's encoder (benchmarks/common.minilm) as a tf-keras layer on its own variables."""
    from tfhub_classifier.runtime import keras, tf
    variables = {variable.name[:-2]: variable for variable in encoder.variables}
    width = variables["word_embeddings/embeddings"].shape[1]
    layers = sum(name.endswith("/query/kernel") for name in variables)
    heads = 12  # all-MiniLM-L6-v2's
    head_width = width // heads

    def dense(x, name, activation=None):
        kernel, bias = (tf.cast(variables[f"{name}/{part}"], compute_dtype) for part in ("kernel", "bias"))
        y = tf.nn.bias_add(tf.matmul(tf.cast(x, compute_dtype), kernel), bias)
        return activation(y) if activation else y

    def layer_norm(x, name):
        # One FusedBatchNormV3 over rows (tf-keras LayerNormalization's own fused form), then the scale and offset.
        rows = tf.shape(x)[0]
        normalized, _, _ = tf.compat.v1.nn.fused_batch_norm(
            tf.reshape(tf.cast(x, tf.float32), [1, rows, width, 1]), tf.ones([rows]), tf.zeros([rows]),
            epsilon=1e-12, data_format="NCHW")
        return tf.reshape(normalized, [rows, width]) * variables[f"{name}/gamma"] + variables[f"{name}/beta"]

    class NativeEncoder(keras.layers.Layer):
        def __init__(self):
            super().__init__(name="native_encoder")
            self.encoder_variables = list(encoder.trainable_variables)  # tracked, so the optimizer trains them

        def call(self, inputs, training=None):
            ids, mask = inputs["input_word_ids"], inputs["input_mask"]
            batch, length = tf.shape(ids)[0], tf.shape(ids)[1]

            def dropout(x):
                return tf.nn.dropout(x, 0.1) if training else x

            x = (tf.gather(variables["word_embeddings/embeddings"], ids)
                 + tf.gather(variables["type_embeddings/embeddings"], inputs["input_type_ids"])
                 + variables["position_embedding/embeddings"][None, :length])
            x = dropout(layer_norm(tf.reshape(x, [batch * length, width]), "embeddings_layer_norm"))
            padding = (1.0 - tf.cast(mask, tf.float32))[:, None, None, :] * -10000.0

            def by_head(y):
                return tf.transpose(tf.reshape(y, [batch, length, heads, head_width]), [0, 2, 1, 3])

            for index in range(layers):
                prefix = f"transformer_layer_{index}/"
                query, key, value = (by_head(dense(x, prefix + part)) for part in ("query", "key", "value"))
                scores = tf.cast(tf.matmul(query, key, transpose_b=True), tf.float32) / np.sqrt(head_width)
                probabilities = tf.cast(dropout(tf.nn.softmax(scores + padding)), compute_dtype)
                context = tf.reshape(tf.transpose(tf.matmul(probabilities, value), [0, 2, 1, 3]),
                                     [batch * length, width])
                attended = tf.cast(dropout(dense(context, prefix + "attention_output")), tf.float32)
                x = layer_norm(x + attended, prefix + "attention_layer_norm")
                hidden = dense(x, prefix + "intermediate", lambda y: tf.nn.gelu(y, approximate=False))
                x = layer_norm(x + tf.cast(dropout(dense(hidden, prefix + "output")), tf.float32),
                               prefix + "output_layer_norm")
            first = tf.reshape(x, [batch, length, width])[:, 0]
            return {"pooled_output": tf.cast(dense(first, "pooler_transform", tf.tanh), tf.float32)}

    return NativeEncoder()


def child(spec):
    from tfhub_classifier import runtime
    from tfhub_classifier.runtime import hub, keras, tf
    form, precision = spec["form"], spec["precision"]
    casts = "bf16-casts" in form
    runtime.set_precision("float32" if casts else precision)
    keras.utils.set_random_seed(0)
    encoder = hub.load(common.minilm()[1])
    tokens, labels = batch_of(spec["seq_length"])
    tokens = {key: tf.constant(value) for key, value in tokens.items()}
    figures = {}
    if form == "hub":
        layer = hub.KerasLayer(encoder, trainable=True)
    else:
        layer = native_encoder(encoder, tf.bfloat16 if casts else tf.float32)
        with runtime.float32_rewrites():
            reference = hub.KerasLayer(encoder)(tokens)["pooled_output"].numpy()
            native = native_encoder(encoder, tf.float32)(tokens)["pooled_output"].numpy()
        figures["max_difference_from_hub"] = float(np.max(np.abs(native - reference)))
        if figures["max_difference_from_hub"] > NATIVE_TOLERANCE:
            raise SystemExit(f"the native encoder differs from the TF-Hub graph by "
                             f"{figures['max_difference_from_hub']:.2g}: its timing would not be like for like")
    inputs = {key: keras.Input((None,), dtype=tf.int32, name=key) for key in tokens}
    logits = keras.layers.Dense(1)(keras.layers.Dropout(0.1)(layer(inputs)["pooled_output"]))
    model = keras.Model(inputs, logits)
    model.compile(optimizer=keras.optimizers.AdamW(2e-5), loss=keras.losses.BinaryCrossentropy(from_logits=True),
                  jit_compile=form.endswith("-xla"))
    labels = tf.constant(labels)

    def steps(count):
        for _ in range(count):
            model.train_on_batch(tokens, labels)

    steps(WARMUP_STEPS)
    seconds = common.fastest(lambda: steps(STEPS), repeats=REPEATS)
    figures["reviews_per_s"] = STEPS * BATCH / seconds
    op_seconds = {} if form.endswith("-xla") else profiling.op_seconds(lambda: steps(1))
    if op_seconds:  # an XLA cluster runs as one op, with no op-by-op trace inside
        fused = {op: spent for op, spent in op_seconds.items() if "Fused" in op}
        figures["fused_share"] = sum(fused.values()) / sum(op_seconds.values())
        figures["fused_ops"] = sorted(fused)
    return figures


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seq-lengths", type=int, nargs="+", default=[128])
    bf16 = hardware.cpu_supports_bfloat16()
    parser.add_argument("--precisions", nargs="+", choices=tuple(FORMS),
                        default=["float32", "bfloat16"] if bf16 else ["float32"])
    parser.add_argument("--rounds", type=int, default=2,
                        help="time each form this many times, taking turns, and keep each form's best "
                             "(other jobs on a shared machine slow runs unevenly; default 2)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        import json
        common.report_child(child(json.loads(args.child)))
        return None
    if "bfloat16" in args.precisions and not bf16:
        parser.error("bfloat16 needs a CPU with AVX512-BF16 or AMX, which this one lacks; use --precisions float32")
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    common.minilm()
    flags = common.cpu_flags()
    print(f"{common.machine_header(flags)}\n"
          f"{STEPS} training steps of batch {BATCH}, fastest of {REPEATS}, after {WARMUP_STEPS}; "
          f"each form's best of {args.rounds} round(s)", flush=True)
    record = {"machine": common.machine(), "cpu_flags": flags, "rounds": args.rounds, "results": {}, "runs": []}
    results = record["results"]
    for round_number in range(1, args.rounds + 1):
        for seq in args.seq_lengths:
            for precision in args.precisions:
                # Forms take turns going first, so a slow stretch of a shared machine hits them alike.
                forms = FORMS[precision] if round_number % 2 else FORMS[precision][::-1]
                for form in forms:
                    spec = dict(name=f"{form}-{precision}@{seq}", form=form, precision=precision, seq_length=seq)
                    figures = common.run_child(__file__, spec)
                    if figures is None:
                        continue
                    record["runs"].append(dict(figures, name=spec["name"], round=round_number))
                    if figures["reviews_per_s"] > results.get(spec["name"], {}).get("reviews_per_s", 0):
                        results[spec["name"]] = figures
                    checked = (f" max_difference_from_hub={figures['max_difference_from_hub']:.1e}"
                               if "max_difference_from_hub" in figures else "")
                    fused = (f" fused_kernels={figures['fused_share']:.1%} ({', '.join(figures['fused_ops'])})"
                             if "fused_share" in figures else "")
                    print(f"round {round_number} seq={seq} precision={precision} form={form} "
                          f"reviews_per_s={figures['reviews_per_s']:.1f}{checked}{fused}", flush=True)
                    common.save_result("training_forms", record)
    for seq in args.seq_lengths:
        for precision in args.precisions:
            hub = results.get(f"hub-{precision}@{seq}")
            for form in FORMS[precision]:
                figures = results.get(f"{form}-{precision}@{seq}")
                if figures is None or hub is None:
                    continue
                figures["vs_hub"] = figures["reviews_per_s"] / hub["reviews_per_s"]
                print(f"training-form seq={seq} precision={precision} form={form} "
                      f"reviews_per_s={figures['reviews_per_s']:.1f} vs_hub={figures['vs_hub']:.2f}", flush=True)
    print(f"Results: {common.save_result('training_forms', record)}")
    return record


if __name__ == "__main__":
    main()
