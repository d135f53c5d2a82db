"""Serving throughput and latency of serve.py, with server-side batching on and off, on real reviews.

    python benchmarks/serving.py                     # 1, 8 and 32 clients; about 10 minutes on 2 cores
    python benchmarks/serving.py --requests 96       # a quick look
    python benchmarks/serving.py --seq-length 64     # shorter texts: model calls cost less, batching gains more

The model: the MiniLM stand-in fine-tuned by train.py on 64 reviews for one epoch (--recipe
official: the first --seq-length tokens, 128 by default), trained once into
benchmarks/results/models/serving_minilm_seqN; speed doesn't depend on how well it classifies.
For each setting, serve.py runs in its own process with its defaults (--batch-timeout-ms 5),
--engine ENGINE (default fused) at --precision bfloat16 where the CPU has AVX512-BF16/AMX (float32 elsewhere;
the int8 engines take no --precision), and --batch-size 32
(batching on) or 1 (off: one text per model call). For each number of clients, that many threads
each send one IMDB test review per request on a keep-alive connection, after an untimed warm-up, until
--requests requests are sent: throughput = requests answered / wall time (a failed request is not
counted, and the script exits 1 at the end), and p50/p99 of each answered request's latency. Mean batch =
texts scored / model calls, as serve.py's /healthz counts them.
The last lines, `serving-ratio clients=C batching=X`, are batching's throughput over no batching's.

First, the ceiling: in a process of its own, the same model scores CEILING_REVIEWS of the same
reviews through the server's own scoring (servable.Servable.score) without HTTP or the batcher, in
consecutive calls of 1 and of 32 reviews (fastest of 3 passes after a warm-up). Their ratio is what
server-side batching could give if requests cost nothing else; `serving-ceiling batching=X` prints it.
"""
import argparse
import http.client
import json
import os
import statistics
import subprocess
import sys
import threading
import time

import common  # noqa: I001  (puts the repository on sys.path)

import config

sys.path.insert(0, os.path.join(common.ROOT, "tests"))  # serving_client: the tests' server harness
import serving_client  # noqa: E402

TRAIN_REVIEWS = 64
REVIEWS = 2000  # distinct test reviews the clients cycle through
WARM_UP_REQUESTS = 256  # untimed, at the most clients, so each batch shape has been run once
SETTINGS = {"on": 32, "off": 1}  # --batch-size of each setting
STARTUP_SECONDS = 300
CEILING_REVIEWS = 256  # reviews the model scores alone, per setting, after a warm-up of the same
PRECISION = "bfloat16" if config.hardware.cpu_supports_bfloat16() else "float32"  # what auto picks elsewhere


def train_model(seq_length):
    """The benchmark's model, trained the first time."""
    model_dir = os.path.join(common.RESULTS, "models", f"serving_minilm_seq{seq_length}")
    if os.path.isfile(os.path.join(model_dir, "run.json")):
        return model_dir
    flags = common.real_data_flags()
    command = [sys.executable, os.path.join(common.ROOT, "train.py"), "--recipe", "official", "--epochs", "1",
               "--max-examples", str(TRAIN_REVIEWS), "--seq-length", str(seq_length), "--model-dir", model_dir,
               "--checkpoint-every", "0", "--plots-dir", os.path.join(common.RESULTS, "plots", "serving")]
    for name, value in flags.items():
        command += [f"--{config.flag_name(name, config.TRAIN)}", value]
    print(f"Training the benchmark's model into {model_dir} ...", flush=True)
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return model_dir


def test_reviews(count):
    from tfhub_classifier.data import imdb
    _, _, test = imdb.load_splits(config.resolve(**common.real_data_flags()), with_train=False,
                                  caps=(0, 0, count))
    return test.texts


class Server(serving_client.ServerProcess):
    """serve.py in its own process with --batch-size batch_size; the benchmark ends if it won't start."""

    def __init__(self, model_dir, batch_size, log_path, engine="fused"):
        scoring = ["--engine", engine] + (["--precision", PRECISION] if engine not in config.INT8_ENGINES else [])
        try:
            super().__init__(model_dir, log_path, "--batch-size", str(batch_size), *scoring,
                             startup_seconds=STARTUP_SECONDS)
        except RuntimeError as error:
            sys.exit(f"{str(error).splitlines()[0]} see {log_path}")


def load(server, reviews, clients, requests):
    """requests one-review requests from clients threads: (seconds, the answered requests' latencies,
    failures)."""
    latencies, failures = [], []
    share = [requests // clients + (i < requests % clients) for i in range(clients)]

    def client(number):
        connection = http.client.HTTPConnection(serving_client.HOST, server.port, timeout=600)
        for i in range(share[number]):
            body = json.dumps({"instances": [reviews[(number * 7919 + i) % len(reviews)]]})
            started = time.perf_counter()
            try:
                connection.request("POST", server.predict_path, body, {"Content-Type": "application/json"})
                response = connection.getresponse()
                answer = response.read()
                if response.status != 200 or len(json.loads(answer)["predictions"]) != 1:
                    failures.append(f"{response.status}: {answer[:200]!r}")
                else:
                    latencies.append(time.perf_counter() - started)
            except (OSError, http.client.HTTPException, ValueError, KeyError, TypeError) as error:
                failures.append(repr(error))
                connection.close()
                connection = http.client.HTTPConnection(serving_client.HOST, server.port, timeout=600)
        connection.close()

    threads = [threading.Thread(target=client, args=(number,)) for number in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return time.perf_counter() - started, latencies, failures


def ceiling(spec):
    """Reviews/s of the server's scoring alone at each setting's texts per call: what its calls can reach."""
    from tfhub_classifier.inference import engines
    from tfhub_classifier.model import saving
    from tfhub_classifier.serving.servable import Servable
    defaults = config.Config()
    engine = spec.get("engine", "fused")
    model, record, precision = engines.load(spec["model_dir"],
                                            "float32" if engine in config.INT8_ENGINES else PRECISION,
                                            engine)
    common.require_engine(engine, engines.in_use(model, engine), "the note above")
    task = saving.task_of_record(record)
    reviews = test_reviews(REVIEWS)[:CEILING_REVIEWS]
    figures = {"precision": precision}
    for setting, batch_size in SETTINGS.items():
        servable = Servable(model, record, task, saving.threshold_in_use(defaults.threshold, record), defaults.top_k,
                            batch_size, engine=engines.in_use(model, engine),
                            attention=engines.attention_in_use(model))
        calls = [reviews[start:start + batch_size] for start in range(0, len(reviews), batch_size)]
        figures[setting] = len(reviews) / common.fastest(
            lambda servable=servable, calls=calls: [servable.score(texts) for texts in calls])
    return figures


def percentile(values, share):
    if not values:  # every request failed: no latency to give
        return float("nan")
    return statistics.quantiles(values, n=100, method="inclusive")[share - 1] if len(values) > 1 else values[0]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--requests", type=int, default=1024, help="timed requests per setting and client count")
    parser.add_argument("--seq-length", type=int, default=128, help="tokens per review the model reads")
    parser.add_argument("--engine", choices=config.ENGINES, default="fused",
                        help="serve.py --engine (fused and savedmodel: at --precision bfloat16 where the CPU has it)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        common.report_child(ceiling(json.loads(args.child)))
        return None
    model_dir = train_model(args.seq_length)
    reviews = test_reviews(REVIEWS)
    results = {}
    alone = common.run_child(__file__, {"name": "model alone", "model_dir": model_dir, "engine": args.engine})
    if alone:
        results["model_alone"] = alone
        print(f"model alone ({alone['precision']}, no server): {alone['on']:.1f} reviews/s at "
              f"{SETTINGS['on']} texts a call, "
              f"{alone['off']:.1f} at one text a call", flush=True)
    for setting, batch_size in SETTINGS.items():
        server = Server(model_dir, batch_size, os.path.join(common.RESULTS, f"serving-{setting}.log"), args.engine)
        try:
            common.require_engine(args.engine, server.health()["engine"], server.log_path)
            load(server, reviews, max(args.clients), min(WARM_UP_REQUESTS, 8 * max(args.clients)))
            for clients in args.clients:
                before = server.health()
                seconds, latencies, failures = load(server, reviews, clients, args.requests)
                after = server.health()
                calls = after["model_calls"] - before["model_calls"]
                row = {"batch_size": batch_size, "clients": clients, "requests": len(latencies) + len(failures),
                       "failures": len(failures), "reviews_per_s": len(latencies) / seconds,
                       "p50_ms": 1000 * percentile(latencies, 50), "p99_ms": 1000 * percentile(latencies, 99),
                       "mean_batch": (after["texts_scored"] - before["texts_scored"]) / max(calls, 1)}
                results[f"{setting}@{clients}"] = row
                print(f"batching {setting:<3} (--batch-size {batch_size:>2})  clients {clients:>2}  "
                      f"{row['reviews_per_s']:7.1f} reviews/s  p50 {row['p50_ms']:7.1f} ms  "
                      f"p99 {row['p99_ms']:7.1f} ms  mean batch {row['mean_batch']:5.1f}"
                      + (f"  FAILED {len(failures)}: {failures[0]}" if failures else ""), flush=True)
                common.save_result(f"serving-{args.engine}", {"machine": common.machine(), "requests": args.requests,
                                                              "seq_length": args.seq_length, "engine": args.engine,
                                                              "results": results})
        finally:
            server.stop()
    for clients in args.clients:
        on, off = results.get(f"on@{clients}"), results.get(f"off@{clients}")
        if on and off:
            print(f"serving-ratio clients={clients} batching={on['reviews_per_s'] / off['reviews_per_s']:.2f}")
    if alone:
        print(f"serving-ceiling batching={alone['on'] / alone['off']:.2f}")
    failed = [name for name, row in results.items() if isinstance(row, dict) and row.get("failures")]
    if failed:
        sys.exit(f"requests failed in {', '.join(failed)}: their reviews/s count only the answered ones")
    return results


if __name__ == "__main__":
    main()
