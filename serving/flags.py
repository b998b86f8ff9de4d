"""The model flags both servers take, as `tensorflow_model_server` spells them.

Either `--model_name NAME --model_base_path DIR` (one model, the latest
version; DIR holds its integer version directories, as for TF Serving) or
`--model_config_file models.config` (a `ModelServerConfig` in text format:
several models, `model_version_policy`, `version_labels`; relative
`base_path`s are taken from the working directory), plus
`--file_system_poll_wait_seconds`, `--model_config_file_poll_wait_seconds`
(re-read the config; 0, the default, never), `--enable_model_warmup`,
`--allow_version_labels_for_unavailable_models` and
`--enable_signature_method_name_check` (Classify runs only signatures whose
method_name is tensorflow/serving/classify; off, as in TF Serving).
"""

import errno
import logging
import os

from . import configs
from .connections import DEFAULT_IDLE_TIMEOUT_S, DEFAULT_MAX_CONNECTIONS
from .limits import DEFAULT_MAX_CONCURRENT, DEFAULT_REQUEST_TIMEOUT_S
from .models import DEFAULT_POLL_S, ModelManager, ServerCore, VersionPolicy
from .responses import DEFAULT_MAX_RESPONSE_BYTES
from .status import ServingError

DEFAULT_MAX_BODY_BYTES = 1 << 20  # a REST body or a gRPC request message

logger = logging.getLogger(__name__)


def _bool(text):
    if text.lower() in ("1", "true", "yes"):
        return True
    if text.lower() in ("0", "false", "no"):
        return False
    raise ValueError(f"Expected true or false, got {text!r}.")


def add_endpoint_flags(parser, port):
    """Where a server listens and how much it takes on (REST and gRPC)."""
    parser.add_argument("--port", type=int, default=port)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--max_concurrent", type=int, default=DEFAULT_MAX_CONCURRENT)
    parser.add_argument(
        "--request_timeout_s", type=float, default=DEFAULT_REQUEST_TIMEOUT_S
    )
    parser.add_argument(
        "--max_body_bytes",
        type=int,
        default=DEFAULT_MAX_BODY_BYTES,
        help="largest request: REST body, gRPC message (default 1 MiB)",
    )
    parser.add_argument(
        "--max_response_bytes",
        type=int,
        default=DEFAULT_MAX_RESPONSE_BYTES,
        help="largest answer: JSON text, gRPC tensor data (default 16 MiB)",
    )


def add_rest_flags(parser):
    """The REST server's connection limits."""
    parser.add_argument(
        "--max_connections",
        type=int,
        default=DEFAULT_MAX_CONNECTIONS,
        help="open connections at most; 503 beyond (default 64)",
    )
    parser.add_argument(
        "--idle_timeout_s",
        type=float,
        default=DEFAULT_IDLE_TIMEOUT_S,
        help="close a connection after this long without a byte (default 50)",
    )


def bind_failure(host, port, error):
    """The message of a server that cannot listen at host:port."""
    reason = error.strerror or str(error)
    if error.errno == errno.EADDRINUSE:
        reason = "the address is already in use (another server on that port?)"
    return (
        f"Failed to start server: cannot listen on {host}:{port}: {reason}. "
        "Stop the other server or pass another --port.\n"
    )


def add_model_flags(parser):
    parser.add_argument("--model_name", help="the model's name (without a config)")
    parser.add_argument(
        "--model_base_path",
        help="its directory of version directories (without a config)",
    )
    parser.add_argument(
        "--model_config_file", help="a models.config (ModelServerConfig text)"
    )
    parser.add_argument(
        "--file_system_poll_wait_seconds", type=float, default=DEFAULT_POLL_S
    )
    parser.add_argument("--model_config_file_poll_wait_seconds", type=float, default=0)
    parser.add_argument("--enable_model_warmup", type=_bool, default=True)
    parser.add_argument(
        "--allow_version_labels_for_unavailable_models", type=_bool, default=False
    )
    parser.add_argument(
        "--enable_signature_method_name_check", type=_bool, default=False
    )


def managers_from_config(path, **options):
    """A `ModelManager` for each model of a models.config."""
    config = configs.parse_models_config(path)
    managers = []
    for model in config.model_config_list.config:
        if model.model_platform not in ("", "tensorflow"):
            raise ValueError(
                f"Model {model.name} requests unsupported platform "
                f"{model.model_platform}"
            )
        managers.append(
            ModelManager(
                model.name,
                os.path.abspath(model.base_path),
                policy=VersionPolicy.from_proto(model.model_version_policy),
                labels=dict(model.version_labels),
                **options,
            )
        )
    return managers


class ConfigReloader:
    """Re-applies a models.config when its text changes, as `ReloadConfig`.

    Like server_core.cc, the labels are checked first (each must point at an
    AVAILABLE version, so moving a label to a new version takes two edits:
    add the version to the policy, then move the label once it is
    AVAILABLE); a refused config changes nothing. Policies then change and
    versions load or unload. Adding or removing models needs a restart here.
    """

    def __init__(self, path, core):
        self.path = path
        self.core = core
        self._text = self._read()

    def _read(self):
        with open(self.path) as f:
            return f.read()

    def __call__(self):
        text = self._read()
        if text == self._text:
            return False
        config = configs.parse_models_config(self.path)
        models = {model.name: model for model in config.model_config_list.config}
        if set(models) != set(self.core.models):
            raise ValueError(
                f"{self.path}: adding or removing models needs a restart; the "
                "config is not applied."
            )
        moved = [
            name
            for name, model in models.items()
            if os.path.abspath(model.base_path) != self.core.models[name].base_path
        ]
        if moved:
            raise ValueError(
                f"{self.path}: changing the base_path of {', '.join(moved)} needs "
                "a restart; the config is not applied."
            )
        for name, model in models.items():
            self.core.models[name].check_labels(dict(model.version_labels))
        for name, model in models.items():
            manager = self.core.models[name]
            manager.policy = VersionPolicy.from_proto(model.model_version_policy)
            manager.set_labels(dict(model.version_labels))
            manager.reload()
        self._text = text
        logger.info("Applied %s.", self.path)
        return True


def make_core(
    base_path=None,
    model_name=None,
    model_config_file=None,
    poll_s=DEFAULT_POLL_S,
    enable_warmup=True,
    allow_labels_for_unavailable=False,
    config_poll_s=0,
    signature_method_name_check=False,
):
    """A `ServerCore` (not yet polling) from the flags' values."""
    options = {
        "enable_warmup": enable_warmup,
        "allow_labels_for_unavailable": allow_labels_for_unavailable,
        "signature_method_name_check": signature_method_name_check,
    }
    if model_config_file:
        if base_path or model_name:
            raise ValueError(
                "Give either --model_config_file or --model_name and "
                "--model_base_path, not both."
            )
        managers = managers_from_config(model_config_file, **options)
        core = ServerCore(managers, poll_s=poll_s, config_poll_s=config_poll_s)
        core.config_reload = ConfigReloader(model_config_file, core)
        return core
    else:
        if not base_path or not model_name:
            raise ValueError(
                "Give --model_name and --model_base_path, or --model_config_file."
            )
        managers = [ModelManager(model_name, os.path.abspath(base_path), **options)]
    return ServerCore(managers, poll_s=poll_s)


def core_from_args(args, parser):
    try:
        return make_core(
            base_path=args.model_base_path,
            model_name=args.model_name,
            model_config_file=args.model_config_file,
            poll_s=args.file_system_poll_wait_seconds,
            enable_warmup=args.enable_model_warmup,
            allow_labels_for_unavailable=(
                args.allow_version_labels_for_unavailable_models
            ),
            config_poll_s=args.model_config_file_poll_wait_seconds,
            signature_method_name_check=args.enable_signature_method_name_check,
        )
    except ValueError as error:
        parser.error(str(error))
    except (OSError, ServingError) as error:
        parser.exit(1, f"Failed to start server. Error: {error}\n")
