"""Each loss-weighting method against values computed by hand on small tensors."""
from __future__ import annotations

import math

import numpy as np
import pytest
import tensorflow as tf

from models.loss_weighting import (DynamicWeightAverage, GradNorm, LossWeighting, PCGrad, UncertaintyWeighting,
                                   project_conflicting)


def _terms_and_grads(weighting, losses_fn, variables, shared=None, last_shared=None):
    with tf.GradientTape(persistent=weighting.needs_persistent_tape) as tape:
        terms = weighting.terms(losses_fn())
    grads = weighting.gradients(tape, terms, variables, shared or [], last_shared)
    return terms, grads


def test_fixed_weights_are_the_loss_weights():
    w = LossWeighting(["a", "b"], [2.0, 0.5])
    x = tf.Variable([1.0, 1.0])
    terms, grads = _terms_and_grads(w, lambda: tf.stack([0.3 * x[0], 2.0 * x[1]]), [x])
    assert float(terms.objective) == pytest.approx(2.0 * 0.3 + 0.5 * 2.0)
    np.testing.assert_allclose(grads[0].numpy(), [2.0 * 0.3, 0.5 * 2.0])
    np.testing.assert_allclose(terms.weights.numpy(), [2.0, 0.5])


def test_uncertainty_weights_and_log_variance_gradient():
    # a is a classification task (c = 1), b a regression task (c = 1/2).
    w = UncertaintyWeighting(["a", "b"], [1.0, 1.0], regression=[False, True])
    w.log_variance.assign([0.0, math.log(2.0)])
    losses = tf.constant([0.8, 3.0])
    terms, grads = _terms_and_grads(w, lambda: losses, [w.log_variance])
    np.testing.assert_allclose(terms.weights.numpy(), [1.0, 0.5 * 0.5], rtol=1e-6)
    assert float(terms.objective) == pytest.approx(0.8 + 0.25 * 3.0 + 0.5 * math.log(2.0), rel=1e-6)
    # d/ds_t [c_t exp(-s_t) L_t + s_t / 2] = -c_t exp(-s_t) L_t + 1/2
    np.testing.assert_allclose(grads[0].numpy(), [-0.8 + 0.5, -0.25 * 3.0 + 0.5], rtol=1e-6)


def test_gradnorm_step_by_hand():
    g = GradNorm(["a", "b"], [1.0, 1.0], alpha=1.5, learning_rate=0.1)
    # First step: L(0) = L, so r = [1, 1]; G = w * ||dL/dW|| = [1, 3], mean 2, target [2, 2];
    # dLgrad/dw = sign(G - target) * ||dL/dW|| = [-1, 3]; w = [1.1, 0.7], renormalised to sum 2.
    g.update(tf.constant([1.0, 2.0]), tf.constant([1.0, 3.0]))
    np.testing.assert_allclose(g.task_weights().numpy(), np.array([1.1, 0.7]) * 2 / 1.8, rtol=1e-6)
    np.testing.assert_allclose(g.initial_losses.numpy(), [1.0, 2.0])
    # Second step: task a's loss fell to 0.5 (r_a = 0.5 / mean(0.5, 1) = 2/3), b's stayed (r_b = 4/3).
    w = g.task_weights().numpy()
    g.update(tf.constant([0.5, 2.0]), tf.constant([1.0, 1.0]))
    norms = w * np.array([1.0, 1.0])
    target = norms.mean() * np.array([2 / 3, 4 / 3]) ** 1.5
    step = w - 0.1 * np.sign(norms - target) * np.array([1.0, 1.0])
    np.testing.assert_allclose(g.task_weights().numpy(), step * 2 / step.sum(), rtol=1e-5)


def test_gradnorm_measures_gradient_norms_on_the_shared_layer():
    g = GradNorm(["a", "b"], [1.0, 1.0], alpha=0.0, learning_rate=0.1)
    kernel = tf.Variable([1.0, 1.0])
    # ||dL_a/dW|| = ||[1, 0]|| = 1, ||dL_b/dW|| = ||[0, 3]|| = 3; alpha 0 makes the target mean(G) = 2.
    _, grads = _terms_and_grads(g, lambda: tf.stack([kernel[0], 3.0 * kernel[1]]), [kernel],
                                shared=[kernel], last_shared=kernel)
    np.testing.assert_allclose(grads[0].numpy(), [1.0, 3.0])
    np.testing.assert_allclose(g.task_weights().numpy(), np.array([1.1, 0.7]) * 2 / 1.8, rtol=1e-6)


def test_gradnorm_without_a_shared_layer_is_a_clear_error():
    g = GradNorm(["a"], [1.0])
    x = tf.Variable([1.0])
    with pytest.raises(ValueError, match="shared_units"):
        _terms_and_grads(g, lambda: tf.stack([x[0]]), [x])


def test_dwa_weights_by_hand():
    d = DynamicWeightAverage(["a", "b"], [1.0, 1.0], temperature=2.0, window_steps=2)
    np.testing.assert_allclose(d.task_weights().numpy(), [1.0, 1.0])
    for losses in ([1.0, 1.0], [1.0, 1.0], [0.5, 1.0], [0.5, 1.0]):
        d.observe(tf.constant(losses))
    # Window means: [1, 1] then [0.5, 1]; ratios [0.5, 1]; w = 2 softmax(ratios / 2).
    e = np.exp(np.array([0.25, 0.5]))
    np.testing.assert_allclose(d.task_weights().numpy(), 2 * e / e.sum(), rtol=1e-6)


def test_dwa_keeps_equal_weights_until_two_windows_closed():
    d = DynamicWeightAverage(["a", "b"], [1.0, 1.0], temperature=2.0, window_steps=3)
    for _ in range(5):
        d.observe(tf.constant([0.2, 4.0]))
    np.testing.assert_allclose(d.task_weights().numpy(), [1.0, 1.0])


def test_pcgrad_projects_two_conflicting_gradients():
    g1, g2 = [1.0, 0.0], [-1.0, 1.0]
    combined, conflicts = project_conflicting(tf.constant([g1, g2]))
    # g1.g2 = -1: g1' = g1 - (-1 / 2) g2 = [0.5, 0.5]; g2' = g2 - (-1 / 1) g1 = [0, 1].
    np.testing.assert_allclose(combined.numpy(), [0.5, 1.5])
    assert float(conflicts) == 2.0
    # each projected gradient no longer conflicts with the other task's original gradient
    assert np.dot([0.5, 0.5], g2) >= 0 and np.dot([0.0, 1.0], g1) >= 0


def test_pcgrad_leaves_agreeing_gradients_alone():
    combined, conflicts = project_conflicting(tf.constant([[1.0, 0.0], [1.0, 1.0]]))
    np.testing.assert_allclose(combined.numpy(), [2.0, 1.0])
    assert float(conflicts) == 0.0


def test_pcgrad_projects_shared_variables_only():
    p = PCGrad(["a", "b"], [1.0, 1.0])
    shared = tf.Variable([0.0, 0.0])
    own = tf.Variable(0.0)
    # dL_a/dshared = [1, 0], dL_b/dshared = [-1, 1]: the conflict above; own gets plain dL/down = 1 + 2.
    _, grads = _terms_and_grads(
        p, lambda: tf.stack([shared[0] + own, -shared[0] + shared[1] + 2.0 * own]), [shared, own], shared=[shared])
    np.testing.assert_allclose(grads[0].numpy(), [0.5, 1.5])
    assert float(grads[1]) == pytest.approx(3.0)
    assert float(p.last_conflicts) == 2.0
