"""The request limits both servers share: concurrency and a per-request deadline.

`RequestLimiter.run(fn, *args, timeout_s=None)` runs `fn` on a worker thread
when one of `max_concurrent` slots is free, else fails at once with
UNAVAILABLE "server busy" (what TF Serving answers when its batching queue is
full: "The batch scheduling queue to which this task was submitted is full",
UNAVAILABLE; REST 503). A run that takes longer than `request_timeout_s` (or
the caller's own, shorter deadline, e.g. a gRPC deadline) fails with
DEADLINE_EXCEEDED (REST 504); the computation keeps its slot until it really
ends, so a stuck model cannot take more than `max_concurrent` threads.
"""

import concurrent.futures
import threading

from .status import ServingError

DEFAULT_MAX_CONCURRENT = 8
DEFAULT_REQUEST_TIMEOUT_S = 30.0


class RequestLimiter:
    def __init__(
        self,
        max_concurrent=DEFAULT_MAX_CONCURRENT,
        request_timeout_s=DEFAULT_REQUEST_TIMEOUT_S,
    ):
        self.max_concurrent = max_concurrent
        self.request_timeout_s = request_timeout_s
        self.slots = threading.BoundedSemaphore(max_concurrent)
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=max_concurrent, thread_name_prefix="predict"
        )

    def run(self, fn, *args, timeout_s=None):
        """`fn(*args)` within the limits; raises UNAVAILABLE / DEADLINE_EXCEEDED."""
        timeout = self.request_timeout_s
        if timeout_s is not None:
            timeout = min(timeout, max(timeout_s, 0.0))
        if not self.slots.acquire(blocking=False):
            raise ServingError("UNAVAILABLE", "server busy; retry later.")
        released = False
        try:
            future = self._executor.submit(fn, *args)
            try:
                return future.result(timeout=timeout)
            except concurrent.futures.TimeoutError:
                future.add_done_callback(lambda _: self.slots.release())
                released = True
                raise ServingError(
                    "DEADLINE_EXCEEDED", f"Request took longer than {timeout:g} s."
                ) from None
        finally:
            if not released:
                self.slots.release()

    def shutdown(self):
        self._executor.shutdown(wait=False, cancel_futures=True)
