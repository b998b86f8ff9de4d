"""Quality-per-step arithmetic on validation curves (`validation_curve.csv`).

A curve is validation loss against optimizer steps (and training seconds).
`steps_to_reach` interpolates where a curve first reaches a loss; the step
speedup of a model over a baseline is the baseline's steps to its own final
loss divided by the model's steps to that loss (paper Figure 1 right:
"time to reach a given quality"). With paired seeds the speedup is computed
per seed and summarized by its mean and spread.

Example:

>>> dense = Curve(steps=(0, 100, 200), losses=(6.0, 5.0, 4.5), seconds=(0, 10, 20))
>>> switch = Curve(steps=(0, 100, 200), losses=(6.0, 4.5, 4.2), seconds=(0, 11, 22))
>>> steps_to_reach(switch, 4.5)
100.0
>>> step_speedup(dense, switch)
2.0
>>> round(time_speedup(dense, switch), 3)
1.818
"""

import csv
import dataclasses
import math
import statistics


@dataclasses.dataclass(frozen=True)
class Curve:
    """Validation loss at increasing steps; `seconds` is training time."""

    steps: tuple
    losses: tuple
    seconds: tuple

    def __post_init__(self):
        if not len(self.steps) == len(self.losses) == len(self.seconds) >= 1:
            raise ValueError("A curve needs >= 1 point and equal-length columns.")
        if any(b <= a for a, b in zip(self.steps, self.steps[1:], strict=False)):
            raise ValueError(f"Steps must increase. Received: {self.steps}")

    @property
    def final_loss(self):
        return self.losses[-1]


def read_curve(path):
    """A `Curve` from a run's `validation_curve.csv`.

    Raises:
        ValueError: for an empty file or missing columns.
    """
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise ValueError(f"{path} holds no validation point.")
    try:
        return Curve(
            steps=tuple(int(r["step"]) for r in rows),
            losses=tuple(float(r["val_loss"]) for r in rows),
            seconds=tuple(float(r["train_seconds"]) for r in rows),
        )
    except KeyError as error:
        raise ValueError(f"{path} lacks the column {error}.") from error


def _first_crossing(xs, losses, target):
    """The x where `losses` (over `xs`) first falls to `target`, linearly
    interpolated between the two points around it; None if it never does."""
    if losses[0] <= target:
        return float(xs[0])
    points = list(zip(xs, losses, strict=True))
    for (x0, y0), (x1, y1) in zip(points, points[1:], strict=False):
        if y1 <= target:
            return x0 + (x1 - x0) * (y0 - target) / (y0 - y1)
    return None


def steps_to_reach(curve, target):
    """Steps at which `curve` first reaches `target` loss, or None."""
    return _first_crossing(curve.steps, curve.losses, target)


def seconds_to_reach(curve, target):
    """Training seconds at which `curve` first reaches `target`, or None."""
    return _first_crossing(curve.seconds, curve.losses, target)


def _speedup(to_reach, baseline, model):
    target = baseline.final_loss
    baseline_cost, model_cost = to_reach(baseline, target), to_reach(model, target)
    if model_cost is None:
        return None  # the model never reached the baseline's quality
    if model_cost == 0:
        return math.inf
    return baseline_cost / model_cost


def step_speedup(baseline, model):
    """How many times fewer steps `model` needs to reach `baseline`'s final
    validation loss (None if it never does)."""
    return _speedup(steps_to_reach, baseline, model)


def time_speedup(baseline, model):
    """The same, in training seconds on this machine."""
    return _speedup(seconds_to_reach, baseline, model)


@dataclasses.dataclass(frozen=True)
class Spread:
    """Mean, sample standard deviation, min and max of per-seed values."""

    mean: float
    std: float
    low: float
    high: float
    count: int

    @classmethod
    def of(cls, values):
        """None when any value is None (a seed that never got there)."""
        values = list(values)
        if not values or any(v is None for v in values):
            return None
        std = statistics.stdev(values) if len(values) > 1 else 0.0
        return cls(statistics.fmean(values), std, min(values), max(values), len(values))

    def __str__(self):
        return f"{self.mean:.3f} ± {self.std:.3f} [{self.low:.3f}, {self.high:.3f}]"


def paired_speedups(baselines, models, speedup=step_speedup):
    """Per-seed speedups of `models[i]` over `baselines[i]` and their spread.

    Args:
        baselines, models: curves of the same seeds, in the same order.
        speedup: `step_speedup` or `time_speedup`.

    Returns:
        `(list of per-seed speedups, Spread or None)`.
    """
    if len(baselines) != len(models):
        raise ValueError(
            f"Paired seeds need as many baseline runs ({len(baselines)}) as "
            f"model runs ({len(models)})."
        )
    values = [speedup(b, m) for b, m in zip(baselines, models, strict=True)]
    return values, Spread.of(values)
