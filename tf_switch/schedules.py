"""Learning-rate schedules: linear warm-up, then inverse square root or cosine."""

import keras


@keras.saving.register_keras_serializable(package="tf_switch")
class WarmupSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up to `peak` over `warmup_steps`, then decay.

    `"inverse_sqrt"`: peak * sqrt(warmup / step) (T5, the Switch paper's
    pre-training schedule); `"cosine"`: cosine from peak to 0 at `total_steps`.

    Example:

    >>> schedule = WarmupSchedule(1e-3, warmup_steps=100, total_steps=1000)
    >>> round(float(schedule(399)), 6)  # step 400: 1e-3 * sqrt(100 / 400)
    0.0005
    """

    def __init__(self, peak, warmup_steps, total_steps, decay="inverse_sqrt"):
        if decay not in ("inverse_sqrt", "cosine"):
            raise ValueError(
                f"Invalid decay {decay!r}. Expected 'inverse_sqrt' or 'cosine'."
            )
        self.peak = peak
        self.warmup_steps = max(1, warmup_steps)
        self.total_steps = total_steps
        self.decay = decay

    def __call__(self, step):
        step = keras.ops.cast(step, "float32") + 1.0
        warmup = keras.ops.cast(self.warmup_steps, "float32")
        ramp = self.peak * step / warmup
        if self.decay == "inverse_sqrt":
            decayed = self.peak * keras.ops.sqrt(warmup / step)
        else:
            progress = keras.ops.clip(
                (step - warmup) / max(1.0, self.total_steps - self.warmup_steps),
                0.0,
                1.0,
            )
            decayed = (
                self.peak * 0.5 * (1.0 + keras.ops.cos(3.141592653589793 * progress))
            )
        return keras.ops.where(step < warmup, ramp, decayed)

    def get_config(self):
        return {
            "peak": self.peak,
            "warmup_steps": self.warmup_steps,
            "total_steps": self.total_steps,
            "decay": self.decay,
        }
