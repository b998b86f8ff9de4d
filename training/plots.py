"""PNG plots of a training run: loss curves and expert load over training."""

import numpy as np
from matplotlib.figure import Figure

# Figures are made without pyplot, so plotting files never changes the
# matplotlib backend of a notebook or GUI that imports this module.


def plot_losses(history, path):
    """Training and validation loss (and perplexity) per epoch."""
    figure = Figure(figsize=(6, 4))
    axis = figure.subplots()
    epochs = np.arange(1, len(history["loss"]) + 1)
    axis.plot(epochs, history["loss"], marker="o", label="training loss")
    if "val_loss" in history:
        axis.plot(epochs, history["val_loss"], marker="o", label="validation loss")
    axis.set_xlabel("epoch")
    axis.set_ylabel("loss (cross-entropy + router losses)")
    axis.legend()
    axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=100)


def plot_expert_load(load_history, path):
    """Heatmaps, one per epoch shown: layers x experts, training token fraction.

    `load_history`: a list over epochs of `{layer: [fraction per expert]}`
    (see `training.callbacks.ExpertLoadRecorder`). Shows the first, middle and
    last epoch side by side on one colour scale (1/N is perfect balance).
    """
    epochs = sorted({0, len(load_history) // 2, len(load_history) - 1})
    layers = sorted(layer for layer in load_history[-1] if not layer.startswith("val_"))
    if not layers:
        return
    matrices = [np.array([load_history[e][layer] for layer in layers]) for e in epochs]
    vmax = max(float(m.max()) for m in matrices)
    figure = Figure(
        figsize=(3.5 * len(epochs) + 1.5, 1.5 + 0.5 * len(layers)),
        layout="constrained",
    )
    axes = figure.subplots(1, len(epochs), squeeze=False)
    names = [layer.split("_ffn")[0] for layer in layers]
    for axis, epoch, matrix in zip(axes[0], epochs, matrices, strict=True):
        image = axis.imshow(matrix, vmin=0.0, vmax=vmax, cmap="viridis", aspect="auto")
        axis.set_title(f"epoch {epoch + 1}")
        axis.set_xlabel("expert")
        axis.set_yticks(range(len(layers)), names if axis is axes[0][0] else [])
    figure.colorbar(image, ax=axes[0].tolist(), label="fraction of tokens (top-1)")
    figure.savefig(path, dpi=100)
