"""Keras callbacks of the training job: data epoch, resumable backups with
random state, expert load over training."""

import json
import os
import re

import keras
import numpy as np

from tf_switch.keras_internals import BackupAndRestoreHooks, seed_generators

_EXPERT_KEY = re.compile(r"^(?P<layer>.+)/expert_(?P<expert>\d+)_fraction$")


class EpochSetter(keras.callbacks.Callback):
    """Tells an `EpochOrderedWindows` which epoch is starting, so its order is
    a function of (seed, epoch), also after a resume."""

    def __init__(self, windows):
        super().__init__()
        self.windows = windows

    def on_epoch_begin(self, epoch, logs=None):
        self.windows.epoch.assign(epoch)


class CorruptCheckpointError(RuntimeError):
    """A backup exists but cannot be read; training must not silently restart."""


class ResumableBackupAndRestore(BackupAndRestoreHooks):
    """`BackupAndRestore` that also restores every layer's random state.

    Keras 3 saves weights and optimizer state but not the `SeedGenerator`
    states behind dropout and router jitter, so a resumed run would draw other
    masks than an uninterrupted one. Here they go into the training-metadata
    JSON, which Keras writes after the weights, so a backup is complete when
    its metadata is. A backup that exists but cannot be read raises
    `CorruptCheckpointError` instead of restarting from scratch. The backup is
    kept after training ends, so rerunning a finished job trains no more.

    With `write=False` (the non-chief workers of a cluster) it restores from
    `backup_dir` but never writes there.
    """

    def __init__(self, backup_dir, write=True, **kwargs):
        kwargs.setdefault("delete_checkpoint", False)
        super().__init__(backup_dir, **kwargs)
        self.write = write

    def save_backup(self):
        if not self.write:
            return
        super().save_backup()
        states = [sg.state.numpy().tolist() for sg in seed_generators(self.model)]
        metadata = {**self.backup_position, "seed_generator_states": states}
        temporary = self.metadata_path + ".tmp"
        with open(temporary, "w") as f:
            json.dump(metadata, f)
        os.replace(temporary, self.metadata_path)

    def load_backup(self):
        try:
            super().load_backup()
            if not os.path.exists(self.metadata_path):
                return
            with open(self.metadata_path) as f:
                states = json.load(f).get("seed_generator_states")
        except Exception as error:
            raise CorruptCheckpointError(
                f"The backup in {self.backup_dir} exists but cannot be restored "
                f"({type(error).__name__}: {error}). Refusing to restart from "
                "scratch: fix or delete that directory to start over."
            ) from error
        generators = seed_generators(self.model)
        if states is not None and len(states) != len(generators):
            raise CorruptCheckpointError(
                f"The backup in {self.backup_dir} holds {len(states)} random "
                f"states but the model has {len(generators)}: it belongs to "
                "another model. Delete it or use another --output."
            )
        for generator, state in zip(generators, states or [], strict=False):
            generator.state.assign(np.asarray(state, generator.state.dtype))


def expert_fractions(logs):
    """`{layer: [fraction of expert 0, 1, ...]}` from `fit` logs."""
    by_layer = {}
    for key, value in logs.items():
        match = _EXPERT_KEY.match(key)
        if match:
            experts = by_layer.setdefault(match["layer"], {})
            experts[int(match["expert"])] = float(value)
    return {
        layer: [experts[i] for i in sorted(experts)]
        for layer, experts in by_layer.items()
    }


class ExpertLoadRecorder(keras.callbacks.Callback):
    """Keeps each epoch's per-expert token fractions, for the load heatmap.

    `self.history` is a list, one entry per epoch, of
    `{layer: [fraction per expert]}`, saved as JSON to `path` after each epoch.
    """

    def __init__(self, path):
        super().__init__()
        self.path = path
        self.history = []
        if os.path.exists(path):
            with open(path) as f:
                self.history = json.load(f)

    def on_epoch_end(self, epoch, logs=None):
        del self.history[epoch:]
        self.history.append(expert_fractions(logs or {}))
        with open(self.path, "w") as f:
            json.dump(self.history, f)
