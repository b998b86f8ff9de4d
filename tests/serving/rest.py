"""HTTP helpers for the REST server tests (127.0.0.1 only, bounded timeouts)."""

import http.client
import json

NAME = "switch"
TIMEOUT = 30


def request(server, method, path, body=None, raw=None):
    host, port = server.server_address[:2]
    connection = http.client.HTTPConnection(host, port, timeout=TIMEOUT)
    try:
        data = raw if raw is not None else None
        if body is not None:
            data = json.dumps(body).encode()
        headers = {"Content-Type": "application/json"} if data is not None else {}
        connection.request(method, path, body=data, headers=headers)
        response = connection.getresponse()
        payload = response.read().decode()
        return response.status, json.loads(payload) if payload else None
    finally:
        connection.close()


def predict(server, body, path=f"/v1/models/{NAME}:predict"):
    return request(server, "POST", path, body=body)


def available(server, name=NAME):
    """The AVAILABLE versions in the model status, newest first."""
    _, body = request(server, "GET", f"/v1/models/{name}")
    return [
        entry["version"]
        for entry in body["model_version_status"]
        if entry["state"] == "AVAILABLE"
    ]


def check_error(status, body, expected_status, exported):
    assert status == expected_status, body
    assert set(body) == {"error"}
    assert "Traceback" not in body["error"]
    assert exported["base"] not in body["error"]
    assert exported["path"] not in body["error"]
