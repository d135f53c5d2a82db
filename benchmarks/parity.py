"""Does a trained checkpoint score the same under our pipeline, the tutorial's, its signature, bfloat16 and TFLite?

    python benchmarks/parity.py --model-dir benchmarks/results/models/compare_best

Scores the first --reviews of the fixed test subset (seed 42) in several ways, each in its own
process since the precision rewrite is process-wide: our pipeline in float32 (sorted,
padded per batch, batch 128: what predict.py and serve.py run), the tutorial's (in order,
every review padded to the full length, batch 32) in float32, the SavedModel's serving_default
signature in float32 (what TensorFlow Serving runs), ours with the bfloat16 rewrite, the fused graph
(--engine fused, the default) in float32 and bfloat16 (its float32 attention the suite's kernel;
"fused-chunks": TensorFlow's ops a chunk of the batch at a time, as without a compiler and in bfloat16;
"fused-whole": TensorFlow's ops on the whole batch at once), --engine fused-int8 (and
"fused-int8-batch-ranges": its activations quantized over each batch's range), and the TFLite
engines (TFLite in float32, --engine tflite-int8, and float16 weights as export.py --quantize float16
writes them). Each is compared with ours in float32: accuracy, labels agreeing, largest
probability difference; and each one's reviews/s, scoring from the raw texts (a TFLite engine's
conversion, made before, not counted). A fused way's run must have run attention as its name says
(fused-fp32: the kernel; fused-chunks: chunks; fused-whole: as saved), or it counts as failed.

Each way is held to the accuracy target (within 0.3 points of float32's accuracy, labels agreeing on
at least 99% of the reviews). Appends the run to benchmarks/results/parity.json's "runs" (earlier runs
are kept); exits 1 if any way failed or missed the target, after printing the others.
"""
import argparse
import json
import subprocess
import sys
import time

import common
import numpy as np

WAYS = {"ours-fp32": ("fast", "float32"), "tutorial-fp32": ("tutorial", "float32"),
        "signature-fp32": ("signature", "float32"), "ours-bf16": ("fast", "bfloat16"),
        "fused-fp32": ("fused", "float32"), "fused-bf16": ("fused", "bfloat16"),
        "fused-chunks-fp32": ("fused-chunks", "float32"),
        "fused-whole-fp32": ("fused-whole", "float32"), "fused-whole-bf16": ("fused-whole", "bfloat16"),
        "fused-int8": ("fused-int8", "float32"), "fused-int8-batch-ranges": ("fused-int8-batch-ranges", "float32"),
        "tflite-fp32": ("tflite", "float32"), "tflite-int8": ("tflite-int8", "float32"),
        "tflite-fp16": ("tflite-float16", "float32")}  # the last: export.py --quantize float16's weights
# How a fused way's graph must run attention (engines.attention_in_use); float32's fused way needs the kernel.
# The accuracy target for every engine, against ours in float32 on the same reviews.
TARGET_POINTS, TARGET_AGREEING = 0.3, 0.99
ATTENTION = {"fused-fp32": "kernel", "fused-int8": "kernel", "fused-int8-batch-ranges": "kernel",
             "fused-chunks-fp32": "chunks", "fused-bf16": "chunks",
             "fused-whole-fp32": "as saved", "fused-whole-bf16": "as saved"}


def child(model_dir, reviews, pipeline, precision):
    import numpy as np

    import config
    from tfhub_classifier.data import imdb, tokenization
    from tfhub_classifier.inference import engines, scoring
    from tfhub_classifier.model import saving
    from tfhub_classifier.runtime import tf
    if pipeline == "tflite-float16":  # not an engine: float16 weights as export.py writes them
        from tfhub_classifier.export import tflite
        model, record = saving.load(model_dir)
        model = engines.TfliteClassifier(model, tflite.convert(model, saving.task_of_record(record).kind,
                                                               record["config"]["seq_length"], "float16"))
    else:
        if pipeline == "fused-whole":  # the fused graph with each attention TensorFlow's ops on the whole batch
            from tfhub_classifier.model import attention_chunks, attention_kernel
            attention_chunks.find = attention_kernel.find = lambda graph: []
            pipeline = "fused"
        if pipeline == "fused-int8-batch-ranges":  # each int8 layer's activations over each batch's own range
            engines.INT8_OPTIONS = dict(engines.INT8_OPTIONS, int8_ranges="batch")
            pipeline = "fused-int8"
        if pipeline == "fused-chunks":  # the fused graph's attention in chunks, to measure the kernel
            from tfhub_classifier.model import attention_kernel
            attention_kernel.find = lambda graph: []
            pipeline = "fused"
        engine = pipeline if pipeline in engines.QUANTIZATION or pipeline in ("fused", "fused-int8") else "savedmodel"
        model, record, _ = engines.load(model_dir, precision, engine, log=lambda line: print(line, file=sys.stderr))
        common.require_engine(engine, engines.in_use(model, engine), "the note above")
    cfg = config.resolve(**common.real_data_flags())
    _, _, test = imdb.load_splits(cfg, with_train=False, caps=(0, 0, reviews))
    scoring.logits_of(model, test.texts[:32], 128)  # warm up
    started = time.perf_counter()
    if pipeline in ("fast", "fused", "fused-int8") or pipeline.startswith("tflite"):
        logits = scoring.logits_of(model, test.texts, 128)
    elif pipeline == "signature":
        signature = model.signatures[saving.SERVING_SIGNATURE]
        probabilities = np.concatenate([signature(text=tf.constant(test.texts[i:i + 32]))["probabilities"].numpy()
                                        for i in range(0, len(test), 32)]).astype(np.float64)
        logits = np.log(probabilities) - np.log1p(-probabilities)
    else:
        logits = np.concatenate([
            model.classify_tokens(model.preprocess(tf.constant([tokenization.sanitize(t) for t in
                                                                test.texts[i:i + 32]]))).numpy().reshape(-1)
            for i in range(0, len(test), 32)])
    seconds = time.perf_counter() - started
    return {"accuracy": float(np.mean((logits >= 0) == test.labels)), "reviews_per_s": len(test) / seconds,
            "seq_length": record["config"]["seq_length"], "reviews": len(test),
            "attention": engines.attention_in_use(model),
            "int8_layers": model.fused.int8_layers if isinstance(model, engines.FusedClassifier) else 0,
            "probabilities": (1 / (1 + np.exp(-np.asarray(logits, np.float64)))).tolist()}


def misses_target(accuracy_points, labels_agreeing):
    """Whether a way's accuracy differs from float32's by more than TARGET_POINTS points or its labels agree on
    fewer than TARGET_AGREEING of the reviews (a hair of float rounding allowed)."""
    return abs(accuracy_points) > TARGET_POINTS + 1e-9 or labels_agreeing < TARGET_AGREEING - 1e-9


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", required=True)
    parser.add_argument("--reviews", type=int, default=1000)
    parser.add_argument("--ways", nargs="+", choices=WAYS, default=list(WAYS),
                        help="the ways to score (default: all; ours-fp32, the reference, always runs)")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print("CHILD " + json.dumps(child(args.model_dir, args.reviews, *args.child)), flush=True)
        return None
    print(common.machine_header(common.cpu_flags()), flush=True)
    results, failed = {}, []
    for name, (pipeline, precision) in WAYS.items():
        if name not in args.ways and name != "ours-fp32":
            continue
        run = subprocess.run([sys.executable, __file__, "--model-dir", args.model_dir, "--reviews",
                              str(args.reviews), "--child", pipeline, precision], capture_output=True, text=True)
        lines = [line for line in run.stdout.splitlines() if line.startswith("CHILD ")]
        if run.returncode or not lines:
            print(f"{name} failed:\n{run.stderr[-3000:]}")
            failed.append(name)
            continue
        result = json.loads(lines[-1][6:])
        if name in ATTENTION and result["attention"] != ATTENTION[name]:
            print(f"{name} failed: its attention ran as {result['attention']!r}, not as {ATTENTION[name]!r}; its "
                  f"figures would not be its name's:\n{run.stderr[-3000:]}")
            failed.append(name)
            continue
        results[name] = result
        print(f"{name:<18} accuracy={result['accuracy']:.4f} reviews/s={result['reviews_per_s']:.1f}"
              + (f" attention={result['attention']}" if result["attention"] else "")
              + (f" int8_layers={result['int8_layers']}" if result.get("int8_layers") else ""), flush=True)
    if "ours-fp32" in results:
        reference = np.array(results["ours-fp32"]["probabilities"])
        for name in results.keys() - {"ours-fp32"}:
            probabilities = np.array(results[name]["probabilities"])
            results[name]["labels_agreeing"] = float(np.mean((probabilities >= 0.5) == (reference >= 0.5)))
            results[name]["max_probability_difference"] = float(np.max(np.abs(probabilities - reference)))
            points = 100 * (results[name]["accuracy"] - results["ours-fp32"]["accuracy"])
            results[name]["misses_target"] = misses_target(points, results[name]["labels_agreeing"])
            print(f"{name} - ours-fp32 = {points:+.2f} points; labels agree on "
                  f"{100 * results[name]['labels_agreeing']:.2f}%; largest probability difference "
                  f"{results[name]['max_probability_difference']:.2g}; target (within {TARGET_POINTS} points, "
                  f"{100 * TARGET_AGREEING:.0f}% agreeing) {'MISSED' if results[name]['misses_target'] else 'met'}")
    if results:
        common.append_result("parity", {"machine": common.machine(), "cpu_flags": common.cpu_flags(),
                                        "date": time.strftime("%Y-%m-%d"), "model_dir": args.model_dir,
                                        "reviews": args.reviews, "results": results, "failed": failed})
    missed = [name for name, result in results.items() if result.get("misses_target")]
    if failed or missed:
        sys.exit("; ".join(([f"{len(failed)} of the ways failed: {', '.join(failed)}"] if failed else [])
                           + ([f"missing the accuracy target: {', '.join(missed)}"] if missed else [])))
    return results


if __name__ == "__main__":
    main()
