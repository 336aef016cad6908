"""Tasks in the manner of `tfrs.tasks`: each owns its head activation, masked loss and metrics.

A Task is derived from one TaskSpec; the model composes tasks and never branches on task type.
"""
from __future__ import annotations

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import tensorflow as tf  # noqa: E402
import tf_keras  # noqa: E402

from models.spec import EVALUATION_ONLY_METRICS, TaskSpec, TaskType  # noqa: E402


def masked_mean(per_example: tf.Tensor, mask: tf.Tensor) -> tf.Tensor:
    """Mean over labelled examples only; 0 when the batch labels none (so no gradient, no NaN)."""
    mask = tf.cast(mask, per_example.dtype)
    return tf.reduce_sum(per_example * mask) / tf.maximum(tf.reduce_sum(mask), 1.0)


class Task:
    """Base class: `logits_dim`, `activation`, `per_example_loss` and `metrics` vary by task type."""

    logits_dim = 1

    def __init__(self, spec: TaskSpec):
        self.spec = spec
        self.name = spec.name
        self.weight = spec.loss_weight

    def activation(self, logits: tf.Tensor) -> tf.Tensor:
        raise NotImplementedError

    def per_example_loss(self, labels: tf.Tensor, logits: tf.Tensor) -> tf.Tensor:
        raise NotImplementedError

    def loss(self, labels: tf.Tensor, logits: tf.Tensor, mask: tf.Tensor) -> tf.Tensor:
        return masked_mean(self.per_example_loss(labels, logits), mask)

    def make_metrics(self) -> list[tf_keras.metrics.Metric]:
        # Per-user and calibration metrics need whole users / the whole split: the Evaluator's job.
        return [self._metric(m) for m in self.spec.metrics if m not in EVALUATION_ONLY_METRICS]

    def _metric(self, name: str) -> tf_keras.metrics.Metric:
        raise NotImplementedError


class BinaryTask(Task):
    def activation(self, logits):
        return tf.sigmoid(tf.squeeze(logits, -1))

    def per_example_loss(self, labels, logits):
        return tf.nn.sigmoid_cross_entropy_with_logits(
            labels=tf.cast(labels, logits.dtype), logits=tf.squeeze(logits, -1)
        )

    def _metric(self, name):
        make = {
            "auc": lambda: tf_keras.metrics.AUC(name="auc", num_thresholds=1000),
            "pr_auc": lambda: tf_keras.metrics.AUC(name="pr_auc", curve="PR", num_thresholds=1000),
            "binary_accuracy": lambda: tf_keras.metrics.BinaryAccuracy(name="binary_accuracy"),
            "precision": lambda: tf_keras.metrics.Precision(name="precision"),
            "recall": lambda: tf_keras.metrics.Recall(name="recall"),
            "log_loss": lambda: tf_keras.metrics.BinaryCrossentropy(name="log_loss"),
        }
        return make[name]()


class FunnelTask(BinaryTask):
    """ESMM: the head's logit is p(task | parent); the task's output is p(parent) * p(task | parent).

    The model passes the log of that product (see `MultiTaskModel`); the loss is the cross-entropy of
    the product against the task's label on the parent's whole space, so the conditional is learned
    without selecting parent-positive rows.
    """

    def __init__(self, spec: TaskSpec):
        super().__init__(spec)
        self.parent = spec.depends_on

    def loss_from_log_probability(self, labels: tf.Tensor, log_p: tf.Tensor, mask: tf.Tensor) -> tf.Tensor:
        log_p = tf.minimum(log_p, -1e-7)  # keeps log(1 - p) finite
        labels = tf.cast(labels, log_p.dtype)
        per_example = -(labels * log_p + (1.0 - labels) * tf.math.log(-tf.math.expm1(log_p)))
        return masked_mean(per_example, mask)


class MulticlassTask(Task):
    def __init__(self, spec: TaskSpec):
        super().__init__(spec)
        self.logits_dim = spec.num_classes

    def activation(self, logits):
        return tf.nn.softmax(logits, axis=-1)

    def per_example_loss(self, labels, logits):
        return tf.nn.sparse_softmax_cross_entropy_with_logits(labels=tf.cast(labels, tf.int64), logits=logits)

    def _metric(self, name):
        make = {
            "accuracy": lambda: tf_keras.metrics.SparseCategoricalAccuracy(name="accuracy"),
            "top2_accuracy": lambda: tf_keras.metrics.SparseTopKCategoricalAccuracy(k=2, name="top2_accuracy"),
            "log_loss": lambda: tf_keras.metrics.SparseCategoricalCrossentropy(name="log_loss"),
        }
        return make[name]()


class RegressionTask(Task):
    def activation(self, logits):
        return tf.squeeze(logits, -1)

    def per_example_loss(self, labels, logits):
        return tf.square(tf.cast(labels, logits.dtype) - tf.squeeze(logits, -1))

    def _metric(self, name):
        make = {
            "rmse": lambda: tf_keras.metrics.RootMeanSquaredError(name="rmse"),
            "mae": lambda: tf_keras.metrics.MeanAbsoluteError(name="mae"),
            "mse": lambda: tf_keras.metrics.MeanSquaredError(name="mse"),
        }
        return make[name]()


_TASK_CLASSES = {TaskType.BINARY: BinaryTask, TaskType.MULTICLASS: MulticlassTask, TaskType.REGRESSION: RegressionTask}


def make_task(spec: TaskSpec) -> Task:
    if spec.depends_on is not None:
        return FunnelTask(spec)
    return _TASK_CLASSES[spec.type](spec)
