"""Version policies, labels and version states (serving/models.py), over REST
and gRPC on 127.0.0.1. Versions 1 and 2 are different models, so an answer
shows which version gave it."""

import shutil

import grpc
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_text  # noqa: F401
from tensorflow_serving.apis import (
    get_model_status_pb2,
    model_service_pb2_grpc,
    prediction_service_pb2_grpc,
)

from serving import flags
from serving import server as server_lib
from serving.grpc_server import make_grpc_server
from serving.models import (
    ModelManager,
    VersionPolicy,
    available_versions,
    version_dirs,
)
from serving.status import ServingError
from tests.serving.grpc_requests import predict_request
from tests.serving.rest import NAME, TIMEOUT, available, check_error, predict, request
from tests.serving.rest_server import start_server, stop_server
from tests.tiny_export import (
    random_token_ids,
    run_in_process,
)


@pytest.fixture(scope="module")
def versions(exported, other_export, tmp_path_factory):
    """`<source>/switch/{1,2}`: two tiny models with different weights."""
    source = tmp_path_factory.mktemp("versions") / NAME
    for version, export in [(1, exported), (2, other_export)]:
        shutil.copytree(export["path"], source / str(version))
    loaded = {1: exported["loaded"], 2: other_export["loaded"]}
    ids = random_token_ids(1, 4)
    assert not np.allclose(_logits(loaded[1], ids), _logits(loaded[2], ids))
    return {"source": source, "loaded": loaded}


def _model_dir(versions, tmp_path, numbers=(1, 2)):
    model_dir = tmp_path / NAME
    for number in numbers:
        shutil.copytree(versions["source"] / str(number), model_dir / str(number))
    return model_dir


def _config(tmp_path, model_dir, policy="", labels=None):
    labels = "".join(
        f' version_labels {{ key: "{k}" value: {v} }}'
        for k, v in (labels or {}).items()
    )
    path = tmp_path / "models.config"
    path.write_text(
        "model_config_list { config {"
        f' name: "{NAME}" base_path: "{model_dir}" model_platform: "tensorflow"'
        f" {policy}{labels} }} }}"
    )
    return str(path)


def _logits(loaded, ids):
    return run_in_process(loaded, "serving_default", token_ids=ids)["logits"]


def test_version_policy_picks_versions():
    on_disk = [1, 2, 5, 7]
    assert VersionPolicy().aspired(on_disk) == {7}
    assert VersionPolicy("latest", num_versions=2).aspired(on_disk) == {5, 7}
    assert VersionPolicy("specific", versions=[1, 5, 9]).aspired(on_disk) == {1, 5}
    assert VersionPolicy("all").aspired(on_disk) == {1, 2, 5, 7}
    assert VersionPolicy().aspired([]) == set()


@pytest.fixture(scope="module")
def labelled(versions, tmp_path_factory):
    """REST and gRPC over one core: specific {1, 2}, stable=1, canary=2."""
    tmp_path = tmp_path_factory.mktemp("labelled")
    model_dir = _model_dir(versions, tmp_path)
    config = _config(
        tmp_path,
        model_dir,
        "model_version_policy { specific { versions: 1 versions: 2 } }",
        {"stable": 1, "canary": 2},
    )
    core = flags.make_core(model_config_file=config, poll_s=0)
    rest = start_server(core=core)
    grpc_server, port = make_grpc_server(core=core, port=0)
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    yield {
        "rest": rest,
        "predict": prediction_service_pb2_grpc.PredictionServiceStub(channel),
        "model": model_service_pb2_grpc.ModelServiceStub(channel),
        "base": str(tmp_path),
        "path": str(model_dir),
    }
    channel.close()
    grpc_server.stop(None).wait(5)
    grpc_server.limiter.shutdown()
    stop_server(rest)


def test_specific_policy_keeps_both_versions_available(labelled):
    status, body = request(labelled["rest"], "GET", f"/v1/models/{NAME}")
    assert status == 200
    assert [s["version"] for s in body["model_version_status"]] == ["2", "1"]
    assert {s["state"] for s in body["model_version_status"]} == {"AVAILABLE"}
    assert all(
        s["status"] == {"error_code": "OK", "error_message": ""}
        for s in body["model_version_status"]
    )
    status, body = request(labelled["rest"], "GET", f"/v1/models/{NAME}/versions/1")
    assert [s["version"] for s in body["model_version_status"]] == ["1"]


def test_labels_choose_the_version_over_rest(labelled, versions):
    ids = random_token_ids(2, 5, seed=7)
    for label, version in [("stable", 1), ("canary", 2)]:
        path = f"/v1/models/{NAME}/labels/{label}"
        status, body = predict(
            labelled["rest"], {"inputs": ids.tolist()}, path + ":predict"
        )
        assert status == 200, body
        np.testing.assert_allclose(
            body["outputs"]["logits"],
            _logits(versions["loaded"][version], ids),
            rtol=1e-5,
            atol=1e-6,
        )
        _, meta = request(labelled["rest"], "GET", path + "/metadata")
        assert meta["model_spec"]["version"] == str(version)
    # No label and no version: the latest.
    status, body = predict(labelled["rest"], {"inputs": ids.tolist()})
    np.testing.assert_allclose(
        body["outputs"]["logits"],
        _logits(versions["loaded"][2], ids),
        rtol=1e-5,
        atol=1e-6,
    )


def test_unknown_label_is_400_as_tf_serving(labelled):
    # server_core.cc GetModelVersionForLabel: INVALID_ARGUMENT.
    exported = {"base": labelled["base"], "path": labelled["path"]}
    for method, path in [
        ("POST", f"/v1/models/{NAME}/labels/nope:predict"),
        ("GET", f"/v1/models/{NAME}/labels/nope/metadata"),
        ("POST", "/v1/models/other/labels/stable:predict"),
    ]:
        body = {"instances": [[5]]} if method == "POST" else None
        status, answer = request(labelled["rest"], method, path, body=body)
        check_error(status, answer, 400, exported)
        assert answer["error"].startswith("Unrecognized servable version label: ")
    # get_model_status_impl.cc reads model_spec.version only: a label (known
    # or not) lists every version.
    status, body = request(labelled["rest"], "GET", f"/v1/models/{NAME}/labels/nope")
    assert status == 200 and len(body["model_version_status"]) == 2


def _grpc_predict(stub, ids, **spec):
    return stub.Predict(predict_request(token_ids=ids, **spec), timeout=TIMEOUT)


def test_labels_and_versions_over_grpc(labelled, versions):
    ids = random_token_ids(1, 4, seed=2)
    for label, version in [("stable", 1), ("canary", 2)]:
        response = _grpc_predict(labelled["predict"], ids, version_label=label)
        assert response.model_spec.version.value == version
        np.testing.assert_allclose(
            tf.make_ndarray(response.outputs["logits"]),
            _logits(versions["loaded"][version], ids),
            rtol=1e-5,
            atol=1e-6,
        )
    assert (
        _grpc_predict(labelled["predict"], ids, version=1).model_spec.version.value == 1
    )
    with pytest.raises(grpc.RpcError) as info:
        _grpc_predict(labelled["predict"], ids, version_label="nope")
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details() == "Unrecognized servable version label: nope"
    with pytest.raises(grpc.RpcError) as info:
        _grpc_predict(labelled["predict"], ids, version=9)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    assert (
        info.value.details() == f"Servable not found for request: Specific({NAME}, 9)"
    )


def test_get_model_status_over_grpc(labelled):
    stub = labelled["model"]
    request_ = get_model_status_pb2.GetModelStatusRequest()
    request_.model_spec.name = NAME
    response = stub.GetModelStatus(request_, timeout=TIMEOUT)
    available = get_model_status_pb2.ModelVersionStatus.AVAILABLE
    assert [(s.version, s.state) for s in response.model_version_status] == [
        (2, available),
        (1, available),
    ]
    assert all(s.status.error_code == 0 for s in response.model_version_status)
    request_.model_spec.version.value = 1
    response = stub.GetModelStatus(request_, timeout=TIMEOUT)
    assert [s.version for s in response.model_version_status] == [1]
    # get_model_status_impl.cc: its codes and messages.
    for spec, code, message in [
        (
            {"name": NAME, "version": 7},
            "NOT_FOUND",
            f"Could not find version 7 of model {NAME}",
        ),
        ({"name": "other"}, "NOT_FOUND", "Could not find any versions of model other"),
        (None, "INVALID_ARGUMENT", "Missing ModelSpec"),
    ]:
        request_ = get_model_status_pb2.GetModelStatusRequest()
        if spec:
            request_.model_spec.name = spec["name"]
            if "version" in spec:
                request_.model_spec.version.value = spec["version"]
        with pytest.raises(grpc.RpcError) as info:
            stub.GetModelStatus(request_, timeout=TIMEOUT)
        assert info.value.code().name == code and info.value.details() == message
    # The REST status of the same core agrees.
    _, body = request(labelled["rest"], "GET", f"/v1/models/{NAME}")
    assert [int(s["version"]) for s in body["model_version_status"]] == [2, 1]


def test_a_label_must_point_at_an_available_version(versions, tmp_path):
    model_dir = _model_dir(versions, tmp_path, numbers=(1,))
    config = _config(tmp_path, model_dir, labels={"canary": 2})
    with pytest.raises(ServingError) as info:
        flags.make_core(model_config_file=config, poll_s=0)
    assert info.value.code == "FAILED_PRECONDITION"
    assert info.value.message == (
        f"Request to assign label to version 2 of model {NAME}, which is not "
        "currently available for inference"
    )
    with pytest.raises(SystemExit) as exit_info:
        server_lib.main(["--model_config_file", config, "--port", "0"])
    assert exit_info.value.code == 1
    # --allow_version_labels_for_unavailable_models: the label resolves to a
    # version that is not loaded, which is NOT_FOUND.
    core = flags.make_core(
        model_config_file=config, poll_s=0, allow_labels_for_unavailable=True
    )
    server = start_server(core=core)
    try:
        path = f"/v1/models/{NAME}/labels/canary:predict"
        status, body = predict(server, {"instances": [[5, 6]]}, path)
        assert status == 404
        assert body == {"error": f"Servable not found for request: Specific({NAME}, 2)"}
    finally:
        stop_server(server)


def test_latest_policy_swaps_and_keeps_serving_through_a_bad_version(
    versions, tmp_path
):
    model_dir = _model_dir(versions, tmp_path, numbers=(1,))
    config = _config(
        tmp_path, model_dir, "model_version_policy { latest { num_versions: 1 } }"
    )
    core = flags.make_core(model_config_file=config, poll_s=0)
    server = start_server(core=core)
    try:
        assert available(server) == ["1"]
        shutil.copytree(versions["source"] / "2", model_dir / "2")
        assert core.models[NAME].reload()  # Loads 2 before it unloads 1.
        _, body = request(server, "GET", f"/v1/models/{NAME}")
        states = [(s["version"], s["state"]) for s in body["model_version_status"]]
        assert states == [("2", "AVAILABLE"), ("1", "END")]
        # A version that cannot load: END with its error; 2 keeps serving.
        (model_dir / "3").mkdir()
        (model_dir / "3" / "saved_model.pb").write_bytes(b"not a SavedModel")
        assert not core.models[NAME].reload()
        _, body = request(server, "GET", f"/v1/models/{NAME}/versions/3")
        (entry,) = body["model_version_status"]
        assert entry["state"] == "END" and entry["status"]["error_code"] != "OK"
        assert str(tmp_path) not in entry["status"]["error_message"]
        assert available(server) == ["2"]
        ids = random_token_ids(1, 4).tolist()
        assert predict(server, {"instances": ids})[0] == 200
        assert not core.models[NAME].reload()  # Not retried while unchanged.
        # Fixed in place (the directory changes): loaded on the next poll.
        shutil.rmtree(model_dir / "3")
        shutil.copytree(versions["source"] / "1", model_dir / "3")
        assert core.models[NAME].reload()
        assert available(server) == ["3"]
    finally:
        stop_server(server)


def test_config_reload_moves_a_label_in_two_edits(versions, tmp_path):
    # --model_config_file_poll_wait_seconds re-applies the file as ReloadConfig:
    # labels are checked before the policy changes, so a canary takes two edits.
    model_dir = _model_dir(versions, tmp_path)
    specific_1 = "model_version_policy { specific { versions: 1 } }"
    specific_12 = "model_version_policy { specific { versions: 1 versions: 2 } }"
    config = _config(tmp_path, model_dir, specific_1, {"stable": 1})
    core = flags.make_core(model_config_file=config, poll_s=0, config_poll_s=60)
    manager = core.models[NAME]
    assert [s[:2] for s in manager.status()] == [(1, "AVAILABLE")]
    assert core.config_reload() is False  # Unchanged.
    _config(tmp_path, model_dir, specific_1, {"stable": 1, "canary": 2})
    with pytest.raises(ServingError) as info:
        core.config_reload()  # Version 2 is not AVAILABLE yet: nothing changes.
    assert info.value.code == "FAILED_PRECONDITION"
    assert [s[:2] for s in manager.status()] == [(1, "AVAILABLE")]
    _config(tmp_path, model_dir, specific_12, {"stable": 1})
    assert core.config_reload() is True
    assert [s[:2] for s in manager.status()] == [(2, "AVAILABLE"), (1, "AVAILABLE")]
    _config(tmp_path, model_dir, specific_12, {"stable": 1, "canary": 2})
    assert core.config_reload() is True
    assert core.get(NAME, label="canary").version == 2
    assert core.get(NAME, label="stable").version == 1
    core.stop()


def test_config_reload_refuses_a_moved_base_path(versions, tmp_path):
    model_dir = _model_dir(versions, tmp_path)
    specific_1 = "model_version_policy { specific { versions: 1 } }"
    config = _config(tmp_path, model_dir, specific_1)
    core = flags.make_core(model_config_file=config, poll_s=0, config_poll_s=60)
    try:
        _config(tmp_path, tmp_path / "elsewhere", specific_1)
        with pytest.raises(ValueError, match=f"base_path of {NAME} needs a restart"):
            core.config_reload()
        assert [s[:2] for s in core.models[NAME].status()] == [(1, "AVAILABLE")]
    finally:
        core.stop()


def test_only_ascii_digit_directories_are_versions(tmp_path):
    # TF Serving: absl::SimpleAtoi (file_system_storage_path_source.cc).
    # str.isdigit() took "²" (then int() raised on every poll) and "٥" (5).
    names = ["1", "²", "٥", "x", "+2", "-3", "1e3", "99999999999999999999", "007"]
    for name in names:
        (tmp_path / name).mkdir()
    (tmp_path / "8").write_text("a file, not a directory")
    assert version_dirs(tmp_path) == {1: "1", 7: "007"}
    assert available_versions(tmp_path) == [1, 7]


def test_an_odd_directory_does_not_stop_new_versions_loading(versions, tmp_path):
    model_dir = _model_dir(versions, tmp_path, numbers=(1,))
    (model_dir / "²").mkdir()
    (model_dir / "٥").mkdir()
    manager = ModelManager(NAME, str(model_dir), enable_warmup=False)
    assert [v for v, state, *_ in manager.status() if state == "AVAILABLE"] == [1]
    shutil.copytree(versions["source"] / "2", model_dir / "02")
    assert manager.reload()  # "02" is version 2; "²" and "٥" are ignored
    assert manager.get().version == 2
    assert [v for v, *_ in manager.status()] == [2, 1]
