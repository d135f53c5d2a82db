"""The optimizer and learning-rate schedule each recipe names, on tf-keras' own AdamW."""
from tfhub_classifier.runtime import keras, tf

NO_DECAY_NAMES = ["layer_norm", "LayerNorm", "bias"]  # BERT excludes LayerNorm and bias from decay


class WarmUpPolynomialDecay(keras.optimizers.schedules.LearningRateSchedule):
    """tf-models' create_optimizer schedule (google-research/bert's too): linear warm-up from 0 to
    the peak, then PolynomialDecay(peak, total_steps, end=0) evaluated at the global step."""

    def __init__(self, peak, warmup_steps, total_steps):
        self.peak, self.warmup_steps, self.total_steps = peak, warmup_steps, total_steps
        self.decay = keras.optimizers.schedules.PolynomialDecay(
            peak, max(total_steps, 1), end_learning_rate=0.0, power=1.0)

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        warm = self.peak * step / max(self.warmup_steps, 1)
        return tf.where(step < self.warmup_steps, warm, self.decay(step))

    def get_config(self):
        return {"peak": self.peak, "warmup_steps": self.warmup_steps, "total_steps": self.total_steps}


def make_optimizer(cfg, total_steps, precision="float32"):
    """AdamW as cfg.optimizer says; under float16, wrapped in dynamic loss scaling so small
    gradients don't underflow."""
    optimizer = _adamw(cfg, total_steps)
    if precision == "float16":
        return keras.mixed_precision.LossScaleOptimizer(optimizer)
    return optimizer


def _adamw(cfg, total_steps):
    if cfg.schedule == "constant":
        learning_rate = cfg.learning_rate
    else:
        learning_rate = WarmUpPolynomialDecay(cfg.learning_rate, int(cfg.warmup_fraction * total_steps),
                                              total_steps)
    clipping = {"global_clipnorm": cfg.clip_norm} if cfg.clip_norm else {}
    if cfg.optimizer == "adamw":
        optimizer = keras.optimizers.AdamW(learning_rate=learning_rate, weight_decay=cfg.weight_decay,
                                           epsilon=cfg.epsilon, **clipping)
        optimizer.exclude_from_weight_decay(var_names=NO_DECAY_NAMES)
        return optimizer
    if cfg.optimizer == "tutorial-adamw":
        # tfa decays every variable by weight_decay * w per step; tf-keras by rate * weight_decay * w,
        # so dividing by the (constant) rate gives tfa's semantics with tf-keras' optimizer.
        return keras.optimizers.AdamW(learning_rate=learning_rate,
                                      weight_decay=cfg.weight_decay / cfg.learning_rate,
                                      epsilon=cfg.epsilon, **clipping)
    import tensorflow_addons as tfa  # config.validate() checked that it is installed
    return tfa.optimizers.AdamW(weight_decay=lambda: cfg.weight_decay, learning_rate=learning_rate,
                                epsilon=cfg.epsilon, **clipping)
