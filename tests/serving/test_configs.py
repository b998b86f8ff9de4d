import pathlib

import pytest

from serving import configs

CONFIG_DIR = pathlib.Path(configs.__file__).parent / "config"


def test_shipped_configs_parse():
    models = configs.parse_models_config(CONFIG_DIR / "models.config")
    assert models.model_config_list.config[0].name == "switch"
    batching = configs.parse_batching_config(CONFIG_DIR / "batching.config")
    assert batching.max_batch_size.value == 32
    assert not batching.pad_variable_length_inputs  # see the comment in the file
    monitoring = configs.parse_monitoring_config(CONFIG_DIR / "monitoring.config")
    assert monitoring.prometheus_config.enable
    assert configs.main([str(CONFIG_DIR)]) == 0


def test_compose_file_uses_the_configs():
    compose = (CONFIG_DIR / "docker-compose.yml").read_text()
    assert "tensorflow/serving:2.20.0" in compose
    for name in configs.PARSERS:
        assert f"/models/{name}" in compose


@pytest.mark.parametrize(
    "name, text, message",
    [
        (
            "batching.config",
            "max_batch_size { value: 8 }\nallowed_batch_sizes: 4\n",
            "must equal",
        ),
        ("batching.config", "max_batch_sise { value: 8 }\n", "max_batch_sise"),
        ("batching.config", "max_batch_size: 8\n", "max_batch_size"),
        ("monitoring.config", "prometheus_config { enable: yes }\n", "enable"),
        (
            "models.config",
            'model_config_list { config { name: "m" base_path: "/m" '
            'version_labels { key: "can ary" value: 1 } } }\n',
            "label",
        ),
        ("models.config", "model_config_list { }\n", "no model"),
    ],
)
def test_broken_configs_fail_with_the_reason(tmp_path, name, text, message):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        configs.PARSERS[name](path)
