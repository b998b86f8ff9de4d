"""Tiny exports shared by the serving tests (one build per test process)."""

import os

import pytest
import tensorflow as tf
import tensorflow_text  # noqa: F401  (ops of the export)

from tests.serving.rest import NAME
from tests.serving.rest_server import start_server, stop_server
from tests.tiny_export import tiny_model, tiny_tokenizer
from tf_switch.export import export_for_serving


def _export(tmp_path_factory, tokenizer, folder):
    base = str(tmp_path_factory.mktemp(folder))
    model = tiny_model(tokenizer)
    path = export_for_serving(model, tokenizer, base, model_name=NAME)
    return {
        "base": base,
        "model_dir": os.path.join(base, NAME),  # TF Serving's --model_base_path
        "path": path,
        "loaded": tf.saved_model.load(path),
        "vocab_size": tokenizer.vocab_size,
        "model": model,
        "tokenizer": tokenizer,
    }


@pytest.fixture(scope="session")
def tokenizer():
    return tiny_tokenizer()


@pytest.fixture(scope="session")
def exported(tmp_path_factory, tokenizer):
    """`base/switch/1`: a tiny Switch LM export (read only: copy to change)."""
    return _export(tmp_path_factory, tokenizer, "exports")


@pytest.fixture(scope="session")
def other_export(tmp_path_factory, tokenizer):
    """Another `base/switch/1`, same shapes, different weights."""
    return _export(tmp_path_factory, tokenizer, "other_exports")


@pytest.fixture(scope="module")
def server(exported):
    """A REST server on `exported`, one per test module."""
    server = start_server(exported["model_dir"], poll_s=0)
    yield server
    stop_server(server)
