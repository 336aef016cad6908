"""The TFMA EvalConfig derived from the ProjectSpec: one label, mask and metric set per task output."""
from __future__ import annotations

import json

import tensorflow_model_analysis as tfma

from models import features
from models.export import TRANSFORM_SIGNATURE
from models.spec import ProjectSpec, TaskSpec, TaskType

# Our metric names -> TFMA / Keras metric classes. The metric is registered under our name so the
# report and the training logs use the same words.
_TFMA_CLASSES = {
    "auc": ("AUC", {"num_thresholds": 1000}),
    "pr_auc": ("AUC", {"num_thresholds": 1000, "curve": "PR"}),
    "binary_accuracy": ("BinaryAccuracy", {}),
    "precision": ("Precision", {}),
    "recall": ("Recall", {}),
    "accuracy": ("SparseCategoricalAccuracy", {}),
    "top2_accuracy": ("SparseTopKCategoricalAccuracy", {"k": 2}),
    "rmse": ("RootMeanSquaredError", {}),
    "mae": ("MeanAbsoluteError", {}),
    "mse": ("MeanSquaredError", {}),
}
_LOG_LOSS = {TaskType.BINARY: "BinaryCrossentropy", TaskType.MULTICLASS: "SparseCategoricalCrossentropy"}


def _metric_config(task: TaskSpec, name: str) -> tfma.MetricConfig:
    if name == "log_loss":
        class_name, config = _LOG_LOSS[task.type], {}
    else:
        class_name, config = _TFMA_CLASSES[name]
    threshold = None
    if name == task.primary_metric and task.blessing_threshold is not None:
        bound = {"upper_bound" if task.primary_metric_lower_is_better else "lower_bound": {
            "value": task.blessing_threshold}}
        threshold = tfma.MetricThreshold(value_threshold=tfma.GenericValueThreshold(**bound))
    return tfma.MetricConfig(class_name=class_name, config=json.dumps({"name": name, **config}), threshold=threshold)


def eval_config(spec: ProjectSpec) -> tfma.EvalConfig:
    model_spec = tfma.ModelSpec(
        signature_name="serving_default",
        preprocessing_function_names=[TRANSFORM_SIGNATURE],
        label_keys={t.name: features.label_key(t) for t in spec.tasks},
        # The label mask is the example weight, so unlabelled rows count for nothing.
        example_weight_keys={t.name: features.mask_key(t) for t in spec.tasks},
    )
    metrics_specs = [
        tfma.MetricsSpec(
            output_names=[t.name],
            metrics=[tfma.MetricConfig(class_name="ExampleCount")]
            + [_metric_config(t, m) for m in t.metrics],
            example_weights=tfma.ExampleWeightOptions(weighted=True, unweighted=False),
        )
        for t in spec.tasks
    ]
    return tfma.EvalConfig(model_specs=[model_spec], slicing_specs=[tfma.SlicingSpec()], metrics_specs=metrics_specs)
