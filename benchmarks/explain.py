"""How faithful and how fast are predict.py --explain's word weights? Deletion tests on real reviews.

    python benchmarks/explain.py --model-dir benchmarks/results/models/compare_best
    python benchmarks/explain.py --model-dir ... --reviews 40 --windows 128   # a quick look

For each window (128 and 512 tokens, the model's own truncation), the first --reviews reviews of the
fixed test subset (seed 42) are explained toward the label the model gives them, by integrated
gradients (attribution.Explainer, --steps nodes) and by leave-one-word-out occlusion (the simple
baseline). Deletion test: the top 5%, 10% and 20% of the words the model sees (by weight) are deleted
from the review and the drop in the label's probability is measured; against deleting as many words
drawn at random (mean of 5 draws). Printed: the mean drop of each method at each share, the ratios
that the targets name (integrated gradients over random and over occlusion), seconds per review of
each method, and completeness: how far the attributions' sum is from the probability's change from
the baseline, at 8, 16, 32 and 64 nodes and as the suite runs it (32, doubled up to 128 where a
review misses by over 5%), on the first --completeness-reviews reviews.
"""
import argparse
import random
import statistics
import time

import common  # noqa: I001  (puts the repository on sys.path)
import numpy as np

import config

SHARES = (0.05, 0.10, 0.20)
RANDOM_DRAWS = 5
STEP_COUNTS = (8, 16, 32, 64)


def deletion_drops(explainer, texts, labels, explanations, rng):
    """{share: [drop per review]} for the top words of explanations, and for random words."""
    from tfhub_classifier.inference import attribution
    top, randomly = {share: [] for share in SHARES}, {share: [] for share in SHARES}
    for text, label, explanation in zip(texts, labels, explanations):
        seen = [i for i, weight in enumerate(explanation.weights) if weight is not None]
        if not seen:
            continue
        variants, kinds = [text], []
        for share in SHARES:
            count = max(1, round(share * len(seen)))
            ranked = sorted(seen, key=lambda i: -explanation.weights[i])[:count]
            variants.append(attribution.without(text, [explanation.offsets[i] for i in ranked]))
            kinds.append((share, "top"))
            for _ in range(RANDOM_DRAWS):
                drawn = rng.sample(seen, count)
                variants.append(attribution.without(text, [explanation.offsets[i] for i in drawn]))
                kinds.append((share, "random"))
        probabilities = explainer.probabilities(variants, [label] * len(variants))
        drops = probabilities[0] - probabilities[1:]
        for share in SHARES:
            top[share].append(float(np.mean([d for d, k in zip(drops, kinds) if k == (share, "top")])))
            randomly[share].append(float(np.mean([d for d, k in zip(drops, kinds) if k == (share, "random")])))
    return top, randomly


def completeness_gaps(explainer, texts, labels):
    """{steps: [|sum of attributions - (p - p_baseline)| / |p - p_baseline| per review]} at each fixed
    number of nodes (the suite's doubling turned off), then under "doubling" the suite's own: from
    attribution.STEPS, doubled up to attribution.MAX_STEPS where a review misses by over 5%."""
    from tfhub_classifier.inference import attribution
    gaps, suite = {}, (attribution.STEPS, attribution.MAX_STEPS)
    try:
        for steps in (*STEP_COUNTS, "doubling"):
            explainer.steps, attribution.MAX_STEPS = (suite if steps == "doubling" else (steps, steps))
            gaps[steps] = []
            for explanation in explainer.integrated(texts, labels):
                change = explanation.probability - explanation.baseline
                total = sum(weight for weight in explanation.weights if weight is not None)
                if abs(change) > 1e-3:
                    gaps[steps].append(abs(total - change) / abs(change))
    finally:
        explainer.steps, attribution.MAX_STEPS = suite
    return gaps


def run_window(model, record, task, window, args):
    from tfhub_classifier.data import imdb
    from tfhub_classifier.inference import attribution
    explainer = attribution.Explainer(model, task, window, record["config"]["truncation"], steps=args.steps)
    _, _, test = imdb.load_splits(config.resolve(**common.real_data_flags()), with_train=False,
                                  caps=(0, 0, args.reviews))
    texts = list(test.texts)
    from tfhub_classifier.model import saving
    threshold = saving.threshold_in_use(None, record)
    labels = [int(p >= threshold) for p in explainer.probabilities(texts, [1] * len(texts))]
    explainer.integrated(texts[:2], labels[:2])  # warm-up: traces the gradient's graphs
    figures = {"window": window, "reviews": len(texts)}
    for name, method in (("integrated_gradients", explainer.integrated), ("occlusion", explainer.occlusion)):
        started = time.perf_counter()
        explanations = method(texts, labels)
        figures[f"{name}_seconds_per_review"] = (time.perf_counter() - started) / len(texts)
        top, randomly = deletion_drops(explainer, texts, labels, explanations, random.Random(42))
        figures[name] = {f"{share:.0%}": statistics.mean(top[share]) for share in SHARES}
        figures["random"] = {f"{share:.0%}": statistics.mean(randomly[share]) for share in SHARES}
        print(f"window {window}: {name}: {figures[f'{name}_seconds_per_review']:.2f} s/review; mean drop deleting "
              "the top " + ", ".join(f"{k}: {v:.4f}" for k, v in figures[name].items())
              + "; random words: "
              + ", ".join(f"{k}: {v:.4f}" for k, v in figures["random"].items()), flush=True)
    ig, occlusion = figures["integrated_gradients"]["10%"], figures["occlusion"]["10%"]
    chance = figures["random"]["10%"]
    print(f"explain-ratio window={window} top10%: integrated gradients / random = {ig / chance:.2f}x; "
          f"/ occlusion = {ig / occlusion:.2f}x; time / occlusion's = "
          f"{figures['integrated_gradients_seconds_per_review'] / figures['occlusion_seconds_per_review']:.2f}x",
          flush=True)
    gaps = completeness_gaps(explainer, texts[:args.completeness_reviews], labels[:args.completeness_reviews])
    figures["completeness"] = {}
    for steps, values in gaps.items():
        within = np.mean([gap <= 0.05 for gap in values]) if values else float("nan")
        figures["completeness"][steps] = {"median_gap": statistics.median(values) if values else None,
                                          "within_5_percent": float(within), "reviews": len(values)}
        print(f"window {window}: completeness at {steps} steps: median gap {statistics.median(values):.2%}, "
              f"within 5% on {within:.0%} of {len(values)} reviews", flush=True)
    return figures


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", required=True, help="a binary model trained on IMDB")
    parser.add_argument("--reviews", type=int, default=200)
    parser.add_argument("--completeness-reviews", type=int, default=40)
    parser.add_argument("--windows", default="128,512")
    parser.add_argument("--steps", type=int, default=None, help="integrated gradients' nodes (default: the suite's)")
    parser.add_argument("--precision", default="float32")
    args = parser.parse_args(argv)
    from tfhub_classifier.inference import attribution
    from tfhub_classifier.model import saving
    args.steps = args.steps or attribution.STEPS
    model, record, precision = saving.load_model(args.model_dir, args.precision)
    task = saving.task_of_record(record)
    if task.kind != "binary":
        raise SystemExit("give a binary IMDB model: the deletion test explains the label the model gives")
    results = [run_window(model, record, task, int(window), args) for window in args.windows.split(",")]
    common.save_result("explain", {"machine": common.machine(), "model_dir": args.model_dir, "precision": precision,
                                   "steps": args.steps, "results": results})


if __name__ == "__main__":
    main()
