"""The optimizer and learning-rate schedule each recipe names: tf-keras' AdamW, its update as fused kernels."""
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


class AdamW(keras.optimizers.AdamW):
    """tf-keras' AdamW, its update in fewer passes over memory: each variable's Adam step as TensorFlow's
    fused ResourceApplyAdam kernel (tf-keras' update runs as about ten element-wise ops, each a pass over
    the variable or its slots) and its decay as one multiply and subtraction. The arithmetic is tf-keras'
    to float32's rounding: the kernel takes 1 - beta in float32, so each step's change to the second moment
    differs from tf-keras' by about 1e-5 of itself. Same slots, so checkpoints are interchangeable with
    tf-keras' AdamW's."""

    def _apply_weight_decay(self, variables):
        pass  # each variable's decay runs in update_step, just before its Adam step, as tf-keras orders them

    def update_step(self, gradient, variable):
        dtype = variable.dtype
        lr = tf.cast(self.learning_rate, dtype)  # the schedule's value, for the decay and the step
        self._decay(variable, lr)
        if self.amsgrad:
            return super().update_step(gradient, variable)
        if isinstance(gradient, tf.IndexedSlices):
            # The sparse form's update is dense over the slots anyway; one dense kernel beats its six passes.
            gradient = tf.convert_to_tensor(gradient)
        step = tf.cast(self.iterations + 1, dtype)
        beta_1, beta_2 = tf.cast(self.beta_1, dtype), tf.cast(self.beta_2, dtype)
        index = self._index_dict[self._var_key(variable)]
        tf.raw_ops.ResourceApplyAdam(
            var=variable.handle, m=self._momentums[index].handle, v=self._velocities[index].handle,
            beta1_power=tf.pow(beta_1, step), beta2_power=tf.pow(beta_2, step), lr=lr, beta1=beta_1, beta2=beta_2,
            epsilon=tf.cast(self.epsilon, dtype), grad=tf.cast(gradient, dtype))

    def _decay(self, variable, lr):
        if self.weight_decay and self._use_weight_decay(variable):
            rate = lr * tf.cast(self.weight_decay, variable.dtype)
            # tf-keras' var -= var * decay * rate, with the rate's product taken first: one pass fewer. (Not
            # var * (1 - rate): float32 rounds 1 - rate by a fifth of a rate of 1e-7, and to 1 below 3e-8.)
            variable.assign_sub(variable * rate)


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
        optimizer = AdamW(learning_rate=learning_rate, weight_decay=cfg.weight_decay, epsilon=cfg.epsilon,
                          **clipping)
        optimizer.exclude_from_weight_decay(var_names=NO_DECAY_NAMES)
        return optimizer
    if cfg.optimizer == "tutorial-adamw":
        # tfa decays every variable by weight_decay * w per step; tf-keras by rate * weight_decay * w,
        # so dividing by the (constant) rate gives tfa's semantics with tf-keras' optimizer.
        return AdamW(learning_rate=learning_rate, weight_decay=cfg.weight_decay / cfg.learning_rate,
                     epsilon=cfg.epsilon, **clipping)
    import tensorflow_addons as tfa  # config.validate() checked that it is installed
    return tfa.optimizers.AdamW(weight_decay=lambda: cfg.weight_decay, learning_rate=learning_rate,
                                epsilon=cfg.epsilon, **clipping)
