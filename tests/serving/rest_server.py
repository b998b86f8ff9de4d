"""The local REST server on 127.0.0.1 and an ephemeral port, for the tests."""

import threading

from serving import server as server_lib
from tests.serving.rest import NAME


def start_server(model_dir=None, **kwargs):
    """Serves `model_dir` (its version directories) as model `switch`, or the
    `core=` given, from a daemon thread; `stop_server` ends it."""
    if model_dir is not None:
        kwargs.update(base_path=str(model_dir), model_name=NAME)
    server = server_lib.make_server(port=0, **kwargs)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return server


def stop_server(server):
    server.shutdown()
    server.server_close()
