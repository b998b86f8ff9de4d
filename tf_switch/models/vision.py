"""A vision transformer with Switch FFNs: experts on image patches (V-MoE)."""

import keras

from tf_switch.models.config import ModelConfig
from tf_switch.models.language_model import PositionEmbedding, transformer_stack


def num_patches(image_size, patch_size):
    """Patches of a `(height, width)` image cut into `patch_size` squares.

    Raises:
        ValueError: the image sides are not multiples of `patch_size`.
    """
    height, width = image_size
    if height % patch_size or width % patch_size:
        raise ValueError(
            f"image_size={tuple(image_size)} must be a multiple of "
            f"patch_size={patch_size} on both sides."
        )
    return (height // patch_size) * (width // patch_size)


@keras.saving.register_keras_serializable(package="tf_switch")
class SwitchViT(keras.Model):
    """A ViT whose FFNs are Switch layers, classifying images.

    Non-overlapping `patch_size` squares are embedded linearly (a strided
    convolution), learned position embeddings are added, then
    `config.num_layers` non-causal `SwitchBlock`s (a Switch FFN in every
    `sparse_every`-th block, V-MoE's "every other"), a final LayerNorm, the
    mean over patches and a dense head to float32 logits. Each patch is a
    token of the router: with `batch_prioritized_routing` and a low
    `eval_capacity_factor`, the least confident patches skip the experts
    (V-MoE, Riquelme et al. 2021, §4).

    Args:
        config: a `ModelConfig` (or its dict) whose `sequence_length` is the
            number of patches; `vocab_size` is unused (0 in the presets).
        num_classes: classifier outputs.
        image_size: `(height, width)` in pixels.
        channels: colour channels.
        patch_size: side of the square patches.

    Call arguments:
        pixels: `<float32>[batch, height, width, channels]`, scaled to [0, 1].

    Returns:
        `<float32>[batch, num_classes]` logits.

    Example:

    >>> from tf_switch.models import get_preset
    >>> model = SwitchViT(get_preset("vit-tiny"), num_classes=10)
    >>> model(keras.ops.zeros((2, 28, 28, 1))).shape
    TensorShape([2, 10])
    """

    def __init__(
        self,
        config,
        num_classes,
        image_size=(28, 28),
        channels=1,
        patch_size=4,
        **kwargs,
    ):
        if isinstance(config, dict):
            config = ModelConfig(**config)
        image_size = tuple(image_size)
        patches = num_patches(image_size, patch_size)
        if config.sequence_length != patches:
            raise ValueError(
                f"config.sequence_length={config.sequence_length} must be the "
                f"number of {patch_size}x{patch_size} patches of a "
                f"{image_size[0]}x{image_size[1]} image: {patches}."
            )
        pixels = keras.Input((*image_size, channels), dtype="float32", name="pixels")
        hidden = keras.layers.Conv2D(
            config.hidden_dim,
            patch_size,
            strides=patch_size,
            name="patch_embedding",
        )(pixels)
        hidden = keras.layers.Reshape((patches, config.hidden_dim))(hidden)
        hidden = PositionEmbedding(patches, name="position_embedding")(hidden)
        hidden = keras.layers.Dropout(config.dropout)(hidden)
        hidden = transformer_stack(config, hidden, causal=False)
        pooled = keras.layers.GlobalAveragePooling1D(name="pooling")(hidden)
        logits = keras.layers.Dense(num_classes, dtype="float32", name="classifier")(
            pooled
        )
        super().__init__(inputs=pixels, outputs=logits, **kwargs)
        self.config = config
        self.num_classes = num_classes
        self.image_size = image_size
        self.channels = channels
        self.patch_size = patch_size

    def get_config(self):
        return {
            "config": self.config.to_dict(),
            "num_classes": self.num_classes,
            "image_size": list(self.image_size),
            "channels": self.channels,
            "patch_size": self.patch_size,
            "name": self.name,
        }

    @classmethod
    def from_config(cls, config):
        return cls(**config)
