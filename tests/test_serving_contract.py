"""The TF Serving API contract, through the stock tensorflow-serving-api stubs and REST.

By default the tests start `commerce-mtl serve` on free ports over a tiny exported model. To run the
same tests against a real TF Serving, set COMMERCE_MTL_SERVING_ADDRESS=host:grpc_port,
COMMERCE_MTL_SERVING_REST=http://host:rest_port and COMMERCE_MTL_SERVING_MODEL=name, serving a
model exported by this project; tests that need our process or its filesystem then skip.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import grpc
import numpy as np
import portpicker
import pytest
import tensorflow as tf
import tensorflow_text  # noqa: F401
from tensorflow_serving.apis import (
    classification_pb2, get_model_metadata_pb2, get_model_status_pb2, inference_pb2, predict_pb2,
    model_service_pb2_grpc, prediction_service_pb2_grpc, regression_pb2,
)

from tests.conftest import ROOT, serialize

EXTERNAL = os.environ.get("COMMERCE_MTL_SERVING_ADDRESS")
ours_only = pytest.mark.skipif(bool(EXTERNAL), reason="needs our server process and its model directory")
MAX_MESSAGE = 2 * 1024 * 1024


class Served:
    def __init__(self, address, rest, model, base_path=None, process=None):
        self.address, self.rest, self.model, self.base_path, self.process = address, rest, model, base_path, process
        self.channel = grpc.insecure_channel(address, options=[("grpc.max_send_message_length", 64 << 20)])
        self.predict_stub = prediction_service_pb2_grpc.PredictionServiceStub(self.channel)
        self.model_stub = model_service_pb2_grpc.ModelServiceStub(self.channel)

    def status(self):
        request = get_model_status_pb2.GetModelStatusRequest()
        request.model_spec.name = self.model
        return self.model_stub.GetModelStatus(request, timeout=10)

    def wait_available(self, version=None, timeout=120):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                states = {s.version: s.state for s in self.status().model_version_status}
                if (version is None and 30 in states.values()) or states.get(version) == 30:
                    return states
            except grpc.RpcError:
                pass
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"server exited: {self.process.stdout.read()}")
            time.sleep(0.2)
        raise TimeoutError(f"{self.model} version {version} not AVAILABLE")


def start_server(base_path, model, *extra) -> Served:
    port, rest = portpicker.pick_unused_port(), portpicker.pick_unused_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "serving.server", "--port", str(port), "--rest-api-port", str(rest),
         "--model-name", model, "--model-base-path", str(base_path), "--file-system-poll-wait-seconds", "0.5",
         "--max-message-bytes", str(MAX_MESSAGE), *extra],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "PYTHONWARNINGS": "ignore", "TF_CPP_MIN_LOG_LEVEL": "2"},
    )
    served = Served(f"127.0.0.1:{port}", f"http://127.0.0.1:{rest}", model, base_path, process)
    served.wait_available()
    return served


def stop_server(served: Served) -> None:
    if served.process is not None:
        served.process.terminate()
        served.process.wait(timeout=30)


@pytest.fixture(scope="module")
def served(tiny_spec, trained_export, tmp_path_factory):
    if EXTERNAL:
        yield Served(EXTERNAL, os.environ.get("COMMERCE_MTL_SERVING_REST", ""), os.environ["COMMERCE_MTL_SERVING_MODEL"])
        return
    base = tmp_path_factory.mktemp("serving") / tiny_spec.model_name
    shutil.copytree(trained_export[1], base / "1")
    server = start_server(base, tiny_spec.model_name)
    yield server
    stop_server(server)


@pytest.fixture(scope="module")
def rows(tiny_spec, transformed):
    return [serialize(raw, tiny_spec.features.all_columns()) for raw in transformed["raw"][:6]]


@pytest.fixture(scope="module")
def expected(trained_export, rows):
    loaded = tf.saved_model.load(str(trained_export[1]))
    return {k: v.numpy() for k, v in loaded.signatures["serving_default"](examples=tf.constant(rows)).items()}


def predict_request(model, rows, signature="", **spec):
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.model_spec.signature_name = signature
    for key, value in spec.items():
        if key == "version":
            request.model_spec.version.value = value
        else:
            setattr(request.model_spec, key, value)
    request.inputs["examples"].CopyFrom(tf.make_tensor_proto(rows, dtype=tf.string))
    return request


def example_input(target, rows):
    for row in rows:
        target.input.example_list.examples.add().ParseFromString(row)


# --- PredictionService ---------------------------------------------------------------------------
def test_predict_equals_the_savedmodel_in_process(served, rows, expected, tiny_spec):
    response = served.predict_stub.Predict(predict_request(served.model, rows), timeout=30)
    assert set(response.outputs) == {t.name for t in tiny_spec.tasks}
    for name, value in expected.items():
        np.testing.assert_allclose(tf.make_ndarray(response.outputs[name]), value, rtol=1e-5, atol=1e-6)
    assert response.model_spec.name == served.model and response.model_spec.version.value >= 1
    assert response.model_spec.signature_name == "serving_default"


def test_predict_output_filter(served, rows):
    request = predict_request(served.model, rows)
    request.output_filter.append("click")
    response = served.predict_stub.Predict(request, timeout=30)
    assert list(response.outputs) == ["click"]


def test_classify_binary_and_multiclass(served, rows, expected, tiny_spec):
    for task in tiny_spec.tasks:
        if task.type.value == "regression":
            continue
        request = classification_pb2.ClassificationRequest()
        request.model_spec.name = served.model
        request.model_spec.signature_name = f"classify_{task.name}"
        example_input(request, rows)
        result = served.predict_stub.Classify(request, timeout=30).result
        scores = np.array([[c.score for c in r.classes] for r in result.classifications])
        labels = [c.label for c in result.classifications[0].classes]
        if task.type.value == "binary":
            assert labels == ["0", "1"]
            np.testing.assert_allclose(scores[:, 1], expected[task.name], rtol=1e-5)
        else:
            assert labels == task.classes
            np.testing.assert_allclose(scores, expected[task.name], rtol=1e-5)


def test_regress(served, rows, expected, tiny_spec):
    task = next(t for t in tiny_spec.tasks if t.type.value == "regression")
    request = regression_pb2.RegressionRequest()
    request.model_spec.name = served.model
    request.model_spec.signature_name = f"regress_{task.name}"
    example_input(request, rows)
    result = served.predict_stub.Regress(request, timeout=30).result
    np.testing.assert_allclose([r.value for r in result.regressions], expected[task.name], rtol=1e-5)


def test_multi_inference_runs_several_heads_on_one_input(served, rows, expected):
    request = inference_pb2.MultiInferenceRequest()
    for task in ("click", "churn"):
        t = request.tasks.add()
        t.model_spec.name = served.model
        t.model_spec.signature_name = f"classify_{task}"
        t.method_name = "tensorflow/serving/classify"
    example_input(request, rows)
    results = served.predict_stub.MultiInference(request, timeout=30).results
    assert [r.model_spec.signature_name for r in results] == ["classify_click", "classify_churn"]
    for result, task in zip(results, ("click", "churn")):
        got = [r.classes[1].score for r in result.classification_result.classifications]
        np.testing.assert_allclose(got, expected[task], rtol=1e-5)


def test_get_model_metadata_lists_every_signature(served, tiny_spec):
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    request.model_spec.name = served.model
    response = served.predict_stub.GetModelMetadata(request, timeout=30)
    signatures = get_model_metadata_pb2.SignatureDefMap()
    response.metadata["signature_def"].Unpack(signatures)
    names = set(signatures.signature_def)
    assert {"serving_default", "predict_raw"} <= names
    for task in tiny_spec.tasks:
        assert (f"regress_{task.name}" if task.type.value == "regression" else f"classify_{task.name}") in names
    assert set(signatures.signature_def["predict_raw"].inputs) == set(tiny_spec.features.all_columns())


def test_get_model_status(served):
    statuses = served.status().model_version_status
    assert any(s.state == get_model_status_pb2.ModelVersionStatus.AVAILABLE for s in statuses)


# --- errors ---------------------------------------------------------------------------------------
def _code(call, request):
    with pytest.raises(grpc.RpcError) as info:
        call(request, timeout=30)
    return info.value.code(), info.value.details()


@pytest.mark.parametrize("change,fragment", [
    ({"name": "no_such_model"}, "no_such_model"),
    ({"version": 999}, "999"),
    ({"version_label": "nope"}, "nope"),
    ({"signature_name": "no_such_signature"}, "no_such_signature"),
])
def test_unknown_model_version_label_signature_are_not_found(served, rows, change, fragment):
    spec = {k: v for k, v in change.items() if k != "signature_name"}
    request = predict_request(change.get("name", served.model), rows, change.get("signature_name", ""),
                              **{k: v for k, v in spec.items() if k != "name"})
    code, details = _code(served.predict_stub.Predict, request)
    assert code == grpc.StatusCode.NOT_FOUND
    assert fragment in details


def test_wrong_input_name_dtype_shape_and_bad_examples_are_invalid(served, rows):
    bad_name = predict_request(served.model, rows)
    bad_name.inputs["not_examples"].CopyFrom(bad_name.inputs.pop("examples"))
    bad_dtype = predict_request(served.model, rows)
    bad_dtype.inputs["examples"].CopyFrom(tf.make_tensor_proto([1, 2, 3], dtype=tf.int64))
    bad_shape = predict_request(served.model, rows)
    bad_shape.inputs["examples"].CopyFrom(tf.make_tensor_proto([rows], dtype=tf.string))
    garbage = predict_request(served.model, [b"\xff\x00 not an example"])
    for request in (bad_name, bad_dtype, bad_shape, garbage):
        code, details = _code(served.predict_stub.Predict, request)
        assert code == grpc.StatusCode.INVALID_ARGUMENT, details
    # ...and the server still answers afterwards.
    assert served.predict_stub.Predict(predict_request(served.model, rows), timeout=30).outputs


@ours_only
def test_oversized_request_is_resource_exhausted(served):
    big = predict_request(served.model, [b"x" * (MAX_MESSAGE + 1024)])
    code, _ = _code(served.predict_stub.Predict, big)
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_classify_on_a_predict_signature_is_invalid(served, rows):
    request = classification_pb2.ClassificationRequest()
    request.model_spec.name = served.model
    example_input(request, rows)
    code, details = _code(served.predict_stub.Classify, request)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "classify" in details


# --- REST -----------------------------------------------------------------------------------------
def _rest(served, path, body=None):
    if not served.rest:
        pytest.skip("no REST address given")
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(served.rest + path, data=data, method="POST" if body is not None else "GET")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_rest_predict_equals_grpc(served, rows, expected):
    import base64

    instances = [{"b64": base64.b64encode(r).decode()} for r in rows]
    status, body = _rest(served, f"/v1/models/{served.model}:predict", {"instances": instances})
    assert status == 200, body
    for name, value in expected.items():
        got = np.array([p[name] for p in body["predictions"]])
        np.testing.assert_allclose(got, value, rtol=1e-5, atol=1e-6)
    status, body = _rest(served, f"/v1/models/{served.model}:predict", {"inputs": instances})
    assert status == 200
    np.testing.assert_allclose(body["outputs"]["click"], expected["click"], rtol=1e-5)


def test_rest_predict_raw_with_named_json_features(served, tiny_spec, transformed):
    raw = transformed["raw"][:3]
    instances = []
    for r in raw:
        row = {}
        for c in tiny_spec.features.all_columns():
            v = r[c][0] if r[c] else b""
            row[c] = v.decode() if isinstance(v, bytes) else v
        instances.append(row)
    status, body = _rest(served, f"/v1/models/{served.model}:predict",
                         {"signature_name": "predict_raw", "instances": instances})
    assert status == 200, body
    assert len(body["predictions"]) == 3 and set(body["predictions"][0]) == {t.name for t in tiny_spec.tasks}


def test_rest_status_metadata_classify_regress(served, tiny_spec, transformed):
    status, body = _rest(served, f"/v1/models/{served.model}")
    assert status == 200 and body["model_version_status"][0]["state"] == "AVAILABLE"
    status, body = _rest(served, f"/v1/models/{served.model}/metadata")
    assert status == 200 and "serving_default" in body["metadata"]["signature_def"]["signature_def"]
    example = {"query": "wireless headphones", "item_title": "Wireless Headphones, Black", "channel": "search",
               "device": "app", "item_category": "electronics", "item_price": 59.9, "user_age": 31,
               "account_age_days": 400, "user_orders_90d": 2, "user_id": "u00001", "item_id": "i00001"}
    status, body = _rest(served, f"/v1/models/{served.model}:classify",
                         {"signature_name": "classify_click", "examples": [example, example]})
    assert status == 200, body
    assert [c[0] for c in body["results"][0]] == ["0", "1"]
    assert body["results"][0] == body["results"][1]
    status, body = _rest(served, f"/v1/models/{served.model}:regress",
                         {"signature_name": "regress_satisfaction", "examples": [example]})
    assert status == 200 and isinstance(body["results"][0], float)


def test_rest_errors_have_the_right_http_codes(served):
    assert _rest(served, "/v1/models/no_such_model")[0] == 404
    assert _rest(served, f"/v1/models/{served.model}/versions/999:predict", {"instances": [{"b64": ""}]})[0] == 404
    assert _rest(served, f"/v1/models/{served.model}:predict", {"nothing": 1})[0] == 400
    status, body = _rest(served, f"/v1/models/{served.model}:predict",
                         {"instances": [{"b64": "AAAA"}], "signature_name": "serving_default"})
    assert status == 400 and "error" in body


# --- versions -------------------------------------------------------------------------------------
@ours_only
def test_new_version_is_swapped_in_without_failed_requests(served, rows, trained_export):
    stop, failures, seen = threading.Event(), [], set()

    def loop():
        while not stop.is_set():
            try:
                response = served.predict_stub.Predict(predict_request(served.model, rows), timeout=30)
                seen.add(response.model_spec.version.value)
            except grpc.RpcError as err:
                failures.append(err.details())

    thread = threading.Thread(target=loop)
    thread.start()
    try:
        time.sleep(0.5)
        staging = served.base_path.parent / "staging"
        shutil.copytree(trained_export[1], staging)
        staging.rename(served.base_path / "2")  # appears atomically, as a Pusher's rename does
        served.wait_available(version=2)
        deadline = time.monotonic() + 30
        while 2 not in seen and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        stop.set()
        thread.join()
    assert failures == []
    assert {1, 2} <= seen


@ours_only
def test_a_broken_version_leaves_the_previous_one_serving(served, rows):
    latest = max(s.version for s in served.status().model_version_status if s.state == 30)
    broken = served.base_path / str(latest + 1)
    broken.mkdir()
    (broken / "saved_model.pb").write_bytes(b"this is not a SavedModel")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        statuses = {s.version: s for s in served.status().model_version_status}
        if latest + 1 in statuses and statuses[latest + 1].state == 50:
            break
        time.sleep(0.2)
    assert statuses[latest + 1].status.error_message, statuses
    response = served.predict_stub.Predict(predict_request(served.model, rows), timeout=30)
    assert response.model_spec.version.value == latest


# --- batching -------------------------------------------------------------------------------------
@ours_only
def test_batching_on_gives_the_same_outputs(tiny_spec, trained_export, tmp_path, rows, expected):
    base = tmp_path / tiny_spec.model_name
    shutil.copytree(trained_export[1], base / "1")
    config = tmp_path / "batching.config"
    config.write_text("max_batch_size { value: 16 }\nbatch_timeout_micros { value: 20000 }\n"
                      "num_batch_threads { value: 2 }\nmax_enqueued_batches { value: 10 }\n")
    server = start_server(base, tiny_spec.model_name, "--enable-batching", "--batching-parameters-file", str(config))
    try:
        results, errors = [None] * 8, []

        def call(i):
            try:
                response = server.predict_stub.Predict(predict_request(server.model, rows[i % 3: i % 3 + 2]), timeout=60)
                results[i] = {k: tf.make_ndarray(v) for k, v in response.outputs.items()}
            except grpc.RpcError as err:
                errors.append(err.details())

        threads = [threading.Thread(target=call, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        for i, result in enumerate(results):
            for name, value in expected.items():
                np.testing.assert_allclose(result[name], value[i % 3: i % 3 + 2], rtol=1e-5, atol=1e-6)
    finally:
        stop_server(server)


# --- the client -----------------------------------------------------------------------------------
def test_predict_command_reads_csv_rows_and_prints_every_task(served, tiny_spec, transformed, expected, tmp_path, capsys):
    import csv as csv_module

    from serving.client import main as predict_main

    with open(transformed["prepared_csv"], newline="") as f:
        rows = [r for _, r in zip(range(6), csv_module.DictReader(f))]
    path = tmp_path / "rows.csv"
    with open(path, "w", newline="") as f:
        writer = csv_module.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    assert predict_main(["--address", served.address, "--model", served.model, "--input", str(path)]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(lines) == 6 and set(lines[0]) == {t.name for t in tiny_spec.tasks}
    np.testing.assert_allclose([line["click"] for line in lines], expected["click"], rtol=1e-5)
    assert predict_main(["--address", served.address, "--model", served.model, "--input", str(path),
                         "--signature", "classify_click"]) == 0
    classified = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    np.testing.assert_allclose([c["scores"][1] for c in classified], expected["click"], rtol=1e-5)


def test_predict_command_reports_an_unknown_model(served, tmp_path, capsys):
    from serving.client import main as predict_main

    path = tmp_path / "rows.jsonl"
    path.write_text('{"query": "shoes"}\n')
    assert predict_main(["--address", served.address, "--model", "nope", "--input", str(path)]) == 1
    assert "NOT_FOUND" in capsys.readouterr().err
