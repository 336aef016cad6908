"""The exported SavedModel: raw tf.Examples in, every task out, with the Transform graph inside."""
from __future__ import annotations

import json
import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import tensorflow as tf  # noqa: E402
import tensorflow_transform as tft  # noqa: E402

from models import features  # noqa: E402
from models.multitask import MultiTaskModel  # noqa: E402
from models.spec import ProjectSpec  # noqa: E402

EXAMPLES_INPUT = "examples"
TRANSFORM_SIGNATURE = "transform_features"
# Written beside the SavedModel so a client can build tf.Examples knowing only the model directory.
RAW_FEATURES_FILE = "assets.extra/raw_features.json"


def serving_feature_spec(tf_transform_output: tft.TFTransformOutput, spec: ProjectSpec) -> dict:
    """The raw parsing spec a request is read with: the declared feature columns, never labels."""
    raw = tf_transform_output.raw_feature_spec()
    return {c: raw[c] for c in features.raw_feature_columns(spec)}


class ServingModule(tf.Module):
    """Holds the Transform layer and the trained network so both are saved in one SavedModel."""

    def __init__(self, model: MultiTaskModel, tf_transform_output: tft.TFTransformOutput, spec: ProjectSpec):
        super().__init__(name="commerce_mtl")
        self.model = model
        self.tft_layer = tf_transform_output.transform_features_layer()
        self._serving_spec = serving_feature_spec(tf_transform_output, spec)
        self._full_spec = tf_transform_output.raw_feature_spec()
        self._input_keys = list(model.network.input_names)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=EXAMPLES_INPUT)])
    def serve_examples(self, examples):
        raw = tf.io.parse_example(examples, self._serving_spec)
        transformed = self.tft_layer(raw)
        return self.model({k: transformed[k] for k in self._input_keys}, training=False)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=EXAMPLES_INPUT)])
    def transform_features(self, examples):
        # Used by the Evaluator: labels and masks come out transformed, exactly as the Trainer saw them.
        return self.tft_layer(tf.io.parse_example(examples, self._full_spec))


def export_serving_model(
    model: MultiTaskModel, tf_transform_output: tft.TFTransformOutput, spec: ProjectSpec, export_dir: str
) -> None:
    module = ServingModule(model, tf_transform_output, spec)
    signatures = {
        "serving_default": module.serve_examples.get_concrete_function(),
        TRANSFORM_SIGNATURE: module.transform_features.get_concrete_function(),
    }
    tf.saved_model.save(module, export_dir, signatures=signatures)
    _write_raw_features(module._serving_spec, export_dir)


def _write_raw_features(feature_spec: dict, export_dir: str) -> None:
    described = {name: {"dtype": f.dtype.name, "kind": type(f).__name__} for name, f in feature_spec.items()}
    path = os.path.join(export_dir, RAW_FEATURES_FILE)
    tf.io.gfile.makedirs(os.path.dirname(path))
    with tf.io.gfile.GFile(path, "w") as f:
        json.dump(described, f, indent=1, sort_keys=True)
