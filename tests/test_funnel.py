"""ESMM funnels (`depends_on`): the label over the parent's space, the product output, its gradients."""
from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from models import features
from models.multitask import MultiTaskModel
from models.network import build_network
from models.preprocessing import _funnel_label
from models.spec import ConfigError, parse_spec
from models.tasks import FunnelTask, make_task


def _spec(**click_overrides):
    return parse_spec({
        "model_name": "m",
        "sources": [{"simulated": {"rows": 10}}],
        "features": {"numeric": ["x", "y"]},
        "tasks": [
            {"name": "click", "type": "binary", "label": "click", "blessing_threshold": 0.5, **click_overrides},
            {"name": "purchase", "type": "binary", "label": "purchase", "depends_on": "click"},
        ],
        "training": {"shared_units": [8], "tower_units": [4], "dropout": 0.0},
    })


def test_funnel_label_spans_the_parent_space():
    # rows: clicked+bought, clicked+not bought, clicked+unknown, not clicked (child unknown), no impression
    parent = (tf.constant([1.0, 1.0, 1.0, 0.0, 0.0]), tf.constant([1.0, 1.0, 1.0, 1.0, 0.0]))
    child = (tf.constant([1.0, 0.0, 0.0, 0.0, 0.0]), tf.constant([1.0, 1.0, 0.0, 0.0, 0.0]))
    label, mask = _funnel_label(child, parent)
    np.testing.assert_array_equal(label.numpy(), [1, 0, 0, 0, 0])
    np.testing.assert_array_equal(mask.numpy(), [1, 1, 0, 1, 0])


def test_depends_on_is_validated():
    with pytest.raises(ConfigError, match="not a task"):
        parse_spec({**_spec().model_dump(mode="json"), "tasks": [
            {"name": "purchase", "type": "binary", "label": "p", "depends_on": "click", "blessing_threshold": 0.5}]})
    with pytest.raises(ConfigError, match="cycle"):
        _spec(depends_on="purchase")


def _model():
    spec = _spec()
    tasks = [make_task(t) for t in spec.tasks]
    assert isinstance(tasks[1], FunnelTask)
    model = MultiTaskModel(build_network(spec, tasks, {}), tasks)
    model.compile(optimizer=tf_keras.optimizers.Adam(0.02))
    return spec, model


def test_output_is_the_product_of_parent_and_conditional():
    spec, model = _model()
    x = tf.random.normal([6, 4], seed=0)
    logits = model.network({features.NUMERIC: x})
    out = model({features.NUMERIC: x})
    p_click = tf.sigmoid(logits["click"][:, 0])
    p_given = tf.sigmoid(logits["purchase"][:, 0])
    np.testing.assert_allclose(out["click"].numpy(), p_click.numpy(), rtol=1e-6)
    np.testing.assert_allclose(out["purchase"].numpy(), (p_click * p_given).numpy(), rtol=1e-5)


def test_funnel_loss_and_its_gradients_by_hand():
    task = make_task(_spec().tasks[1])
    lp, lc = tf.Variable([0.4, -0.3]), tf.Variable([1.2, 0.7])
    labels, mask = tf.constant([0.0, 1.0]), tf.constant([1.0, 1.0])
    with tf.GradientTape() as tape:
        log_p = tf.math.log_sigmoid(lp) + tf.math.log_sigmoid(lc)
        loss = task.loss_from_log_probability(labels, log_p, mask)
    d_lp, d_lc = tape.gradient(loss, [lp, lc])
    p, q = 1 / (1 + np.exp(-np.array([0.4, -0.3]))), 1 / (1 + np.exp(-np.array([1.2, 0.7])))
    pq = p * q
    assert float(loss) == pytest.approx(np.mean([-np.log(1 - pq[0]), -np.log(pq[1])]), rel=1e-5)
    # Row 0 (not a purchase, e.g. never clicked) still trains the conditional: dL/dlc = p q (1-q) / (1 - p q).
    np.testing.assert_allclose(d_lc.numpy(), [pq[0] * (1 - q[0]) / (1 - pq[0]) / 2, -(1 - q[1]) / 2], rtol=1e-5)
    np.testing.assert_allclose(d_lp.numpy(), [pq[0] * (1 - p[0]) / (1 - pq[0]) / 2, -(1 - p[1]) / 2], rtol=1e-5)


def test_funnel_trains_on_the_impression_space():
    spec, model = _model()
    rng = np.random.default_rng(0)
    x = rng.normal(size=(256, 4)).astype("float32")
    click = (x[:, 0] > 0).astype("float32")
    bought_given_click = (x[:, 1] > 0).astype("float32")
    batch = {features.NUMERIC: tf.constant(x),
             features.label_key(spec.tasks[0]): tf.constant(click),
             features.mask_key(spec.tasks[0]): tf.ones([256]),
             # the funnel label as Transform writes it: click AND purchase, on every impression
             features.label_key(spec.tasks[1]): tf.constant(click * bought_given_click),
             features.mask_key(spec.tasks[1]): tf.ones([256])}
    for _ in range(150):
        logs = model.train_step(batch)
    out = model({features.NUMERIC: tf.constant(x)})
    logits = model.network({features.NUMERIC: tf.constant(x)})
    conditional = tf.sigmoid(logits["purchase"][:, 0]).numpy()
    # The conditional head learned p(purchase | click) although it was never shown clicked rows alone
    # (on unclicked rows p(click) ~ 0 leaves it unconstrained, as in the paper).
    clicked = click > 0
    assert np.mean((conditional[clicked] > 0.5) == (bought_given_click[clicked] > 0)) > 0.9
    assert np.all(out["purchase"].numpy() <= out["click"].numpy() + 1e-6)
    assert float(logs["purchase_auc"]) > 0.9
