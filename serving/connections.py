"""The REST server's connection limits: a cap on open connections.

TF Serving's libevent server has no cap of its own (one event loop, no
thread per connection) and drops a connection after 50 s without a byte
(libevent's default HTTP timeout). This server runs one thread per
connection, so it caps them: `ConnectionCap(max_connections)` counts the
open ones, and `Refuser` answers each connection over the cap with a 503
and closes it, from a single thread:

- it sends `503 {"error": "Too many connections ..."}` with `Connection:
  close` at once and shuts its side for writing, then reads and discards
  what the client sends for up to `linger_s` seconds, so that a client
  still writing its request reads the 503 rather than a reset;
- at most `max_pending` refused connections linger; past that a new one is
  closed at once (the client may see a reset).
"""

import json
import logging
import queue
import selectors
import socket
import threading
import time

logger = logging.getLogger(__name__)

DEFAULT_MAX_CONNECTIONS = 64
DEFAULT_IDLE_TIMEOUT_S = 50.0  # libevent's HTTP read/write timeout


class ConnectionCap:
    """How many connections are open, up to `max_connections`."""

    def __init__(self, max_connections=DEFAULT_MAX_CONNECTIONS):
        self.max_connections = max_connections
        self._open = 0
        self._lock = threading.Lock()

    @property
    def open(self):
        return self._open

    def acquire(self):
        """True (and counted) if one more connection may open."""
        with self._lock:
            if self._open >= self.max_connections:
                return False
            self._open += 1
            return True

    def release(self):
        with self._lock:
            self._open -= 1


def busy_response(max_connections):
    body = json.dumps(
        {
            "error": f"Too many connections: this server takes "
            f"{max_connections} at a time (--max_connections); retry later."
        }
    ).encode("utf-8")
    head = (
        "HTTP/1.1 503 Service Unavailable\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    ).encode("ascii")
    return head + body


class Refuser:
    """Answers 503 to connections over the cap and closes them (one thread)."""

    def __init__(self, response, linger_s=2.0, max_pending=256):
        self.response = response
        self.linger_s = linger_s
        self.max_pending = max_pending
        self._queue = queue.SimpleQueue()
        self._stop = threading.Event()
        self._thread = None
        self._lock = threading.Lock()
        self.refused = 0

    def refuse(self, sock):
        """Takes over `sock`: answers 503 and closes it."""
        self.refused += 1
        try:
            sock.setblocking(False)
            sock.send(self.response)  # a few hundred bytes: a fresh socket takes them
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            sock.close()
            return
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="refuser", daemon=True
                )
                self._thread.start()
        self._queue.put(sock)

    def _run(self):
        selector = selectors.DefaultSelector()
        deadlines = {}
        try:
            while not self._stop.is_set():
                while True:
                    try:
                        sock = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if len(deadlines) >= self.max_pending:
                        sock.close()
                        continue
                    selector.register(sock, selectors.EVENT_READ)
                    deadlines[sock] = time.monotonic() + self.linger_s
                for key, _ in selector.select(timeout=0.1):
                    try:
                        data = key.fileobj.recv(1 << 16)
                    except OSError:
                        data = b""
                    if not data:
                        self._close(selector, deadlines, key.fileobj)
                now = time.monotonic()
                for sock in [s for s, t in deadlines.items() if t <= now]:
                    self._close(selector, deadlines, sock)
        finally:
            for sock in list(deadlines):
                self._close(selector, deadlines, sock)
            selector.close()
            while not self._queue.empty():
                self._queue.get_nowait().close()

    @staticmethod
    def _close(selector, deadlines, sock):
        selector.unregister(sock)
        del deadlines[sock]
        sock.close()

    def stop(self):
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
