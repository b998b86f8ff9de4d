"""The shared request limits (serving/limits.py)."""

import threading
import time

import pytest

from serving.limits import RequestLimiter
from serving.status import ServingError


def test_busy_is_unavailable_and_a_slot_is_held_until_the_run_ends():
    limiter = RequestLimiter(max_concurrent=1, request_timeout_s=0.05)
    release = threading.Event()
    try:
        with pytest.raises(ServingError) as info:
            limiter.run(release.wait, 5)
        assert info.value.code == "DEADLINE_EXCEEDED"
        # The timed-out run still holds the only slot.
        with pytest.raises(ServingError) as info:
            limiter.run(lambda: 1)
        assert info.value.code == "UNAVAILABLE"
        assert info.value.message == "server busy; retry later."
        release.set()
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                assert limiter.run(lambda: 7) == 7
                break
            except ServingError:
                time.sleep(0.01)
        else:
            pytest.fail("the slot was not released after the run ended")
    finally:
        release.set()
        limiter.shutdown()


def test_the_shorter_of_the_server_and_caller_deadlines_applies():
    limiter = RequestLimiter(max_concurrent=2, request_timeout_s=30)
    try:
        start = time.monotonic()
        with pytest.raises(ServingError) as info:
            limiter.run(time.sleep, 1.0, timeout_s=0.05)
        assert info.value.code == "DEADLINE_EXCEEDED"
        assert time.monotonic() - start < 0.9
        assert limiter.run(lambda x: x + 1, 1, timeout_s=None) == 2
    finally:
        limiter.shutdown()
