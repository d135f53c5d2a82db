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
import resource
import statistics
import subprocess
import sys
import time

import common

TRAIN_STEPS = 8  # measured steps (batch 32) after a warm-up epoch of the same length
EVAL_REVIEWS = 512
PREDICT_REVIEWS = 2000
LATENCY_CALLS = 50


def child(spec):
    """Measure one configuration; returns a dict of figures."""
    import numpy as np
    import config
    import imdb
    import inference
    import scoring
    import training
    from runtime import keras, tf

    cfg = config.resolve(recipe="official", seq_length=spec["seq_length"], pipeline=spec["pipeline"],
                         precision=spec["precision"], jit_compile=spec.get("jit", False),
                         truncation="head", **common.real_data_flags())
    train_split, _, test = imdb.load_splits(cfg, caps=(TRAIN_STEPS * cfg.batch_size, 1, PREDICT_REVIEWS))
    session = training.Session(cfg, log=lambda *_: None)
    results = {"precision": session.precision}

    train_ds, _ = session.datasets(train_split, train_split)
    model = session.compile(TRAIN_STEPS)
    epoch_times = []

    class Timer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.started = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            epoch_times.append(time.perf_counter() - self.started)
    model.fit(train_ds, epochs=2, steps_per_epoch=TRAIN_STEPS, callbacks=[Timer()], verbose=0)
    results["train_reviews_per_s"] = TRAIN_STEPS * cfg.batch_size / epoch_times[1]
    results["train_first_epoch_s"] = epoch_times[0]

    eval_split = imdb.Split(test.texts[:EVAL_REVIEWS], test.labels[:EVAL_REVIEWS], test.paths[:EVAL_REVIEWS])
    warm = imdb.Split(test.texts[:64], test.labels[:64], test.paths[:64])
    if spec["pipeline"] == "tutorial":
        # The tutorial: model.evaluate on string batches of 32, the preprocessor inside the model.
        def evaluate(split):
            return session.text_model.evaluate(training.text_dataset(split, 32), verbose=0, return_dict=True)[
                "binary_accuracy"]
        call = tf.function(lambda texts: session.text_model(texts, training=False))

        def predict(texts):
            return np.concatenate([call(tf.constant(texts[i:i + 32])).numpy().reshape(-1)
                                   for i in range(0, len(texts), 32)])
    else:
        def evaluate(split):
            logits = scoring.logits_of(session.exported, split.texts, cfg.eval_batch_size)
            return float(np.mean((logits >= 0) == split.labels))

        def predict(texts):
            return np.array([score for _, score in inference.predict(session.exported, session.task, texts, cfg.eval_batch_size)])
    evaluate(warm)
    started = time.perf_counter()
    results["eval_accuracy"] = evaluate(eval_split)
    results["eval_reviews_per_s"] = EVAL_REVIEWS / (time.perf_counter() - started)

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
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print("CHILD " + json.dumps(child(json.loads(args.child))), flush=True)
        return None
    common.real_data_flags()  # build MiniLM and check the data before the children start
    results = {}
    for spec in configurations(args.seq_lengths):
        run = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True,
                             text=True)
        lines = [line for line in run.stdout.splitlines() if line.startswith("CHILD ")]
        if run.returncode or not lines:
            print(f"{spec['name']} failed:\n{run.stderr[-3000:]}", flush=True)
            continue
        results[spec["name"]] = json.loads(lines[-1][6:])
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
