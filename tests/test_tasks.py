"""Masked per-task losses, the weighted total, and metrics that skip unlabelled rows."""
from __future__ import annotations

import math

import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from models import features
from models.multitask import MultiTaskModel
from models.network import build_network
from models.spec import TaskSpec, parse_spec
from models.tasks import make_task, masked_mean


def _task(**kw):
    return make_task(TaskSpec(**kw))


def test_binary_loss_averages_only_labelled_rows():
    task = _task(name="click", type="binary", label="click")
    loss = task.loss(tf.constant([1.0, 0.0, 1.0]), tf.constant([[0.0], [2.0], [-1.0]]), tf.constant([1.0, 1.0, 0.0]))
    # BCE(y=1, z=0) = log 2 ; BCE(y=0, z=2) = log(1 + e^2); the third row is masked out.
    assert float(loss) == pytest.approx((math.log(2.0) + math.log(1.0 + math.e ** 2)) / 2, rel=1e-6)


def test_multiclass_loss_is_masked_softmax_cross_entropy():
    task = _task(name="intent", type="multiclass", label="intent", classes=["a", "b", "c"])
    loss = task.loss(tf.constant([2, 0]), tf.constant([[1.0, 2.0, 3.0], [1.0, 1.0, 1.0]]), tf.constant([1.0, 0.0]))
    expected = -math.log(math.e ** 3 / (math.e + math.e ** 2 + math.e ** 3))
    assert float(loss) == pytest.approx(expected, rel=1e-6)


def test_regression_loss_is_masked_squared_error():
    task = _task(name="sat", type="regression", label="sat")
    loss = task.loss(tf.constant([1.0, 2.0, 3.0]), tf.constant([[1.5], [9.0], [5.0]]), tf.constant([1.0, 0.0, 1.0]))
    assert float(loss) == pytest.approx((0.25 + 4.0) / 2)


def test_a_batch_without_labels_contributes_zero_loss_and_zero_gradient():
    logits = tf.Variable([[0.3], [-2.0]])
    task = _task(name="fraud", type="binary", label="fraud")
    with tf.GradientTape() as tape:
        loss = task.loss(tf.constant([1.0, 0.0]), logits, tf.constant([0.0, 0.0]))
    assert float(loss) == 0.0
    assert not np.any(tape.gradient(loss, logits).numpy())


def test_masked_mean_of_weights():
    assert float(masked_mean(tf.constant([2.0, 4.0, 100.0]), tf.constant([1.0, 1.0, 0.0]))) == 3.0


def _numeric_only_model():
    spec = parse_spec({
        "model_name": "m",
        "sources": [{"simulated": {"rows": 10}}],
        "features": {"numeric": ["x"]},
        "tasks": [
            {"name": "a", "type": "binary", "label": "a", "loss_weight": 2.0, "blessing_threshold": 0.5},
            {"name": "b", "type": "binary", "label": "b", "loss_weight": 0.5},
        ],
        "training": {"shared_units": [4], "tower_units": [4], "dropout": 0.0},
    })
    tasks = [make_task(t) for t in spec.tasks]
    model = MultiTaskModel(build_network(spec, tasks, {}), tasks)
    model.compile(optimizer=tf_keras.optimizers.SGD(0.0))
    return spec, model


def test_total_loss_is_the_alpha_weighted_sum():
    spec, model = _numeric_only_model()
    total = model.total_loss({"a": tf.constant(0.3), "b": tf.constant(2.0)})
    assert float(total) == pytest.approx(2.0 * 0.3 + 0.5 * 2.0)


def test_metrics_ignore_rows_a_task_does_not_label():
    spec, model = _numeric_only_model()
    a, b = spec.tasks
    batch = {
        features.NUMERIC: tf.constant([[0.1, 0.0], [0.5, 0.0], [-0.3, 0.0], [0.9, 0.0]]),
        features.label_key(a): tf.constant([1.0, 0.0, 1.0, 0.0]),
        features.mask_key(a): tf.constant([1.0, 1.0, 1.0, 0.0]),
        features.label_key(b): tf.constant([0.0, 0.0, 0.0, 0.0]),
        features.mask_key(b): tf.constant([0.0, 0.0, 0.0, 0.0]),
    }
    logs = model.train_step(batch)
    auc_a = next(m for m in model.task_metrics["a"] if m.name == "auc")
    auc_b = next(m for m in model.task_metrics["b"] if m.name == "auc")
    # Task a saw 3 labelled rows (2 positives, 1 negative); task b saw none at all.
    assert float(tf.reduce_max(auc_a.true_positives + auc_a.false_negatives)) == 2.0
    assert float(tf.reduce_max(auc_a.true_negatives + auc_a.false_positives)) == 1.0
    assert float(tf.reduce_sum(auc_b.true_positives + auc_b.false_positives
                               + auc_b.true_negatives + auc_b.false_negatives)) == 0.0
    assert float(logs["b_loss"]) == 0.0
    assert float(logs["loss"]) == pytest.approx(2.0 * float(logs["a_loss"]))
