"""Parse and check the TF Serving config files in `serving/config/`.

    python -m serving.configs serving/config   # exit 1 on any problem

`models.config` is parsed with the `ModelServerConfig` proto that
tensorflow-serving-api ships. The pip package has no proto for the batching
and monitoring files, so their message types are declared here with the field
names and types TF Serving's text-format parser expects
(`BatchingParameters` in session_bundle_config.proto, `MonitoringConfig` in
monitoring_config.proto); a misspelt or mistyped field fails the same way.
"""

import os
import sys

from google.protobuf import (
    descriptor_pb2,
    descriptor_pool,
    message_factory,
    text_format,
    wrappers_pb2,
)
from tensorflow_serving.config import model_server_config_pb2

_FIELD = descriptor_pb2.FieldDescriptorProto


def _message_types():
    """`BatchingParameters` and `MonitoringConfig` message classes."""
    pool = descriptor_pool.DescriptorPool()
    pool.AddSerializedFile(wrappers_pb2.DESCRIPTOR.serialized_pb)
    schema = descriptor_pb2.FileDescriptorProto(
        name="tf_switch_serving_configs.proto",
        package="tf_switch.serving",
        dependency=["google/protobuf/wrappers.proto"],
    )

    def message(name, fields):
        proto = schema.message_type.add(name=name)
        for number, (field_name, kind, label, type_name) in enumerate(fields, 1):
            proto.field.add(
                name=field_name,
                number=number,
                type=kind,
                label=label,
                type_name=type_name,
            )

    optional, repeated = _FIELD.LABEL_OPTIONAL, _FIELD.LABEL_REPEATED
    int64_value = ".google.protobuf.Int64Value"
    message(
        "BatchingParameters",
        [
            ("max_batch_size", _FIELD.TYPE_MESSAGE, optional, int64_value),
            ("batch_timeout_micros", _FIELD.TYPE_MESSAGE, optional, int64_value),
            ("max_enqueued_batches", _FIELD.TYPE_MESSAGE, optional, int64_value),
            ("num_batch_threads", _FIELD.TYPE_MESSAGE, optional, int64_value),
            (
                "thread_pool_name",
                _FIELD.TYPE_MESSAGE,
                optional,
                ".google.protobuf.StringValue",
            ),
            ("allowed_batch_sizes", _FIELD.TYPE_INT64, repeated, None),
            ("pad_variable_length_inputs", _FIELD.TYPE_BOOL, optional, None),
            (
                "enable_large_batch_splitting",
                _FIELD.TYPE_MESSAGE,
                optional,
                ".google.protobuf.BoolValue",
            ),
            ("max_execution_batch_size", _FIELD.TYPE_MESSAGE, optional, int64_value),
        ],
    )
    message(
        "PrometheusConfig",
        [
            ("enable", _FIELD.TYPE_BOOL, optional, None),
            ("path", _FIELD.TYPE_STRING, optional, None),
        ],
    )
    message(
        "MonitoringConfig",
        [
            (
                "prometheus_config",
                _FIELD.TYPE_MESSAGE,
                optional,
                ".tf_switch.serving.PrometheusConfig",
            )
        ],
    )
    pool.Add(schema)
    return {
        name: message_factory.GetMessageClass(
            pool.FindMessageTypeByName(f"tf_switch.serving.{name}")
        )
        for name in ("BatchingParameters", "MonitoringConfig")
    }


_TYPES = _message_types()


def _parse(path, message):
    with open(path) as f:
        try:
            return text_format.Parse(f.read(), message)
        except text_format.ParseError as error:
            raise ValueError(f"{path}: {error}") from error


def parse_models_config(path):
    """The `ModelServerConfig` of a models.config; checks names and labels."""
    config = _parse(path, model_server_config_pb2.ModelServerConfig())
    models = config.model_config_list.config
    if not models:
        raise ValueError(f"{path}: no model in model_config_list.")
    for model in models:
        if not model.name or not model.base_path:
            raise ValueError(f"{path}: every model needs a name and a base_path.")
        for label in model.version_labels:
            if not label.replace("_", "").isalnum():
                raise ValueError(f"{path}: label {label!r} must match [a-zA-Z0-9_]+.")
    return config


def parse_batching_config(path):
    """The `BatchingParameters` of a batching.config; checks batch sizes."""
    config = _parse(path, _TYPES["BatchingParameters"]())
    sizes = list(config.allowed_batch_sizes)
    if sizes != sorted(sizes):
        raise ValueError(f"{path}: allowed_batch_sizes must increase: {sizes}.")
    if sizes and sizes[-1] != config.max_batch_size.value:
        raise ValueError(
            f"{path}: the last allowed batch size ({sizes[-1]}) must equal "
            f"max_batch_size ({config.max_batch_size.value})."
        )
    return config


def parse_monitoring_config(path):
    """The `MonitoringConfig` of a monitoring.config."""
    config = _parse(path, _TYPES["MonitoringConfig"]())
    prometheus = config.prometheus_config
    if prometheus.enable and not prometheus.path.startswith("/"):
        raise ValueError(f"{path}: the Prometheus path must start with '/'.")
    return config


PARSERS = {
    "models.config": parse_models_config,
    "batching.config": parse_batching_config,
    "monitoring.config": parse_monitoring_config,
}


def main(argv=None):
    folder = (
        argv or sys.argv[1:] or [os.path.join(os.path.dirname(__file__), "config")]
    )[0]
    problems = []
    for name, parse in PARSERS.items():
        try:
            parse(os.path.join(folder, name))
        except (OSError, ValueError) as error:
            problems.append(str(error))
    print("\n".join(problems) or f"{folder}: all configs parse.")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
