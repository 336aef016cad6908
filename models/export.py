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


class ServableModule(tf.Module):
    """What the exported signatures are built from, whatever computes the predictions.

    A single trained model (`ServingModule`) and a fusion of several SavedModels
    (`models/ensemble.py`) both export through `export_module`, so they expose the same signatures,
    output names, method names and assets.extra files, and the Evaluator, Pusher and server need not
    know which one they hold. Subclasses implement the three functions and `raw_features`.
    """

    def predict_examples(self, examples: tf.Tensor) -> dict[str, tf.Tensor]:
        """Serialized tf.Examples [batch] -> {task: output}."""
        raise NotImplementedError

    def predict_columns(self, columns: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        """{raw feature: dense [batch] tensor} (the `predict_raw` inputs) -> {task: output}."""
        raise NotImplementedError

    def transform_examples(self, examples: tf.Tensor) -> dict[str, tf.Tensor]:
        """Serialized tf.Examples with labels -> transformed features, labels and masks."""
        raise NotImplementedError

    @property
    def raw_features(self) -> dict[str, dict[str, str]]:
        """{raw feature: {"dtype", "kind"}}: the `predict_raw` inputs and assets.extra/raw_features.json."""
        raise NotImplementedError


def describe_feature_spec(feature_spec: dict) -> dict[str, dict[str, str]]:
    return {name: {"dtype": f.dtype.name, "kind": type(f).__name__} for name, f in feature_spec.items()}


class ServingModule(ServableModule):
    """Holds the Transform layer and the trained network so both are saved in one SavedModel."""

    def __init__(self, model: MultiTaskModel, tf_transform_output: tft.TFTransformOutput, spec: ProjectSpec):
        super().__init__(name="commerce_mtl")
        self.model = model
        self.tft_layer = tf_transform_output.transform_features_layer()
        self._serving_spec = serving_feature_spec(tf_transform_output, spec)
        self._full_spec = tf_transform_output.raw_feature_spec()
        self._input_keys = list(model.network.input_names)

    @property
    def raw_features(self) -> dict[str, dict[str, str]]:
        return describe_feature_spec(self._serving_spec)

    def _predict_from_raw(self, raw: dict) -> dict:
        transformed = self.tft_layer(raw)
        return self.model({k: transformed[k] for k in self._input_keys}, training=False)

    def predict_examples(self, examples: tf.Tensor) -> dict[str, tf.Tensor]:
        return self._predict_from_raw(tf.io.parse_example(examples, self._serving_spec))

    def transform_examples(self, examples: tf.Tensor) -> dict[str, tf.Tensor]:
        # Used by the Evaluator: labels and masks come out transformed, exactly as the Trainer saw them.
        return self.tft_layer(tf.io.parse_example(examples, self._full_spec))

    def predict_columns(self, columns: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        raw = {}
        for name, values in columns.items():
            # The Transform graph reads every raw feature as a [batch, 1] sparse (VarLen) tensor.
            batch = tf.shape(values, out_type=tf.int64)[0]
            indices = tf.stack([tf.range(batch), tf.zeros([batch], tf.int64)], axis=1)
            raw[name] = tf.SparseTensor(indices, values, tf.stack([batch, tf.constant(1, tf.int64)]))
        return self._predict_from_raw(raw)


def _classify_fn(module: ServableModule, task_name: str, classes: list[str], binary: bool):
    @tf.function(input_signature=[_examples_spec(tf.saved_model.CLASSIFY_INPUTS)])
    def classify(inputs):
        out = module.predict_examples(inputs)[task_name]
        scores = tf.stack([1.0 - out, out], axis=1) if binary else out
        labels = tf.tile(tf.constant([classes]), [tf.shape(scores)[0], 1])
        return {tf.saved_model.CLASSIFY_OUTPUT_CLASSES: labels, tf.saved_model.CLASSIFY_OUTPUT_SCORES: scores}
    return classify


def _regress_fn(module: ServableModule, task_name: str):
    @tf.function(input_signature=[_examples_spec(tf.saved_model.REGRESS_INPUTS)])
    def regress(inputs):
        return {tf.saved_model.REGRESS_OUTPUTS: module.predict_examples(inputs)[task_name]}
    return regress


def _task_signatures(module: ServableModule, spec: ProjectSpec) -> tuple[dict, dict]:
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


def _serve_examples_fn(module: ServableModule):
    @tf.function(input_signature=[_examples_spec(EXAMPLES_INPUT)])
    def serve_examples(examples):
        return module.predict_examples(examples)
    return serve_examples


def _transform_fn(module: ServableModule):
    @tf.function(input_signature=[_examples_spec(EXAMPLES_INPUT)])
    def transform_features(examples):
        return module.transform_examples(examples)
    return transform_features


def raw_input_signature(raw_features: dict[str, dict[str, str]]) -> list[tf.TensorSpec]:
    """One dense [batch] tensor per raw feature, named after it (friendly to REST/JSON clients)."""
    return [tf.TensorSpec([None], tf.as_dtype(d["dtype"]), name=name) for name, d in raw_features.items()]


def _predict_raw_fn(module: ServableModule):
    names = list(module.raw_features)

    def predict_raw(*columns):
        return module.predict_columns(dict(zip(names, columns)))
    return tf.function(predict_raw, input_signature=raw_input_signature(module.raw_features))


def export_module(
    module: ServableModule,
    spec: ProjectSpec,
    export_dir: str,
    warmup_examples: list[bytes] | None = None,
) -> None:
    """Saves `module` with the full signature set, TF Serving method names and assets.extra files."""
    task_signatures, methods = _task_signatures(module, spec)
    signatures = {
        "serving_default": _serve_examples_fn(module).get_concrete_function(),
        TRANSFORM_SIGNATURE: _transform_fn(module).get_concrete_function(),
        PREDICT_RAW_SIGNATURE: _predict_raw_fn(module).get_concrete_function(),
        **task_signatures,
    }
    tf.saved_model.save(module, export_dir, signatures=signatures)
    _set_method_names(export_dir, methods)
    _write_raw_features(module.raw_features, export_dir)
    if warmup_examples:
        write_warmup_requests(export_dir, spec.model_name, warmup_examples)


def export_serving_model(
    model: MultiTaskModel,
    tf_transform_output: tft.TFTransformOutput,
    spec: ProjectSpec,
    export_dir: str,
    warmup_examples: list[bytes] | None = None,
) -> None:
    """The Trainer's export: one trained network behind the Transform graph."""
    export_module(ServingModule(model, tf_transform_output, spec), spec, export_dir, warmup_examples)


def _write_raw_features(described: dict[str, dict[str, str]], export_dir: str) -> None:
    path = os.path.join(export_dir, RAW_FEATURES_FILE)
    tf.io.gfile.makedirs(os.path.dirname(path))
    with tf.io.gfile.GFile(path, "w") as f:
        json.dump(described, f, indent=1, sort_keys=True)


def read_raw_features(export_dir: str) -> dict[str, dict[str, str]]:
    """The raw feature description an exported model carries (see RAW_FEATURES_FILE)."""
    with tf.io.gfile.GFile(os.path.join(export_dir, RAW_FEATURES_FILE)) as f:
        return json.load(f)


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
