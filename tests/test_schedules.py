import numpy as np
import pytest

from tf_switch.schedules import WarmupSchedule


@pytest.mark.parametrize("decay", ["inverse_sqrt", "cosine"])
def test_warm_up_is_linear_to_the_peak(decay):
    schedule = WarmupSchedule(1e-3, warmup_steps=10, total_steps=100, decay=decay)
    rates = [float(schedule(step)) for step in range(10)]
    np.testing.assert_allclose(rates, np.arange(1, 11) * 1e-4, rtol=1e-5)


def test_inverse_square_root_and_cosine_decay():
    inverse = WarmupSchedule(1e-3, warmup_steps=10, total_steps=100)
    assert float(inverse(39)) == pytest.approx(1e-3 * np.sqrt(10 / 40))
    cosine = WarmupSchedule(1e-3, warmup_steps=10, total_steps=100, decay="cosine")
    assert float(cosine(54)) == pytest.approx(0.5e-3, rel=1e-4)  # halfway
    assert float(cosine(99)) == pytest.approx(0.0, abs=1e-9)


def test_unknown_decay_is_refused():
    with pytest.raises(ValueError, match="cosine"):
        WarmupSchedule(1e-3, 10, 100, decay="linear")
