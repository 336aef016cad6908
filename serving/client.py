"""A gRPC client for the TF Serving API (ours or the real one): rows in, every task's output back.

    commerce-mtl predict --address 127.0.0.1:8500 --model commerce --input rows.csv [--signature S]
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from pathlib import Path
from typing import Any, Iterable

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import grpc  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from tensorflow_serving.apis import (  # noqa: E402
    classification_pb2, get_model_metadata_pb2, get_model_status_pb2, predict_pb2,
    model_service_pb2_grpc, prediction_service_pb2_grpc, regression_pb2,
)

from models.export import EXAMPLES_INPUT, PREDICT_RAW_SIGNATURE  # noqa: E402
from serving.examples import to_examples  # noqa: E402


class ModelClient:
    """Thin, typed wrapper over the stock PredictionService / ModelService stubs."""

    def __init__(self, address: str, timeout: float = 30.0, max_message_bytes: int = 64 * 1024 * 1024):
        options = [("grpc.max_receive_message_length", max_message_bytes),
                   ("grpc.max_send_message_length", max_message_bytes)]
        self.channel = grpc.insecure_channel(address, options=options)
        self.predictions = prediction_service_pb2_grpc.PredictionServiceStub(self.channel)
        self.models = model_service_pb2_grpc.ModelServiceStub(self.channel)
        self.timeout = timeout

    def close(self) -> None:
        self.channel.close()

    def signature_defs(self, model: str, version: int | None = None) -> dict:
        request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
        request.model_spec.name = model
        if version is not None:
            request.model_spec.version.value = version
        response = self.predictions.GetModelMetadata(request, timeout=self.timeout)
        signature_map = get_model_metadata_pb2.SignatureDefMap()
        response.metadata["signature_def"].Unpack(signature_map)
        return dict(signature_map.signature_def)

    def raw_features(self, model: str, version: int | None = None) -> dict[str, str]:
        """{column: dtype} of the model's raw features, read from its `predict_raw` signature."""
        defs = self.signature_defs(model, version)
        if PREDICT_RAW_SIGNATURE not in defs:
            raise ValueError(f"model {model!r} has no {PREDICT_RAW_SIGNATURE!r} signature to read its features from")
        return {name: tf.as_dtype(info.dtype).name for name, info in defs[PREDICT_RAW_SIGNATURE].inputs.items()}

    def status(self, model: str) -> get_model_status_pb2.GetModelStatusResponse:
        request = get_model_status_pb2.GetModelStatusRequest()
        request.model_spec.name = model
        return self.models.GetModelStatus(request, timeout=self.timeout)

    def predict(self, model: str, inputs: dict[str, np.ndarray], signature: str = "",
                version: int | None = None, output_filter: Iterable[str] = ()) -> dict[str, np.ndarray]:
        request = predict_pb2.PredictRequest(output_filter=list(output_filter))
        request.model_spec.name = model
        request.model_spec.signature_name = signature
        if version is not None:
            request.model_spec.version.value = version
        for name, value in inputs.items():
            request.inputs[name].CopyFrom(tf.make_tensor_proto(value))
        response = self.predictions.Predict(request, timeout=self.timeout)
        return {k: tf.make_ndarray(v) for k, v in response.outputs.items()}

    def predict_rows(self, model: str, rows: list[dict[str, Any]], signature: str = "",
                     version: int | None = None) -> dict[str, np.ndarray]:
        """Rows of raw features (CSV / JSON values) -> every output of the signature."""
        features = self.raw_features(model, version)
        if signature == PREDICT_RAW_SIGNATURE:
            return self.predict(model, _columns(rows, features), signature, version)
        examples = to_examples(rows, features)
        if signature.startswith("classify_") or signature.startswith("regress_"):
            return self._classify_or_regress(model, examples, signature, version)
        return self.predict(model, {EXAMPLES_INPUT: np.array(examples, dtype=object)}, signature, version)

    def _classify_or_regress(self, model, examples, signature, version) -> dict[str, np.ndarray]:
        classify = signature.startswith("classify_")
        request = (classification_pb2.ClassificationRequest() if classify else regression_pb2.RegressionRequest())
        request.model_spec.name = model
        request.model_spec.signature_name = signature
        if version is not None:
            request.model_spec.version.value = version
        for example in examples:
            request.input.example_list.examples.add().ParseFromString(example)
        if classify:
            result = self.predictions.Classify(request, timeout=self.timeout).result
            return {"classes": np.array([[c.label for c in r.classes] for r in result.classifications]),
                    "scores": np.array([[c.score for c in r.classes] for r in result.classifications])}
        result = self.predictions.Regress(request, timeout=self.timeout).result
        return {"outputs": np.array([r.value for r in result.regressions])}


def _columns(rows: list[dict[str, Any]], features: dict[str, str]) -> dict[str, np.ndarray]:
    """Columnar named tensors for `predict_raw`; it takes every feature, so an empty text is ""."""
    columns = {}
    for name, dtype in features.items():
        values = [row.get(name, "") for row in rows]
        if dtype == "string":
            columns[name] = np.array([("" if v is None else str(v)).encode() for v in values], dtype=object)
        else:
            missing = [i + 1 for i, v in enumerate(values) if v in ("", None)]
            if missing:
                raise ValueError(f"predict_raw needs a value for numeric column {name!r}; rows {missing[:5]} have none")
            columns[name] = np.array([float(v) for v in values], dtype=dtype)
    return columns


def read_rows(path: Path) -> list[dict[str, Any]]:
    if path.suffix == ".jsonl":
        rows = []
        for i, line in enumerate(path.read_text().splitlines(), start=1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as err:
                    raise ValueError(f"{path}: line {i} is not JSON: {err}") from None
        return rows
    if path.suffix == ".csv":
        with open(path, newline="") as f:
            return list(csv.DictReader(f))
    raise ValueError(f"{path}: expected a .csv or .jsonl file")


def per_row(outputs: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    rows = len(next(iter(outputs.values())))
    def value(v):
        v = np.asarray(v).tolist()  # numpy scalars and arrays -> plain JSON values
        if isinstance(v, list):
            return [x.decode() if isinstance(x, bytes) else x for x in v]
        return v.decode() if isinstance(v, bytes) else v
    return [{k: value(v[i]) for k, v in outputs.items()} for i in range(rows)]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="commerce-mtl predict", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--address", default="127.0.0.1:8500")
    p.add_argument("--model", required=True)
    p.add_argument("--version", type=int)
    p.add_argument("--signature", default="", help="serving_default (default), predict_raw, classify_T, regress_T")
    p.add_argument("--input", required=True, type=Path, help="rows as .csv (header) or .jsonl")
    p.add_argument("--output", type=Path, help="write JSON lines here instead of printing")
    args = p.parse_args(argv)
    client = ModelClient(args.address)
    try:
        rows = read_rows(args.input)
        outputs = client.predict_rows(args.model, rows, args.signature, args.version)
    except (ValueError, FileNotFoundError) as err:
        print(f"commerce-mtl predict: error: {err}", file=sys.stderr)
        return 2
    except grpc.RpcError as err:
        print(f"commerce-mtl predict: {err.code().name}: {err.details()}", file=sys.stderr)
        return 1
    finally:
        client.close()
    lines = [json.dumps(r) for r in per_row(outputs)]
    if args.output:
        args.output.write_text("\n".join(lines) + "\n")
        print(f"wrote {len(lines)} predictions to {args.output}")
    else:
        print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
