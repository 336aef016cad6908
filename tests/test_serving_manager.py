"""Version policies, config files with labels, and config reload, on an in-process server."""
from __future__ import annotations

import shutil

import grpc
import portpicker
import pytest
from tensorflow_serving.apis import model_management_pb2

from serving.manager import discover_versions, wanted_versions
from serving.server import ModelServer, build_parser
from tests.conftest import serialize
from tests.test_serving_contract import Served, predict_request


def test_version_policies():
    available = {1: "a", 2: "b", 5: "c"}
    assert wanted_versions(available, ("latest", 1)) == {5}
    assert wanted_versions(available, ("latest", 2)) == {2, 5}
    assert wanted_versions(available, ("all", None)) == {1, 2, 5}
    assert wanted_versions(available, ("specific", (1, 7))) == {1}


def test_discovery_ignores_non_numeric_and_incomplete_dirs(tmp_path):
    (tmp_path / "3").mkdir()
    (tmp_path / "3" / "saved_model.pb").write_bytes(b"")
    (tmp_path / "4").mkdir()  # a Pusher still copying: no saved_model.pb yet
    (tmp_path / "tmp-5").mkdir()
    assert discover_versions(str(tmp_path)) == {3: str(tmp_path / "3")}
    assert discover_versions(str(tmp_path / "missing")) == {}


@pytest.fixture(scope="module")
def two_versions(trained_export, tmp_path_factory):
    base = tmp_path_factory.mktemp("models")
    for version in (1, 2):
        shutil.copytree(trained_export[1], base / "m" / str(version))
    return base


def _start(argv):
    server = ModelServer(build_parser().parse_args(argv))
    server.start()
    return server


def test_config_file_with_all_policy_and_labels(two_versions, tiny_spec, transformed, tmp_path):
    config = tmp_path / "models.config"
    config.write_text(f"""model_config_list {{
      config {{ name: "a" base_path: "{two_versions / 'm'}" model_platform: "tensorflow"
               model_version_policy {{ all {{}} }}
               version_labels {{ key: "stable" value: 1 }} version_labels {{ key: "canary" value: 2 }} }}
      config {{ name: "b" base_path: "{two_versions / 'm'}" model_platform: "tensorflow" }}
    }}""")
    port = portpicker.pick_unused_port()
    server = _start(["--port", str(port), "--rest-api-port", "0", "--model-config-file", str(config),
                     "--file-system-poll-wait-seconds", "0"])
    try:
        client = Served(f"127.0.0.1:{port}", "", "a")
        rows = [serialize(r, tiny_spec.features.all_columns()) for r in transformed["raw"][:2]]
        assert {s.version for s in client.status().model_version_status if s.state == 30} == {1, 2}
        for label, version in (("stable", 1), ("canary", 2)):
            response = client.predict_stub.Predict(predict_request("a", rows, version_label=label), timeout=30)
            assert response.model_spec.version.value == version
        # Model b keeps the default policy: only the latest version.
        response = client.predict_stub.Predict(predict_request("b", rows), timeout=30)
        assert response.model_spec.version.value == 2

        # HandleReloadConfigRequest: b goes away, a narrows to version 1.
        reload = model_management_pb2.ReloadConfigRequest()
        entry = reload.config.model_config_list.config.add(name="a", base_path=str(two_versions / "m"),
                                                           model_platform="tensorflow")
        entry.model_version_policy.specific.versions.append(1)
        client.model_stub.HandleReloadConfigRequest(reload, timeout=60)
        with pytest.raises(grpc.RpcError) as info:
            client.predict_stub.Predict(predict_request("b", rows), timeout=30)
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
        response = client.predict_stub.Predict(predict_request("a", rows), timeout=30)
        assert response.model_spec.version.value == 1
    finally:
        server.stop()


def test_bad_flags_are_reported(tmp_path, capsys):
    from serving.server import main

    assert main(["--port", "0", "--rest-api-port", "0"]) == 2
    assert "--model-name" in capsys.readouterr().err
    missing = tmp_path / "none.config"
    assert main(["--port", "0", "--rest-api-port", "0", "--model-config-file", str(missing)]) == 2
    assert "none.config" in capsys.readouterr().err


def test_warmup_replays_the_exported_requests(trained_export):
    from serving.manager import run_warmup
    from serving.servable import Servable

    servable = Servable.load("m", 1, str(trained_export[1]))
    assert run_warmup(servable) == 1
