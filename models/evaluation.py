"""The TFMA EvalConfig derived from the ProjectSpec: per task output its label, mask and metrics,
the slices, and the blessing thresholds (a bound per task, and how much a task may lose against the
latest blessed model)."""
from __future__ import annotations

import json

import tensorflow_model_analysis as tfma

from models import features
from models.export import TRANSFORM_SIGNATURE
from models.spec import GROUP_METRICS, LOWER_IS_BETTER, ProjectSpec, TaskSpec, TaskType

CUSTOM_METRICS_MODULE = "models.tfma_metrics"
# Our metric names -> (TFMA / Keras metric class, its config, the module of a custom metric). Each
# is registered under our name, so the report and the training logs use the same words.
_TFMA_CLASSES = {
    "auc": ("AUC", {"num_thresholds": 1000}, None),
    "pr_auc": ("AUC", {"num_thresholds": 1000, "curve": "PR"}, None),
    "binary_accuracy": ("BinaryAccuracy", {}, None),
    "precision": ("Precision", {}, None),
    "recall": ("Recall", {}, None),
    "calibration": ("Calibration", {}, None),
    "accuracy": ("SparseCategoricalAccuracy", {}, None),
    "top2_accuracy": ("SparseTopKCategoricalAccuracy", {"k": 2}, None),
    "rmse": ("RootMeanSquaredError", {}, None),
    "mae": ("MeanAbsoluteError", {}, None),
    "mse": ("MeanSquaredError", {}, None),
    "gauc": ("GroupAUC", {}, CUSTOM_METRICS_MODULE),
    "ndcg_at_10": ("NDCGAtK", {"top_k": 10}, CUSTOM_METRICS_MODULE),
    "macro_f1": ("MacroF1", {}, CUSTOM_METRICS_MODULE),
}
_LOG_LOSS = {TaskType.BINARY: "BinaryCrossentropy", TaskType.MULTICLASS: "SparseCategoricalCrossentropy"}
OVERALL = tfma.SlicingSpec()


def _threshold(spec: ProjectSpec, task: TaskSpec) -> tfma.MetricThreshold | None:
    """The primary metric's bound (`blessing_threshold`) and allowed loss against the baseline (`max_loss`)."""
    lower_is_better = task.primary_metric in LOWER_IS_BETTER
    threshold, max_loss = tfma.MetricThreshold(), spec.max_loss(task)
    if task.blessing_threshold is not None:
        bound = "upper_bound" if lower_is_better else "lower_bound"
        threshold.value_threshold.CopyFrom(tfma.GenericValueThreshold(**{bound: {"value": task.blessing_threshold}}))
    if max_loss is not None:
        # TFMA compares candidate - baseline with `absolute`: >= -max_loss, or <= +max_loss.
        threshold.change_threshold.CopyFrom(tfma.GenericChangeThreshold(
            direction=tfma.MetricDirection.LOWER_IS_BETTER if lower_is_better else tfma.MetricDirection.HIGHER_IS_BETTER,
            absolute={"value": max_loss if lower_is_better else -max_loss}))
    return threshold if threshold.ByteSize() else None


def _metric_config(spec: ProjectSpec, task: TaskSpec, name: str) -> tfma.MetricConfig:
    if name == "log_loss":
        class_name, config, module = _LOG_LOSS[task.type], {}, None
    else:
        class_name, config, module = _TFMA_CLASSES[name]
    if name == "macro_f1":
        config = {**config, "num_classes": task.num_classes}
    metric = tfma.MetricConfig(class_name=class_name, config=json.dumps({"name": name, **config}), module=module)
    threshold = _threshold(spec, task) if name == task.primary_metric else None
    if threshold is not None:
        # Only on the overall slice: a small slice of one device must not veto the whole model.
        metric.per_slice_thresholds.add(slicing_specs=[OVERALL], threshold=threshold)
    return metric


def _metrics_specs(spec: ProjectSpec, task: TaskSpec) -> list[tfma.MetricsSpec]:
    """Row metrics of the task, and its per-user metrics grouped by `evaluation.group_by` (a query key)."""
    weighted = tfma.ExampleWeightOptions(weighted=True, unweighted=False)
    row_metrics = [m for m in task.evaluated_metrics if m not in GROUP_METRICS]
    specs = [tfma.MetricsSpec(
        output_names=[task.name], example_weights=weighted,
        metrics=[tfma.MetricConfig(class_name="ExampleCount")] + [_metric_config(spec, task, m) for m in row_metrics])]
    group_metrics = [m for m in task.evaluated_metrics if m in GROUP_METRICS]
    if group_metrics:
        specs.append(tfma.MetricsSpec(output_names=[task.name], example_weights=weighted,
                                      query_key=spec.evaluation.group_by,
                                      metrics=[_metric_config(spec, task, m) for m in group_metrics]))
    return specs


def eval_config(spec: ProjectSpec) -> tfma.EvalConfig:
    model_spec = tfma.ModelSpec(
        signature_name="serving_default",
        preprocessing_function_names=[TRANSFORM_SIGNATURE],
        label_keys={t.name: features.label_key(t) for t in spec.tasks},
        # The label mask is the example weight, so unlabelled rows count for nothing.
        example_weight_keys={t.name: features.mask_key(t) for t in spec.tasks},
    )
    slicing_specs = [OVERALL] + [tfma.SlicingSpec(feature_keys=[f]) for f in spec.evaluation.slice_by]
    return tfma.EvalConfig(model_specs=[model_spec], slicing_specs=slicing_specs,
                           metrics_specs=[m for t in spec.tasks for m in _metrics_specs(spec, t)])
