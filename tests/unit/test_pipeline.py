"""Recipes, optimizers and schedules, truncation of long texts, length-sorted batches, strategies: what
the pipeline does, shown without training."""
import numpy as np
import pytest

import config


def test_recipes_and_flag_overrides():
    tutorial = config.resolve(recipe="tutorial")
    assert (tutorial.batch_size, tutorial.schedule, tutorial.optimizer, tutorial.seq_length) == \
        (4, "constant", "tutorial-adamw", 128)
    # The tutorial's run: strings into the model (padded to 128, random batches), float32.
    assert (tutorial.pipeline, tutorial.precision) == ("tutorial", "float32")
    assert config.resolve(recipe="tutorial", precision="bfloat16" if config.hardware.cpu_supports_bfloat16()
                          else "auto").precision != "float32"  # the user may still override it
    assert config.resolve(recipe="official").schedule == "linear"
    assert config.resolve().recipe == "best"
    assert config.resolve(recipe="tutorial", batch_size=8).batch_size == 8  # a flag beats the recipe


def test_optimizers_follow_their_recipes():
    from tfhub_classifier.training import optimization
    best = optimization.make_optimizer(config.resolve(), 100)
    assert best.weight_decay == 0.01 and best.global_clipnorm == 1.0
    tutorial = optimization.make_optimizer(config.resolve(recipe="tutorial"), 100)
    # tfa semantics: 1e-4 of each weight per step, whatever the rate.
    assert tutorial.weight_decay * tutorial.learning_rate.numpy() == pytest.approx(1e-4)


@pytest.mark.parametrize("step", [0, 1, 5, 9, 10, 11, 50, 99, 100, 120])
def test_official_schedule_is_create_optimizers(step):
    """tf-models' create_optimizer: linear warm-up to the peak, then PolynomialDecay(peak, total, end=0)
    at the global step, so the rate at the end of a 10% warm-up is 0.9 x peak (2.7e-5), not the peak."""
    from tfhub_classifier.training import optimization
    peak, total, warmup = 3e-5, 100, 10
    schedule = optimization.make_optimizer(config.resolve(recipe="official"), total)._learning_rate
    expected = peak * step / warmup if step < warmup else peak * (1 - min(step, total) / total)
    assert float(schedule(step)) == pytest.approx(expected, rel=1e-5, abs=1e-12)


def test_weight_decay_skips_layer_norm_and_bias(hub_models):
    from tfhub_classifier import runtime
    from tfhub_classifier.model import modeling
    from tfhub_classifier.training import optimization
    model = modeling.build_token_classifier(runtime.hub.load(hub_models[1]), 0.1, "pooled")
    optimizer = optimization.make_optimizer(config.resolve(), 10)
    optimizer.build(model.trainable_variables)
    decayed = {v.name for v in model.trainable_variables if optimizer._use_weight_decay(v)}
    assert any("word_embeddings" in name for name in decayed)
    assert not any("layer_norm" in name or "bias" in name for name in decayed)


def _adamw_steps(make, strategy, steps=4):
    """Variables and slots after `steps` clipped, decayed AdamW steps, a sparse (gathered) gradient among them."""
    import tensorflow as tf
    rng = np.random.default_rng(0)
    with strategy.scope():
        variables = [tf.Variable(rng.normal(size=(40, 8)).astype(np.float32), name="word_embeddings"),
                     tf.Variable(rng.normal(size=(8, 8)).astype(np.float32), name="dense/kernel"),
                     tf.Variable(rng.normal(size=(8,)).astype(np.float32), name="dense/bias")]
        optimizer = make()
        optimizer.build(variables)
    ids = tf.constant([3, 7, 3, 39])  # a repeated row: its gradients add up

    @tf.function
    def step(x):
        def replica_step():
            with tf.GradientTape() as tape:
                hidden = tf.nn.bias_add(tf.matmul(tf.gather(variables[0], ids), variables[1]), variables[2])
                loss = tf.reduce_sum(tf.tanh(hidden) * x)
            gradients = tape.gradient(loss, variables)
            assert isinstance(gradients[0], tf.IndexedSlices)
            optimizer.apply_gradients(zip(gradients, variables))
        strategy.run(replica_step)

    for k in range(steps):
        step(tf.constant(50.0 * (k + 1)))  # large gradients, so the global norm clips them
    slots = [slot for slot in optimizer.variables if slot.name.startswith(("m/", "v/"))]
    assert len(slots) == 2 * len(variables)
    return [v.numpy() for v in variables + slots]


@pytest.mark.parametrize("distributed", [False, True])
def test_adamw_steps_as_tf_keras_adamw(distributed):
    """The suite's AdamW (fused kernels) moves variables and slots as tf-keras' AdamW does: decay but not
    on bias, clipping, the schedule, a sparse gradient with a repeated row; also under tf.distribute."""
    import tensorflow as tf

    from tfhub_classifier.runtime import keras
    from tfhub_classifier.training import optimization
    strategy = tf.distribute.MirroredStrategy(["/cpu:0"]) if distributed else tf.distribute.get_strategy()
    cfg = config.resolve(recipe="official", learning_rate=1e-2)
    ours = _adamw_steps(lambda: optimization.make_optimizer(cfg, 10), strategy)

    def tf_keras_adamw():
        optimizer = optimization.make_optimizer(cfg, 10)
        theirs = keras.optimizers.AdamW(learning_rate=optimizer._learning_rate, weight_decay=cfg.weight_decay,
                                        epsilon=cfg.epsilon, global_clipnorm=cfg.clip_norm)
        theirs.exclude_from_weight_decay(var_names=optimization.NO_DECAY_NAMES)
        return theirs

    theirs = _adamw_steps(tf_keras_adamw, strategy)
    initial = _adamw_steps(tf_keras_adamw, strategy, steps=0)
    for index, (mine, reference, before) in enumerate(zip(ours, theirs, initial)):
        assert not np.allclose(reference, before)  # every variable and slot moved
        if index < 3:  # the variables, near 1: float32's step there is 1.2e-7
            np.testing.assert_allclose(mine, reference, rtol=2e-5, atol=1e-6)
        else:  # the slots, whose entries span decades: within 3e-5 of each slot's largest
            np.testing.assert_allclose(mine, reference, rtol=0, atol=3e-5 * np.abs(reference).max())


def test_adamw_decays_as_tf_keras_adamw_at_berts_rates():
    """With no gradient only the decay moves a weight: at a BERT rate (2e-5 x 0.01 a step, which float32
    can't add to 1 exactly) over 500 steps, the suite's decay is tf-keras'."""
    import tensorflow as tf

    from tfhub_classifier.runtime import keras
    from tfhub_classifier.training import optimization

    def decayed(optimizer):
        variable = tf.Variable(np.linspace(-2.0, 2.0, 64, dtype=np.float32), name="kernel")
        optimizer.build([variable])

        step = tf.function(lambda: optimizer.apply_gradients([(tf.zeros_like(variable), variable)]))
        for _ in range(500):
            step()
        return variable.numpy()

    ours = decayed(optimization.AdamW(learning_rate=2e-5, weight_decay=0.01))
    theirs = decayed(keras.optimizers.AdamW(learning_rate=2e-5, weight_decay=0.01))
    assert not np.allclose(theirs, np.linspace(-2.0, 2.0, 64), rtol=1e-5, atol=0)  # the weights decayed
    np.testing.assert_allclose(ours, theirs, rtol=1e-6)


def test_adamw_updates_each_variable_in_fused_kernels():
    """Each variable's step is one Adam kernel (and one multiply and subtraction where it decays), not
    tf-keras' ten or so element-wise passes over the variable and its slots."""
    import collections

    import tensorflow as tf

    from tfhub_classifier.training import optimization
    variables = [tf.Variable(tf.ones((4, 4)), name="kernel"), tf.Variable(tf.ones((4,)), name="bias")]
    optimizer = optimization.make_optimizer(config.resolve(), 10)
    optimizer.build(variables)
    graph = tf.function(lambda: optimizer.apply_gradients(zip([tf.ones((4, 4)), tf.ones((4,))], variables))
                        ).get_concrete_function().graph
    names = {internal.name: variable.name for variable in variables + optimizer.variables
             for external, internal in graph.captures if external is variable.handle}
    writes = collections.Counter((op.type, names[op.inputs[0].name]) for op in graph.get_operations()
                                 if op.inputs and op.inputs[0].name in names and op.type != "ReadVariableOp")
    assert writes == {("ResourceApplyAdam", "kernel:0"): 1, ("ResourceApplyAdam", "bias:0"): 1,
                      ("AssignSubVariableOp", "kernel:0"): 1,  # its decay; the bias isn't decayed
                      ("AssignAddVariableOp", "iteration:0"): 1}


@pytest.fixture(scope="module")
def text_to_tokens(hub_models):
    from tfhub_classifier import runtime
    from tfhub_classifier.data import tokenization
    preprocessor = runtime.hub.load(hub_models[0])
    return lambda length, truncation: tokenization.TextToTokens(preprocessor, length, truncation), preprocessor


def test_head_truncation_equals_the_preprocessors_own(text_to_tokens):
    import tensorflow as tf
    make, preprocessor = text_to_tokens
    texts = tf.constant(["great film " * 100, "awful", ""])
    ours = make(128, "head")(texts)
    theirs = preprocessor(texts)  # the tutorial's hub.KerasLayer(preprocessor) output, 128 tokens
    for key in ours:
        np.testing.assert_array_equal(ours[key].numpy(), theirs[key].numpy())


@pytest.mark.parametrize("truncation, expected", [
    ("head", ["great"] * 6),
    ("tail", ["awful"] * 6),
    ("head+tail", ["great"] * 2 + ["awful"] * 4),  # 128/510 of the budget from the head
])
def test_truncation_keeps_the_right_tokens(text_to_tokens, truncation, expected):
    import tensorflow as tf
    from tiny_hub import VOCAB
    make, _ = text_to_tokens
    tokens = make(8, truncation)(tf.constant(["great " * 20 + "awful " * 20]))
    ids = tokens["input_word_ids"].numpy()[0]
    assert [VOCAB[i] for i in ids] == ["[CLS]"] + expected + ["[SEP]"]
    short = make(8, truncation)(tf.constant(["great awful"]))["input_word_ids"].numpy()[0]
    assert [VOCAB[i] for i in short] == ["[CLS]", "great", "awful", "[SEP]", "[PAD]", "[PAD]", "[PAD]", "[PAD]"]


def test_scoring_and_training_batch_token_ids_alike(text_to_tokens, monkeypatch):
    """Scoring's NumPy batching and training's tf.data batching: the same rows, order and widths."""
    import tensorflow as tf

    from tfhub_classifier.data import tokenization
    monkeypatch.setattr(tokenization, "TOKENIZE_BATCH", 7)
    make, _ = text_to_tokens
    to_tokens = make(40, "head")
    texts = [("great " if i % 3 else "awful ") * ((i * 11) % 50 + 1) for i in range(30)]  # some beyond 40 tokens
    examples = tf.data.Dataset.from_tensor_slices((texts, tf.range(len(texts))))
    expected = [(rows.numpy(), {key: value.numpy() for key, value in tokens.items()})
                for tokens, rows in tokenization.length_sorted_batches(tokenization.tokenized(examples, to_tokens), 4)]
    got = list(tokenization.sorted_batches(tokenization.tokens_of(to_tokens, texts), 4))
    assert len(got) == len(expected) == 8
    for (rows, tokens), (expected_rows, expected_tokens) in zip(got, expected):
        np.testing.assert_array_equal(rows, expected_rows)
        for key in tokenization.TOKEN_KEYS:
            np.testing.assert_array_equal(tokens[key].numpy(), expected_tokens[key])
    assert max(tokens["input_mask"].shape[1] for _, tokens in got) == 40  # capped at the sequence length


def test_strategy_errors_name_the_fix(monkeypatch):
    from tfhub_classifier import runtime
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(ValueError, match="TF_CONFIG"):
        runtime.make_strategy("multiworker")
    assert runtime.make_strategy("default").num_replicas_in_sync == 1


def test_require_gpu_fails_clearly_without_one():
    from tfhub_classifier import runtime
    if runtime.tf.config.list_physical_devices("GPU"):
        pytest.skip("this machine has a GPU")
    with pytest.raises(ValueError, match="--require-gpu"):
        runtime.check_devices(require_gpu=True)
