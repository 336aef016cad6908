"""The TF Serving gRPC API (PredictionService, ModelService) over a ModelManager.

Implements the servicers generated in tensorflow-serving-api, so the stock stubs work unchanged.
"""
from __future__ import annotations

import logging

import grpc
import numpy as np
import tensorflow as tf
from google.protobuf import any_pb2, text_format
from tensorflow_serving.apis import (
    classification_pb2, get_model_metadata_pb2, get_model_status_pb2, inference_pb2, model_pb2,
    model_management_pb2, model_service_pb2_grpc, predict_pb2, prediction_service_pb2_grpc, regression_pb2,
)

from models.export import CLASSIFY_METHOD, REGRESS_METHOD
from serving.errors import ServingError, invalid
from serving.examples_input import examples_from_input
from serving.model_config import parse_model_config
from serving.servable import DEFAULT_SIGNATURE, Servable

log = logging.getLogger(__name__)


def _abort_on_error(method):
    """Maps ServingError to its gRPC status; anything else is INTERNAL, and the server lives on."""
    def wrapper(self, request, context):
        try:
            return method(self, request, context)
        except ServingError as err:
            context.abort(err.code, err.message)
        except Exception as err:  # noqa: BLE001
            log.exception("unexpected error in %s", method.__name__)
            context.abort(grpc.StatusCode.INTERNAL, f"{type(err).__name__}: {err}")
    wrapper.__name__ = method.__name__
    return wrapper


class Runtime:
    """What the servicers share: the manager and (optionally) dynamic batching."""

    def __init__(self, manager, batching=None):
        self.manager = manager
        self.batching = batching

    def resolve(self, spec: model_pb2.ModelSpec) -> Servable:
        if not spec.name:
            raise invalid("model_spec.name is empty")
        which = spec.WhichOneof("version_choice")
        version = spec.version.value if which == "version" else None
        label = spec.version_label if which == "version_label" else None
        return self.manager.resolve(spec.name, version, label)

    def run(self, servable: Servable, signature: str, inputs: dict, output_filter=()) -> dict[str, np.ndarray]:
        if self.batching is not None:
            return self.batching.run(servable, signature or DEFAULT_SIGNATURE, inputs, tuple(output_filter))
        return servable.run(signature or DEFAULT_SIGNATURE, inputs, tuple(output_filter))


def _fill_spec(target: model_pb2.ModelSpec, servable: Servable, signature: str) -> None:
    target.name = servable.name
    target.version.value = servable.version
    target.signature_name = signature or DEFAULT_SIGNATURE


def _to_ndarray(name: str, proto) -> np.ndarray:
    try:
        return tf.make_ndarray(proto)
    except Exception as err:  # noqa: BLE001
        raise invalid(f"input {name!r} is not a valid TensorProto: {err}") from None


def _check_method(servable: Servable, signature: str, method: str) -> str:
    signature = signature or DEFAULT_SIGNATURE
    _, sig = servable.signature(signature)
    if sig.method_name != method:
        raise invalid(f"signature {signature!r} has method {sig.method_name!r}, not {method!r}; "
                      f"signatures with that method: "
                      f"{sorted(k for k, v in servable.signature_defs.items() if v.method_name == method)}")
    return signature


def classify(runtime: Runtime, servable: Servable, signature: str, model_input) -> classification_pb2.ClassificationResult:
    signature = _check_method(servable, signature, CLASSIFY_METHOD)
    examples = examples_from_input(model_input)
    out = runtime.run(servable, signature, {tf.saved_model.CLASSIFY_INPUTS: examples})
    scores = out.get(tf.saved_model.CLASSIFY_OUTPUT_SCORES)
    classes = out.get(tf.saved_model.CLASSIFY_OUTPUT_CLASSES)
    result = classification_pb2.ClassificationResult()
    for i in range(len(examples)):
        row = result.classifications.add()
        width = scores.shape[1] if scores is not None else classes.shape[1]
        for j in range(width):
            entry = row.classes.add()
            if classes is not None:
                entry.label = classes[i][j].decode() if isinstance(classes[i][j], bytes) else str(classes[i][j])
            if scores is not None:
                entry.score = float(scores[i][j])
    return result


def regress(runtime: Runtime, servable: Servable, signature: str, model_input) -> regression_pb2.RegressionResult:
    signature = _check_method(servable, signature, REGRESS_METHOD)
    examples = examples_from_input(model_input)
    values = runtime.run(servable, signature, {tf.saved_model.REGRESS_INPUTS: examples})[tf.saved_model.REGRESS_OUTPUTS]
    result = regression_pb2.RegressionResult()
    for value in np.reshape(values, [len(examples), -1])[:, 0]:
        result.regressions.add().value = float(value)
    return result


class PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
    def __init__(self, runtime: Runtime):
        self.runtime = runtime

    @_abort_on_error
    def Predict(self, request, context):
        servable = self.runtime.resolve(request.model_spec)
        inputs = {k: _to_ndarray(k, v) for k, v in request.inputs.items()}
        outputs = self.runtime.run(servable, request.model_spec.signature_name, inputs, request.output_filter)
        response = predict_pb2.PredictResponse()
        _fill_spec(response.model_spec, servable, request.model_spec.signature_name)
        for name, value in outputs.items():
            response.outputs[name].CopyFrom(tf.make_tensor_proto(value))
        return response

    def _on_examples(self, request, run, response_type):
        """Classify and Regress: resolve, run on the request's tf.Examples, echo the model spec."""
        servable = self.runtime.resolve(request.model_spec)
        signature = request.model_spec.signature_name
        response = response_type(result=run(self.runtime, servable, signature, request.input))
        _fill_spec(response.model_spec, servable, signature)
        return response

    @_abort_on_error
    def Classify(self, request, context):
        return self._on_examples(request, classify, classification_pb2.ClassificationResponse)

    @_abort_on_error
    def Regress(self, request, context):
        return self._on_examples(request, regress, regression_pb2.RegressionResponse)

    @_abort_on_error
    def MultiInference(self, request, context):
        if not request.tasks:
            raise invalid("MultiInference needs at least one task")
        names = {(t.model_spec.name, t.model_spec.version.value) for t in request.tasks}
        if len(names) != 1:
            raise invalid(f"every MultiInference task must name the same model and version, got {sorted(names)}")
        response = inference_pb2.MultiInferenceResponse()
        for task in request.tasks:
            servable = self.runtime.resolve(task.model_spec)
            result = response.results.add()
            _fill_spec(result.model_spec, servable, task.model_spec.signature_name)
            if task.method_name == CLASSIFY_METHOD:
                result.classification_result.CopyFrom(
                    classify(self.runtime, servable, task.model_spec.signature_name, request.input))
            elif task.method_name == REGRESS_METHOD:
                result.regression_result.CopyFrom(
                    regress(self.runtime, servable, task.model_spec.signature_name, request.input))
            else:
                raise invalid(f"MultiInference supports {CLASSIFY_METHOD!r} and {REGRESS_METHOD!r}, "
                              f"not {task.method_name!r}")
        return response

    @_abort_on_error
    def GetModelMetadata(self, request, context):
        fields = list(request.metadata_field)
        if fields != ["signature_def"]:
            raise invalid(f"metadata_field must be ['signature_def'], got {fields}")
        servable = self.runtime.resolve(request.model_spec)
        signature_map = get_model_metadata_pb2.SignatureDefMap()
        for name, sig in servable.signature_defs.items():
            signature_map.signature_def[name].CopyFrom(sig)
        packed = any_pb2.Any()
        packed.Pack(signature_map)
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        _fill_spec(response.model_spec, servable, "")
        response.model_spec.ClearField("signature_name")
        response.metadata["signature_def"].CopyFrom(packed)
        return response


def status_response(manager, name: str, version: int | None) -> get_model_status_pb2.GetModelStatusResponse:
    response = get_model_status_pb2.GetModelStatusResponse()
    for v, status in manager.statuses(name, version):
        entry = response.model_version_status.add()
        entry.version = v
        entry.state = status.state
        entry.status.error_code = 2 if status.error else 0  # tensorflow.error.Code UNKNOWN / OK
        entry.status.error_message = status.error
    return response


class ModelService(model_service_pb2_grpc.ModelServiceServicer):
    def __init__(self, runtime: Runtime):
        self.runtime = runtime

    @_abort_on_error
    def GetModelStatus(self, request, context):
        spec = request.model_spec
        if not spec.name:
            raise invalid("model_spec.name is empty")
        version = spec.version.value if spec.HasField("version") else None
        return status_response(self.runtime.manager, spec.name, version)

    @_abort_on_error
    def HandleReloadConfigRequest(self, request, context):
        if request.config.WhichOneof("config") != "model_config_list":
            raise invalid("only model_config_list configurations are supported")
        text = text_format.MessageToString(request.config)
        try:
            entries = parse_model_config(text, "<reload request>")
        except ValueError as err:
            raise invalid(str(err)) from None
        self.runtime.manager.reload(entries)
        return model_management_pb2.ReloadConfigResponse()


def add_services(server: grpc.Server, runtime: Runtime) -> None:
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(PredictionService(runtime), server)
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelService(runtime), server)
