"""The Switch paper's reduced-scale initializer."""

import math

import keras


@keras.saving.register_keras_serializable(package="tf_switch")
class SwitchInitializer(keras.initializers.Initializer):
    """Truncated normal with standard deviation sqrt(scale / fan_in).

    The paper (§2.4) draws weights from a truncated normal with std
    sqrt(s / n), n the number of input units, and uses s = 0.1, ten times
    smaller than the usual 1.0, for stable training. Unlike
    `keras.initializers.VarianceScaling`, fan_in is always `shape[-2]`, so a
    stacked expert kernel `[num_experts, fan_in, fan_out]` gets each expert's
    own fan-in, not num_experts * fan_in.

    Args:
        scale: s; 0.1 by default.
        seed: optional int seed.

    Example:

    >>> init = SwitchInitializer(seed=1)
    >>> kernel = init((8, 512, 2048))  # std ~ sqrt(0.1 / 512) ~ 0.014
    """

    def __init__(self, scale=0.1, seed=None):
        if scale <= 0:
            raise ValueError(
                f"Invalid value received for argument `scale`. Expected a "
                f"positive float. Received: scale={scale}"
            )
        self.scale = scale
        self.seed = seed

    def __call__(self, shape, dtype=None):
        # A normal truncated at two standard deviations has std 0.8796 times
        # the untruncated one; divide it out so the result has sqrt(s / n).
        stddev = math.sqrt(self.scale / shape[-2]) / 0.87962566103423978
        truncated_normal = keras.initializers.TruncatedNormal(
            stddev=stddev, seed=self.seed
        )
        return truncated_normal(shape, dtype=dtype)

    def get_config(self):
        return {"scale": self.scale, "seed": self.seed}
