"""The fused graph with oneDNN int8 dense layers (model/quantization.py) against the fused graph in float32,
layer group by layer group: how far each moves the scores, and how much faster it runs.

    python benchmarks/int8_layers.py --model-dir benchmarks/results/models/compare_official --reviews 2500

Scores the first --reviews of the fixed test subset (seed 42, as parity.py) from the raw texts in one
process: the fused graph in float32 (the reference), then with the dense layers of each group as int8
products (activations quantized per batch, weights within 7 bits with one scale a layer or, with
--scales per-column, one a column; with --smoothing reviews or generic, each input's channels evened
out by SmoothQuant scales measured on 256 training reviews or on --engine fused-int8's own sentences;
each setting is run with each of --scales and --smoothing).
Groups by the MiniLM stand-in's layer names: attention's query/key/value, its output, the feed-forward
block's first layer (reading layer normalization's output) and its second (reading GELU's); then all
but the second, and all. Each setting scores the reviews --rounds times, the settings taking turns,
keeping its best reviews/s. Every setting must run attention as the float32 reference does and hold the
weights of the GELU layers it leaves in float32 as the reference holds them (model/fusion.py), so that
only the int8 products differ. Prints per setting the logits' largest and mean difference from float32's,
labels agreeing, accuracy against float32's (parity.py's accuracy target: within 0.3 points, 99%
agreeing; "target_met" in the record) and reviews/s against float32's, and each int8 layer's largest
weight against its 99.9th percentile; appends the run to benchmarks/results/int8_layers.json.
"""
import argparse
import sys
import time

import common
import numpy as np

GROUPS = {"query-key-value": ("/query/", "/key/", "/value/"), "attention-output": ("/attention_output/",),
          "feed-forward-in": ("/intermediate/",), "feed-forward-out": ("/output/BiasAdd",)}
SETTINGS = {**GROUPS, "all-but-feed-forward-out": sum((GROUPS[name] for name in list(GROUPS)[:3]), ()),
            "all": sum(GROUPS.values(), ())}
TARGET_POINTS, TARGET_AGREEING = 0.3, 0.99


def setting_name(setting, scales, smoothing):
    return f"{setting} {scales}" + ("" if smoothing == "none" else f" smoothed-{smoothing}")


def largest_weights(graph, bias_add):
    """(The largest |weight|, the 99.9th percentile of |weight|) of the dense layer whose BiasAdd is bias_add."""
    from tfhub_classifier.model.graph_edits import node_of
    matmul = graph.nodes[node_of(graph.nodes[bias_add].input[0])]
    magnitudes = np.abs(graph.constant(matmul.input[1]))
    return float(magnitudes.max()), float(np.quantile(magnitudes, 0.999))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", required=True)
    parser.add_argument("--reviews", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--settings", nargs="+", choices=SETTINGS, default=list(SETTINGS))
    parser.add_argument("--scales", nargs="+", choices=("per-layer", "per-column"), default=["per-layer"])
    parser.add_argument("--smoothing", nargs="+", choices=("none", "reviews", "generic"), default=["none"],
                        help="SmoothQuant scales from: none, reviews (the first 256 training reviews), or "
                             "generic (--engine fused-int8's own sentences); each setting runs with each")
    args = parser.parse_args(argv)

    import config
    from tfhub_classifier.data import imdb
    from tfhub_classifier.inference import engines, scoring
    from tfhub_classifier.model import quantization, saving
    cfg = config.resolve(**common.real_data_flags())
    with_train = "reviews" in args.smoothing  # the training reviews are read only to calibrate on
    train, _, test = imdb.load_splits(cfg, with_train=with_train, caps=(256 if with_train else 0, 1, args.reviews))
    calibration = {"none": None, "reviews": list(train.texts[:256]) if with_train else None,
                   "generic": engines.CALIBRATION_TEXTS}
    model, _, _ = saving.load_model(args.model_dir, "float32")
    every_layer = quantization.quantize_dense
    scorers = {"float32": engines.FusedClassifier(model, log=lambda line: None)}
    chosen_settings = [(setting, scales, smoothing) for setting in args.settings for scales in args.scales
                       for smoothing in args.smoothing]
    weights = {}  # each int8 layer's (largest |weight|, the 99.9th percentile of |weight|)
    for setting, scales, smoothing in chosen_settings:
        def chosen(graph, bias_adds, weight_scales, names=SETTINGS[setting], **options):
            layers = [layer for layer in bias_adds if any(part in layer for part in names)]
            weights.update({layer: largest_weights(graph, layer) for layer in layers})
            return every_layer(graph, layers, weight_scales, **options)
        quantization.quantize_dense = chosen
        name = setting_name(setting, scales, smoothing)
        scorers[name] = engines.FusedClassifier(model, log=lambda line: None, int8=scales,
                                                int8_calibration=calibration[smoothing])
        fused, reference = scorers[name].fused, scorers["float32"].fused
        if not fused.int8_layers:
            sys.exit(f"{setting}: no dense layer's name holds {SETTINGS[setting]}: not the MiniLM stand-in's graph?")
        # The GELU layers are the feed-forward block's first: in int8 they hold nothing, in float32 as the reference.
        held = 0 if GROUPS["feed-forward-in"][0] in SETTINGS[setting] else reference.gelu_weights_held
        nodes = {node.name: node for node in fused.function.graph.as_graph_def().node}
        column_products = sum(len(nodes[node.input[6]].attr["value"].tensor.tensor_shape.dim) == 1
                              for node in nodes.values() if node.op == "_QuantizedMatMul")
        if column_products != (fused.int8_layers if scales == "per-column" else 0):
            sys.exit(f"{name}: {column_products} of {fused.int8_layers} int8 products scaled by column")
        if engines.attention_in_use(scorers[name]) != engines.attention_in_use(scorers["float32"]) \
                or fused.gelu_weights_held != held:
            sys.exit(f"{name}: its attention or held weights differ from float32's: its speed would not be the int8 "
                     "products' alone")
    quantization.quantize_dense = every_layer
    print(f"{common.machine_header(common.cpu_flags())}\n{args.model_dir}: {len(test)} test reviews, batches of "
          f"{cfg.eval_batch_size}, best of {args.rounds} round(s); attention: "
          f"{engines.attention_in_use(scorers['float32'])}; GELU layers' weights held in float32: "
          f"{scorers['float32'].fused.gelu_weights_held}", flush=True)
    logits, seconds = {}, {name: [] for name in scorers}
    for scorer in scorers.values():
        scoring.logits_of(scorer, test.texts[:64], cfg.eval_batch_size)  # warm up
    for round_number in range(args.rounds):
        for name, scorer in (scorers.items() if round_number % 2 == 0 else reversed(scorers.items())):
            started = time.perf_counter()
            logits[name] = np.asarray(scoring.logits_of(scorer, test.texts, cfg.eval_batch_size)).reshape(-1)
            seconds[name].append(time.perf_counter() - started)
    reference = logits["float32"]
    accuracy = {name: float(np.mean((values >= 0) == test.labels)) for name, values in logits.items()}
    rates = {name: len(test) / min(times) for name, times in seconds.items()}
    run = {"machine": common.machine(), "cpu_flags": common.cpu_flags(), "model_dir": args.model_dir,
           "reviews": len(test), "rounds": args.rounds, "attention": engines.attention_in_use(scorers["float32"]),
           "settings": {}}
    print(f"float32: accuracy={accuracy['float32']:.4f} reviews/s={rates['float32']:.1f}")
    for group, names in GROUPS.items():  # where one scale a layer has large weights to cover
        layers = sorted(layer for layer in weights if any(part in layer for part in names))
        if layers:
            print(f"weights of {group}, each layer's largest |w| / its 99.9th percentile: "
                  + ", ".join(f"{weights[layer][0]:.2f}/{weights[layer][1]:.2f}" for layer in layers))
    run["largest_weights"] = {layer: list(values) for layer, values in weights.items()}
    for setting, scales, smoothing in chosen_settings:
        name = setting_name(setting, scales, smoothing)
        difference = np.abs(logits[name] - reference)
        agreeing = float(np.mean((logits[name] >= 0) == (reference >= 0)))
        points = 100 * (accuracy[name] - accuracy["float32"])
        met = abs(points) <= TARGET_POINTS + 1e-9 and agreeing >= TARGET_AGREEING - 1e-9
        run["settings"][name] = {"layers": setting, "scales": scales, "smoothing": smoothing,
                                 "int8_layers": scorers[name].fused.int8_layers, "accuracy": accuracy[name],
                                 "gelu_weights_held": scorers[name].fused.gelu_weights_held,
                                 "largest_logit_difference": float(difference.max()),
                                 "mean_logit_difference": float(difference.mean()), "labels_agreeing": agreeing,
                                 "reviews_per_s": rates[name], "speedup": rates[name] / rates["float32"],
                                 "target_met": met}
        print(f"int8 {name:<50} layers={scorers[name].fused.int8_layers} "
              f"held={scorers[name].fused.gelu_weights_held} logits largest={difference.max():.3f} "
              f"mean={difference.mean():.4f} agreeing={agreeing:.2%} accuracy={points:+.2f} points "
              f"reviews/s={rates[name]:.1f} ({rates[name] / rates['float32']:.2f}x) "
              f"accuracy target {'met' if met else 'missed'}")
    run["float32"] = {"accuracy": accuracy["float32"], "reviews_per_s": rates["float32"]}
    print(f"Results: {common.append_result('int8_layers', run)}")
    return run


if __name__ == "__main__":
    main()
