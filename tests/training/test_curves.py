import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from training.curves import (
    Curve,
    Spread,
    paired_speedups,
    read_curve,
    seconds_to_reach,
    step_speedup,
    steps_to_reach,
    time_speedup,
)


def _curve(losses, step=100, seconds_per_step=0.1):
    steps = tuple(i * step for i in range(len(losses)))
    return Curve(steps, tuple(losses), tuple(s * seconds_per_step for s in steps))


def test_steps_to_reach_interpolates_between_the_points_around_the_target():
    curve = _curve([6.0, 5.0, 4.0, 3.0])
    assert steps_to_reach(curve, 4.5) == pytest.approx(150.0)
    assert steps_to_reach(curve, 3.0) == 300.0
    assert steps_to_reach(curve, 7.0) == 0.0
    assert steps_to_reach(curve, 2.9) is None  # never reached


def test_the_first_crossing_counts_not_a_later_one():
    curve = _curve([6.0, 4.0, 5.0, 3.5])
    assert steps_to_reach(curve, 4.5) == pytest.approx(75.0)


def test_step_and_time_speedups_against_the_baselines_final_loss():
    dense = _curve([6.0, 5.0, 4.0, 3.0], seconds_per_step=0.1)
    switch = _curve([6.0, 4.0, 3.0, 2.5], seconds_per_step=0.15)
    # dense reaches 3.0 at step 300, switch at 200.
    assert step_speedup(dense, switch) == pytest.approx(1.5)
    assert seconds_to_reach(switch, 3.0) == pytest.approx(30.0)
    assert time_speedup(dense, switch) == pytest.approx(1.0)
    assert step_speedup(switch, dense) is None  # dense never reaches 2.5


def test_paired_speedups_summarize_per_seed_values():
    dense = [_curve([6.0, 4.0, 3.0]), _curve([6.0, 4.0, 3.2])]
    switch = [_curve([6.0, 3.0, 2.8]), _curve([6.0, 3.6, 3.0])]
    values, spread = paired_speedups(dense, switch)
    # Seed 1: dense reaches 3.2 at step 200, switch between 100 and 200.
    assert values == pytest.approx([2.0, 200 / (100 + 100 * 0.4 / 0.6)])
    assert values[1] == pytest.approx(1.2)
    assert spread.mean == pytest.approx(1.6)
    assert spread.std == pytest.approx(math.sqrt(2) * 0.8 / 2)
    assert (spread.low, spread.high, spread.count) == (pytest.approx(1.2), 2.0, 2)
    with pytest.raises(ValueError, match="as many baseline runs"):
        paired_speedups(dense, switch[:1])
    assert Spread.of([1.0, None]) is None


def test_read_curve_parses_the_callbacks_csv_and_refuses_bad_files(tmp_path):
    path = tmp_path / "validation_curve.csv"
    path.write_text("step,val_loss,train_seconds\n0,6.5,0.0\n50,5.25,12.5\n")
    assert read_curve(path) == Curve((0, 50), (6.5, 5.25), (0.0, 12.5))
    path.write_text("step,val_loss,train_seconds\n")
    with pytest.raises(ValueError, match="no validation point"):
        read_curve(path)
    path.write_text("step,loss\n0,6.5\n")
    with pytest.raises(ValueError, match="lacks the column"):
        read_curve(path)
    with pytest.raises(ValueError, match="must increase"):
        Curve((0, 0), (1.0, 1.0), (0.0, 0.0))


losses = st.lists(
    st.floats(min_value=0.5, max_value=10.0), min_size=2, max_size=12
).map(lambda values: sorted(values, reverse=True))


@settings(max_examples=50, deadline=None, derandomize=True)
@given(losses=losses, factor=st.sampled_from([1, 2, 3, 5]))
def test_a_curve_that_learns_k_times_faster_has_speedup_k(losses, factor):
    slow = _curve(losses, step=100 * factor)
    fast = _curve(losses, step=100)
    assert step_speedup(slow, slow) == pytest.approx(1.0) or losses[0] == losses[-1]
    speedup = step_speedup(slow, fast)
    if steps_to_reach(fast, losses[-1]) > 0:
        assert speedup == pytest.approx(factor)
