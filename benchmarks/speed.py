"""Speed and memory of our pipeline against the tutorial's, on real reviews with MiniLM.

    python benchmarks/speed.py                    # 128 and 512 tokens
    python benchmarks/speed.py --seq-lengths 128  # quicker

Each configuration runs in its own process (so its peak memory is its own) and measures:
training reviews/s over a fixed number of steps after a warm-up epoch, evaluation
reviews/s, single-sentence predict latency (median of 50), predict throughput on 2,000
reviews, and peak resident memory. Ratios are against the tutorial pipeline in this run.
"""
import argparse
import json
import os
import resource
import statistics
import sys
import time

import common

TRAIN_STEPS = 8  # measured steps (batch 32) after a warm-up epoch of the same length
EVAL_REVIEWS = 512
PREDICT_REVIEWS = 2000
LATENCY_CALLS = 50


def child(spec):
    """Measure one configuration; returns a dict of figures. spec may lower train_steps and
    eval_reviews (for a quick run), set batch_size (the recipe's otherwise) and set predict=False to
    measure training and evaluation only.
    engine: the --engine that scores (default fused, as evaluate.py's; savedmodel: the graph as trained);
    fused-int8 and tflite-int8 measure evaluation alone, through a saved model. attention_kernel=False:
    the fused graph's attention as TensorFlow's ops in chunks, not the suite's kernel. optimizer_kernels=False:
    tf-keras' own AdamW, not the suite's (training/optimization.AdamW). gelu_weights_held: True or False
    overrides whether the fused graph holds the weights of dense layers before GELU (model/fusion.py).
    inter_op_threads: the size of TensorFlow's inter-op thread pool (TensorFlow's own choice otherwise)."""
    engine = spec.get("engine", "fused")
    if engine in ("fused-int8", "tflite-int8"):
        return engine_child(spec)
    import numpy as np

    import config
    from tfhub_classifier import runtime
    from tfhub_classifier.data import imdb
    from tfhub_classifier.inference import engines, prediction, scoring
    from tfhub_classifier.runtime import keras, tf
    from tfhub_classifier.training import optimization, trainer

    if spec.get("inter_op_threads"):  # before TensorFlow's runtime starts
        tf.config.threading.set_inter_op_parallelism_threads(spec["inter_op_threads"])

    cfg = config.resolve(recipe="official", seq_length=spec["seq_length"], pipeline=spec["pipeline"],
                         precision=spec["precision"], jit_compile=spec.get("jit", False),
                         batch_size=spec.get("batch_size"), truncation="head", **common.real_data_flags())
    train_steps = spec.get("train_steps", TRAIN_STEPS)
    eval_reviews = spec.get("eval_reviews", EVAL_REVIEWS)
    measure_predict = spec.get("predict", True)
    test_cap = max(eval_reviews, PREDICT_REVIEWS if measure_predict else 64)
    train_split, _, test = imdb.load_splits(cfg, caps=(train_steps * cfg.batch_size, 1, test_cap))
    session = trainer.Session(cfg, log=lambda *_: None)
    results = {"precision": session.precision, "onednn": runtime.onednn_enabled(),
               "inter_op_threads": tf.config.threading.get_inter_op_parallelism_threads()}

    train_ds, _ = session.datasets(train_split, train_split)
    suite_adamw = optimization.AdamW
    if not spec.get("optimizer_kernels", True):
        optimization.AdamW = keras.optimizers.AdamW  # make_optimizer's class, in this process only
    model = session.compile(train_steps)
    results["batch_size"] = cfg.batch_size
    results["optimizer"] = {suite_adamw: "suite", keras.optimizers.AdamW: "tf-keras"}.get(
        type(model.optimizer), type(model.optimizer).__name__)
    epoch_times = []

    class Timer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.started = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            epoch_times.append(time.perf_counter() - self.started)
    model.fit(train_ds, epochs=2, steps_per_epoch=train_steps, callbacks=[Timer()], verbose=0)
    results["train_reviews_per_s"] = train_steps * cfg.batch_size / epoch_times[1]
    results["train_first_epoch_s"] = epoch_times[0]

    eval_split = test.rows(slice(None, eval_reviews))
    warm = test.rows(slice(None, 64))
    if spec["pipeline"] == "tutorial":
        # The tutorial: model.evaluate on string batches of 32, the preprocessor inside the model.
        def evaluate(split):
            return session.text_model.evaluate(trainer.text_dataset(split, 32), verbose=0, return_dict=True)[
                "binary_accuracy"]
        call = tf.function(lambda texts: session.text_model(texts, training=False))

        def predict(texts):
            return np.concatenate([call(tf.constant(texts[i:i + 32])).numpy().reshape(-1)
                                   for i in range(0, len(texts), 32)])
    else:
        scorer = engines.FusedClassifier(session.exported, kernel=spec.get("attention_kernel", True),
                                         gelu_weights_held=spec.get("gelu_weights_held")) \
            if engine == "fused" else session.exported
        if engine == "fused":  # what the rewrite took: a figure is only the fused graph's if it fused
            results["fused"] = {"dense_layers": scorer.fused.dense_layers, "gelus": scorer.fused.gelus,
                                "layer_norms": scorer.fused.layer_norms,
                                "attentions_in_chunks": scorer.fused.attentions_in_chunks,
                                "attention_kernels": scorer.fused.attention_kernels,
                                "gelu_weights_held": scorer.fused.gelu_weights_held}

        def evaluate(split):
            logits = scoring.logits_of(scorer, split.texts, cfg.eval_batch_size)
            return float(np.mean((logits >= 0) == split.labels))

        def predict(texts):
            scored = prediction.predict(scorer, session.task, texts, cfg.eval_batch_size)
            return np.array([score for _, score in scored])
    evaluate(warm)
    started = time.perf_counter()
    results["eval_accuracy"] = evaluate(eval_split)
    results["eval_reviews_per_s"] = eval_reviews / (time.perf_counter() - started)
    if not measure_predict:
        results["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        return results

    predict(test.texts[:1])
    latencies = []
    for i in range(LATENCY_CALLS):
        started = time.perf_counter()
        predict([test.texts[i]])
        latencies.append(time.perf_counter() - started)
    results["predict_latency_ms"] = 1000 * statistics.median(latencies)
    started = time.perf_counter()
    predict(test.texts[:PREDICT_REVIEWS])
    results["predict_reviews_per_s"] = PREDICT_REVIEWS / (time.perf_counter() - started)
    results["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return results


def engine_child(spec):
    """Evaluation reviews/s through --engine spec["engine"]: the model as train.py saves it (untrained:
    speed does not depend on the weights), converted by the engine, scoring from the raw texts."""
    import tempfile

    import numpy as np

    import config
    from tfhub_classifier.data import imdb
    from tfhub_classifier.inference import engines, scoring
    from tfhub_classifier.model import saving
    from tfhub_classifier.training import trainer

    cfg = config.resolve(recipe="official", seq_length=spec["seq_length"], precision="float32", truncation="head",
                         **common.real_data_flags())
    eval_reviews = spec.get("eval_reviews", EVAL_REVIEWS)
    _, _, test = imdb.load_splits(cfg, with_train=False, caps=(0, 0, max(eval_reviews, 64)))
    session = trainer.Session(cfg, log=lambda *_: None)
    with tempfile.TemporaryDirectory(dir=common.RESULTS) as scratch:
        record = {"config": {"seq_length": cfg.seq_length, "truncation": cfg.truncation},
                  "task": {"kind": session.task.kind, "label_names": list(session.task.label_names)}}
        model_dir = saving.save(session.exported, os.path.join(scratch, "model"), record)
        model, _, precision = engines.load(model_dir, "float32", spec["engine"],
                                           log=lambda line: print(line, file=sys.stderr))
        common.require_engine(spec["engine"], engines.in_use(model, spec["engine"]), "the note above")
        scoring.logits_of(model, test.texts[:64], cfg.eval_batch_size)
        started = time.perf_counter()
        logits = scoring.logits_of(model, test.texts[:eval_reviews], cfg.eval_batch_size)
        seconds = time.perf_counter() - started
    return {"precision": precision, "eval_reviews_per_s": eval_reviews / seconds,
            "eval_accuracy": float(np.mean((logits >= 0) == test.labels[:eval_reviews])),
            "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}


def configurations(seq_lengths):
    for seq_length in seq_lengths:
        yield dict(name=f"tutorial@{seq_length}", pipeline="tutorial", precision="float32", seq_length=seq_length)
        yield dict(name=f"ours-fp32@{seq_length}", pipeline="fast", precision="float32", seq_length=seq_length)
        yield dict(name=f"ours-bf16@{seq_length}", pipeline="fast", precision="bfloat16", seq_length=seq_length)
        if seq_length == min(seq_lengths):
            yield dict(name=f"ours-fp32-xla@{seq_length}", pipeline="fast", precision="float32",
                       seq_length=seq_length, jit=True)


FIGURES = ("train_reviews_per_s", "eval_reviews_per_s", "predict_latency_ms", "predict_reviews_per_s",
           "peak_rss_gb")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seq-lengths", type=int, nargs="+", default=[128, 512])
    parser.add_argument("--engine", choices=("fused", "savedmodel"), default="fused",
                        help="what scores our pipeline's evaluation and predictions (default: fused, as evaluate.py)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        common.report_child(child(json.loads(args.child)))
        return None
    common.real_data_flags()  # build MiniLM and check the data before the children start
    results = {}
    for spec in configurations(args.seq_lengths):
        spec["engine"] = args.engine
        figures = common.run_child(__file__, spec)
        if figures is None:
            continue
        results[spec["name"]] = figures
        baseline = results.get(f"tutorial@{spec['seq_length']}")
        row = results[spec["name"]]
        cells = []
        for figure in FIGURES:
            ratio = f" ({row[figure] / baseline[figure]:.2f}x)" if baseline else ""
            cells.append(f"{figure}={row[figure]:.2f}{ratio}")
        print(f"{spec['name']:<22} " + " ".join(cells) + f" eval_accuracy={row['eval_accuracy']:.4f}", flush=True)
        common.save_result("speed", {"machine": common.machine(), "results": results})
    return results


if __name__ == "__main__":
    main()
