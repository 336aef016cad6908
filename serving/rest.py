"""TF Serving's REST API (`/v1/models/...`) over the same Runtime as the gRPC API."""
from __future__ import annotations

import base64
import json
import logging
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import grpc
import numpy as np
import tensorflow as tf
from google.protobuf import json_format
from tensorflow_serving.apis import input_pb2, model_pb2

from serving.errors import ServingError, invalid, not_found
from serving.grpc_service import classify, regress, status_response

log = logging.getLogger(__name__)

_PATH = re.compile(
    r"^/v1/models/(?P<name>[^/:]+)"
    r"(?:/versions/(?P<version>\d+)|/labels/(?P<label>[^/:]+))?"
    r"(?P<action>/metadata|:predict|:classify|:regress)?$"
)
MAX_BODY_BYTES = 64 * 1024 * 1024


def _decode_value(value: Any) -> Any:
    if isinstance(value, dict):
        if set(value) == {"b64"}:
            return base64.b64decode(value["b64"])
        raise invalid(f"an object in a tensor value must be {{\"b64\": ...}}, got keys {sorted(value)}")
    if isinstance(value, list):
        return [_decode_value(v) for v in value]
    return value.encode() if isinstance(value, str) else value


def _to_array(name: str, value: Any) -> np.ndarray:
    value = _decode_value(value)
    try:
        array = np.array(value, dtype=object if _has_bytes(value) else None)
    except ValueError as err:
        raise invalid(f"input {name!r} is ragged or malformed: {err}") from None
    if array.dtype == object and not _has_bytes(value):
        raise invalid(f"input {name!r} is ragged: every row must have the same shape")
    return array


def _has_bytes(value: Any) -> bool:
    if isinstance(value, list):
        return any(_has_bytes(v) for v in value)
    return isinstance(value, bytes)


def predict_inputs(body: dict, input_names: list[str]) -> tuple[dict[str, np.ndarray], bool]:
    """(inputs, row format?) from a :predict body in the `instances` (row) or `inputs` (columnar) format."""
    if ("instances" in body) == ("inputs" in body):
        raise invalid("the request body needs exactly one of 'instances' (row format) or 'inputs' (columnar)")
    if "instances" in body:
        rows = body["instances"]
        if not isinstance(rows, list) or not rows:
            raise invalid("'instances' must be a non-empty list")
        if all(isinstance(r, dict) and set(r) != {"b64"} for r in rows):
            keys = set(rows[0])
            if any(set(r) != keys for r in rows):
                raise invalid("every instance must name the same inputs")
            return {k: _to_array(k, [r[k] for r in rows]) for k in keys}, True
        if len(input_names) != 1:
            raise invalid(f"instances without names need a signature with one input; this one takes {input_names}")
        return {input_names[0]: _to_array(input_names[0], rows)}, True
    columns = body["inputs"]
    if isinstance(columns, dict):
        return {k: _to_array(k, v) for k, v in columns.items()}, False
    if len(input_names) != 1:
        raise invalid(f"unnamed 'inputs' need a signature with one input; this one takes {input_names}")
    return {input_names[0]: _to_array(input_names[0], columns)}, False


def _jsonable(array: np.ndarray) -> Any:
    if array.dtype == object or array.dtype.kind in "SU":
        return np.vectorize(lambda b: b.decode("utf-8", "replace") if isinstance(b, bytes) else str(b),
                            otypes=[object])(array).tolist()
    return array.tolist()


def predict_response(outputs: dict[str, np.ndarray], row_format: bool) -> dict:
    if not row_format:
        if len(outputs) == 1:
            return {"outputs": _jsonable(next(iter(outputs.values())))}
        return {"outputs": {k: _jsonable(v) for k, v in outputs.items()}}
    if len(outputs) == 1:
        return {"predictions": _jsonable(next(iter(outputs.values())))}
    columns = {k: _jsonable(v) for k, v in outputs.items()}
    rows = len(next(iter(columns.values())))
    return {"predictions": [{k: v[i] for k, v in columns.items()} for i in range(rows)]}


def _feature(name: str, value: Any) -> tf.train.Feature:
    values = value if isinstance(value, list) else [value]
    values = [_decode_value(v) for v in values]
    if all(isinstance(v, bytes) for v in values):
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=values))
    if all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        return tf.train.Feature(int64_list=tf.train.Int64List(value=values))
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        return tf.train.Feature(float_list=tf.train.FloatList(value=values))
    raise invalid(f"feature {name!r}: values must all be strings, all integers or all numbers, got {value!r}")


def json_example(obj: dict) -> tf.train.Example:
    if not isinstance(obj, dict):
        raise invalid(f"an example must be a JSON object of features, got {type(obj).__name__}")
    return tf.train.Example(features=tf.train.Features(
        feature={k: _feature(k, v) for k, v in obj.items() if v is not None and v != []}))


def examples_input(body: dict) -> input_pb2.Input:
    examples = body.get("examples")
    if not isinstance(examples, list) or not examples:
        raise invalid("the request body needs a non-empty 'examples' list")
    model_input = input_pb2.Input()
    if "context" in body:
        target = model_input.example_list_with_context
        target.context.CopyFrom(json_example(body["context"]))
    else:
        target = model_input.example_list
    for example in examples:
        target.examples.add().CopyFrom(json_example(example))
    return model_input


class RestHandler(BaseHTTPRequestHandler):
    runtime = None  # set by make_rest_server
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):  # route access logs to logging, not stderr
        log.debug("rest: " + fmt, *args)

    def _send(self, status: int, payload: dict) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _route(self, method: str):
        match = _PATH.match(self.path.split("?")[0])
        if not match:
            raise not_found(f"no such endpoint: {method} {self.path}")
        spec = model_pb2.ModelSpec(name=match["name"])
        if match["version"]:
            spec.version.value = int(match["version"])
        if match["label"]:
            spec.version_label = match["label"]
        return spec, match["action"]

    def do_GET(self):
        self._handle("GET")

    def do_POST(self):
        self._handle("POST")

    def _handle(self, method: str) -> None:
        try:
            self._send(200, self._dispatch(method))
        except ServingError as err:
            self._send(err.http_status, {"error": err.message})
        except Exception as err:  # noqa: BLE001 - the server must survive any request
            log.exception("REST request failed")
            self._send(500, {"error": f"{type(err).__name__}: {err}"})

    def _body(self) -> dict:
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY_BYTES:
            raise ServingError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                               f"request body of {length} bytes exceeds the limit of {MAX_BODY_BYTES}")
        try:
            body = json.loads(self.rfile.read(length) or b"{}")
        except json.JSONDecodeError as err:
            raise invalid(f"the request body is not valid JSON: {err}") from None
        if not isinstance(body, dict):
            raise invalid("the request body must be a JSON object")
        return body

    def _dispatch(self, method: str) -> dict:
        spec, action = self._route(method)
        runtime = self.runtime
        if method == "GET" and action is None:
            version = spec.version.value if spec.HasField("version") else None
            if spec.version_label:
                version = runtime.resolve(spec).version
            return json_format.MessageToDict(status_response(runtime.manager, spec.name, version),
                                             including_default_value_fields=True)
        if method == "GET" and action == "/metadata":
            servable = runtime.resolve(spec)
            defs = {k: json_format.MessageToDict(v) for k, v in servable.signature_defs.items()}
            return {"model_spec": {"name": servable.name, "signature_name": "", "version": str(servable.version)},
                    "metadata": {"signature_def": {"signature_def": defs}}}
        if method != "POST" or action not in (":predict", ":classify", ":regress"):
            raise not_found(f"no such endpoint: {method} {self.path}")
        body = self._body()
        servable = runtime.resolve(spec)
        signature = body.get("signature_name", "")
        if action == ":predict":
            _, sig = servable.signature(signature or "serving_default")
            inputs, rows = predict_inputs(body, sorted(sig.inputs))
            return predict_response(runtime.run(servable, signature, inputs), rows)
        if action == ":classify":
            result = classify(runtime, servable, signature, examples_input(body))
            return {"results": [[[c.label, c.score] for c in row.classes] for row in result.classifications]}
        result = regress(runtime, servable, signature, examples_input(body))
        return {"results": [r.value for r in result.regressions]}


def make_rest_server(host: str, port: int, runtime) -> ThreadingHTTPServer:
    handler = type("BoundRestHandler", (RestHandler,), {"runtime": runtime})
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    return server


def serve_in_thread(server: ThreadingHTTPServer) -> threading.Thread:
    thread = threading.Thread(target=server.serve_forever, name="rest", daemon=True)
    thread.start()
    return thread
