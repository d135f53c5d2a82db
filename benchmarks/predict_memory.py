"""Peak memory of predict.py --file against the file's length: it should stay flat.

    python benchmarks/predict_memory.py                    # 10k, 100k and 1M lines, each in its own process
    python benchmarks/predict_memory.py --lines 1000 100000

The model is stubbed (its tokenizer and network return fixed-size tensors at once, a 100-label
multi-class head), so what is measured is predict.py's own reading, batching, scoring loop and
writing, not the network's memory. Each length runs in a fresh process, writing JSON Lines to
/dev/null; peak resident memory is the process's ru_maxrss. Ratios are against the shortest file.
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import time

import common

LABELS = 100


def write_lines(path, count):
    if not os.path.isfile(path):
        with open(path + ".partial", "w") as f:
            for i in range(count):
                f.write(f"text number {i}, a line of a file to label with one of {LABELS} labels\n")
        os.rename(path + ".partial", path)
    return path


def stub_model_dir(folder):
    """A folder predict.py accepts as a model (its files are checked, the stub replaces the load)."""
    os.makedirs(folder, exist_ok=True)
    open(os.path.join(folder, "saved_model.pb"), "wb").close()
    with open(os.path.join(folder, "run.json"), "w") as f:
        json.dump({"task": {"kind": "multiclass", "label_names": [f"label_{k}" for k in range(LABELS)]}}, f)
    return folder


def child(path, model_dir):
    """Run predict.py's main on path with the stub model; print the peak RSS and seconds as JSON."""
    import predict
    from tfhub_classifier.inference import engines
    from tfhub_classifier.runtime import tf

    class Stub:
        def preprocess(self, texts):
            ones = tf.ones([tf.shape(texts)[0], 16], tf.int32)
            return {"input_word_ids": ones, "input_mask": ones, "input_type_ids": tf.zeros_like(ones)}

        def classify_tokens(self, tokens):
            return tf.random.normal([tf.shape(tokens["input_word_ids"])[0], LABELS])

    with open(os.path.join(model_dir, "run.json")) as f:
        record = json.load(f)
    engines.load = lambda model_dir, precision, engine, log=print: (Stub(), record, "float32")
    started = time.time()
    real_stdout = sys.stdout
    with open(os.devnull, "w") as sink:
        sys.stdout = sink
        try:
            count = predict.main(["--model-dir", model_dir, "--file", path, "--format", "jsonl", "--batch-size", "512"])
        finally:
            sys.stdout = real_stdout
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
    print(json.dumps({"lines": count, "peak_bytes": peak, "seconds": round(time.time() - started, 1)}))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, nargs="*", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--child", nargs=2, metavar=("FILE", "MODEL_DIR"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return child(*args.child)
    folder = os.path.join(common.RESULTS, "predict_memory")
    model_dir = stub_model_dir(os.path.join(folder, "stub_model"))
    results = []
    for count in sorted(args.lines):
        path = write_lines(os.path.join(folder, f"lines_{count}.txt"), count)
        done = subprocess.run([sys.executable, __file__, "--child", path, model_dir], check=True,
                              capture_output=True, text=True)
        result = json.loads(done.stdout.strip().splitlines()[-1])
        results.append(result)
        base = results[0]["peak_bytes"]
        print(f"{result['lines']:>9,} lines: peak {result['peak_bytes'] / 2**20:,.0f} MiB "
              f"({result['peak_bytes'] / base:.2f}x the {results[0]['lines']:,}-line file's), "
              f"{result['seconds']:.0f} s", flush=True)
    common.save_result("predict_memory", {"machine": common.machine(), "labels": LABELS, "results": results})
    return results


if __name__ == "__main__":
    main()
