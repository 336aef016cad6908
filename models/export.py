"""The exported SavedModel: raw features in, every task out, with the Transform graph inside.

Signatures (all derived from the spec):
- `serving_default`: serialized tf.Examples (`examples`) -> every task by name.
- `classify_<task>` (binary, multiclass; method tensorflow/serving/classify): `inputs` -> `classes`, `scores`.
- `regress_<task>` (regression; method tensorflow/serving/regress): `inputs` -> `outputs`.
- `predict_raw`: one named tensor per raw feature (friendly to REST/JSON clients) -> every task.
- `transform_features`: serialized tf.Examples with labels -> transformed features (for the Evaluator).
"""
from __future__ import annotations

import json
import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import tensorflow as tf  # noqa: E402
import tensorflow_transform as tft  # noqa: E402
from tensorflow.core.protobuf import saved_model_pb2  # noqa: E402

from models import features  # noqa: E402
from models.multitask import MultiTaskModel  # noqa: E402
from models.spec import ProjectSpec, TaskType  # noqa: E402

EXAMPLES_INPUT = "examples"
TRANSFORM_SIGNATURE = "transform_features"
PREDICT_RAW_SIGNATURE = "predict_raw"
CLASSIFY_METHOD = "tensorflow/serving/classify"
REGRESS_METHOD = "tensorflow/serving/regress"
# Written beside the SavedModel so a client can build tf.Examples knowing only the model directory.
RAW_FEATURES_FILE = "assets.extra/raw_features.json"
WARMUP_FILE = "assets.extra/tf_serving_warmup_requests"


def serving_feature_spec(tf_transform_output: tft.TFTransformOutput, spec: ProjectSpec) -> dict:
    """The raw parsing spec a request is read with: the declared feature columns, never labels."""
    raw = tf_transform_output.raw_feature_spec()
    return {c: raw[c] for c in features.raw_feature_columns(spec)}


def classify_signature_name(task: str) -> str:
    return f"classify_{task}"


def regress_signature_name(task: str) -> str:
    return f"regress_{task}"


def _examples_spec(name: str) -> tf.TensorSpec:
    return tf.TensorSpec([None], tf.string, name=name)


class ServingModule(tf.Module):
    """Holds the Transform layer and the trained network so both are saved in one SavedModel."""

    def __init__(self, model: MultiTaskModel, tf_transform_output: tft.TFTransformOutput, spec: ProjectSpec):
        super().__init__(name="commerce_mtl")
        self.model = model
        self.tft_layer = tf_transform_output.transform_features_layer()
        self._serving_spec = serving_feature_spec(tf_transform_output, spec)
        self._full_spec = tf_transform_output.raw_feature_spec()
        self._input_keys = list(model.network.input_names)

    def _predict_from_raw(self, raw: dict) -> dict:
        transformed = self.tft_layer(raw)
        return self.model({k: transformed[k] for k in self._input_keys}, training=False)

    def _predict_examples(self, examples) -> dict:
        return self._predict_from_raw(tf.io.parse_example(examples, self._serving_spec))

    @tf.function(input_signature=[_examples_spec(EXAMPLES_INPUT)])
    def serve_examples(self, examples):
        return self._predict_examples(examples)

    @tf.function(input_signature=[_examples_spec(EXAMPLES_INPUT)])
    def transform_features(self, examples):
        # Used by the Evaluator: labels and masks come out transformed, exactly as the Trainer saw them.
        return self.tft_layer(tf.io.parse_example(examples, self._full_spec))

    def raw_signature(self) -> list[tf.TensorSpec]:
        return [tf.TensorSpec([None], f.dtype, name=name) for name, f in self._serving_spec.items()]

    def predict_raw(self, *columns):
        raw = {}
        for (name, _), values in zip(self._serving_spec.items(), columns):
            # The Transform graph reads every raw feature as a [batch, 1] sparse (VarLen) tensor.
            batch = tf.shape(values, out_type=tf.int64)[0]
            indices = tf.stack([tf.range(batch), tf.zeros([batch], tf.int64)], axis=1)
            raw[name] = tf.SparseTensor(indices, values, tf.stack([batch, tf.constant(1, tf.int64)]))
        return self._predict_from_raw(raw)


def _classify_fn(module: ServingModule, task_name: str, classes: list[str], binary: bool):
    @tf.function(input_signature=[_examples_spec(tf.saved_model.CLASSIFY_INPUTS)])
    def classify(inputs):
        out = module._predict_examples(inputs)[task_name]
        scores = tf.stack([1.0 - out, out], axis=1) if binary else out
        labels = tf.tile(tf.constant([classes]), [tf.shape(scores)[0], 1])
        return {tf.saved_model.CLASSIFY_OUTPUT_CLASSES: labels, tf.saved_model.CLASSIFY_OUTPUT_SCORES: scores}
    return classify


def _regress_fn(module: ServingModule, task_name: str):
    @tf.function(input_signature=[_examples_spec(tf.saved_model.REGRESS_INPUTS)])
    def regress(inputs):
        return {tf.saved_model.REGRESS_OUTPUTS: module._predict_examples(inputs)[task_name]}
    return regress


def _task_signatures(module: ServingModule, spec: ProjectSpec) -> tuple[dict, dict]:
    """(signatures, {signature name: method name}) for the per-task classify / regress signatures."""
    signatures, methods = {}, {}
    for task in spec.tasks:
        if task.type == TaskType.REGRESSION:
            name = regress_signature_name(task.name)
            signatures[name] = _regress_fn(module, task.name).get_concrete_function()
            methods[name] = REGRESS_METHOD
        else:
            name = classify_signature_name(task.name)
            binary = task.type == TaskType.BINARY
            classes = ["0", "1"] if binary else list(task.classes)
            signatures[name] = _classify_fn(module, task.name, classes, binary).get_concrete_function()
            methods[name] = CLASSIFY_METHOD
    return signatures, methods


def _set_method_names(export_dir: str, methods: dict[str, str]) -> None:
    # tf.saved_model.save marks every signature "predict"; TF Serving's Classify and Regress APIs
    # accept only signatures with their own method names, so those are rewritten in the proto.
    path = os.path.join(export_dir, "saved_model.pb")
    saved_model = saved_model_pb2.SavedModel.FromString(tf.io.gfile.GFile(path, "rb").read())
    for meta_graph in saved_model.meta_graphs:
        for name, method in methods.items():
            meta_graph.signature_def[name].method_name = method
    with tf.io.gfile.GFile(path, "wb") as f:
        f.write(saved_model.SerializeToString())


def export_serving_model(
    model: MultiTaskModel,
    tf_transform_output: tft.TFTransformOutput,
    spec: ProjectSpec,
    export_dir: str,
    warmup_examples: list[bytes] | None = None,
) -> None:
    module = ServingModule(model, tf_transform_output, spec)
    predict_raw = tf.function(module.predict_raw, input_signature=module.raw_signature())
    task_signatures, methods = _task_signatures(module, spec)
    signatures = {
        "serving_default": module.serve_examples.get_concrete_function(),
        TRANSFORM_SIGNATURE: module.transform_features.get_concrete_function(),
        PREDICT_RAW_SIGNATURE: predict_raw.get_concrete_function(),
        **task_signatures,
    }
    tf.saved_model.save(module, export_dir, signatures=signatures)
    _set_method_names(export_dir, methods)
    _write_raw_features(module._serving_spec, export_dir)
    if warmup_examples:
        write_warmup_requests(export_dir, spec.model_name, warmup_examples)


def _write_raw_features(feature_spec: dict, export_dir: str) -> None:
    described = {name: {"dtype": f.dtype.name, "kind": type(f).__name__} for name, f in feature_spec.items()}
    path = os.path.join(export_dir, RAW_FEATURES_FILE)
    tf.io.gfile.makedirs(os.path.dirname(path))
    with tf.io.gfile.GFile(path, "w") as f:
        json.dump(described, f, indent=1, sort_keys=True)


def write_warmup_requests(export_dir: str, model_name: str, examples: list[bytes]) -> None:
    """TF Serving's warmup file: PredictionLogs replayed before a version is marked AVAILABLE."""
    from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

    request = predict_pb2.PredictRequest()
    request.model_spec.name = model_name
    request.model_spec.signature_name = "serving_default"
    request.inputs[EXAMPLES_INPUT].CopyFrom(tf.make_tensor_proto(examples, dtype=tf.string))
    log = prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request))
    path = os.path.join(export_dir, WARMUP_FILE)
    tf.io.gfile.makedirs(os.path.dirname(path))
    with tf.io.TFRecordWriter(path) as writer:
        writer.write(log.SerializeToString())
