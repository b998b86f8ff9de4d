"""The local REST server on 127.0.0.1 and an ephemeral port, for the tests."""

import threading

from serving import server as server_lib
from tests.serving.rest import NAME


def start_server(model_dir, **kwargs):
    """Serves `model_dir` (its version directories) as model `switch` from a
    daemon thread; `stop_server` ends it."""
    server = server_lib.make_server(str(model_dir), NAME, port=0, **kwargs)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return server


def stop_server(server):
    server.shutdown()
    server.server_close()
