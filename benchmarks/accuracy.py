"""Test accuracy of the named recipes on the real IMDB reviews, with the MiniLM stand-in.

    python benchmarks/accuracy.py --protocol compare   # best, official, tutorial on a fixed subset
    python benchmarks/accuracy.py --protocol full      # best recipe, whole split (hours on 2 cores)

Runs the suite's own training code (training.run) and prints one line per recipe.
"""
import argparse
import time

import common

PROTOCOLS = {
    # 2,000 train / 500 validation reviews from train/ (seed 42), 2,500 fixed test reviews.
    "compare": dict(caps=(2000, 500, 2500), recipes=("best", "official", "tutorial")),
    "full": dict(caps=(0, 0, 0), recipes=("best",)),
}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--protocol", choices=PROTOCOLS, default="compare")
    parser.add_argument("--recipes", nargs="*", help="a subset of the protocol's recipes")
    parser.add_argument("--precision", help="passed to the suite (default: each recipe's own)")
    parser.add_argument("--epochs", type=int, help="override the recipes' epochs, to fit a time budget")
    args = parser.parse_args(argv)
    protocol = PROTOCOLS[args.protocol]
    flags = common.real_data_flags()

    import config
    import imdb
    import training
    results = {}
    for recipe in args.recipes or protocol["recipes"]:
        overrides = {"epochs": args.epochs} if args.epochs else {}
        if args.precision:
            overrides["precision"] = args.precision
        cfg = config.resolve(recipe=recipe, plots_dir=f"{common.RESULTS}/plots",
                             model_dir=f"{common.RESULTS}/models/{args.protocol}_{recipe}", **flags, **overrides)
        splits = imdb.load_splits(cfg, caps=protocol["caps"])
        started = time.time()
        record = training.run(cfg, splits=splits)
        results[recipe] = {"epochs": cfg.epochs, "test_accuracy": record["test_metrics"]["accuracy"],
                           "test_loss": record["test_metrics"]["loss"],
                           "best_epoch": record["best_epoch"], "epochs_run": len(record["history"]["loss"]),
                           "split_sizes": record["split_sizes"], "precision": record["precision"],
                           "wall_seconds": round(time.time() - started)}
        print(f"RESULT protocol={args.protocol} recipe={recipe} "
              f"test_accuracy={results[recipe]['test_accuracy']:.4f} "
              f"wall={results[recipe]['wall_seconds']}s", flush=True)
        common.save_result(f"accuracy_{args.protocol}", {"machine": common.machine(), "results": results})
    if "best" in results and "official" in results:
        gain = results["best"]["test_accuracy"] - results["official"]["test_accuracy"]
        print(f"best - official = {100 * gain:+.1f} points")
    return results


if __name__ == "__main__":
    main()
