"""How per-task losses become one update: fixed weights, uncertainty, GradNorm, DWA and PCGrad.

Every method is a Keras layer (its state is saved with the model) with one entry point,
`gradients(tape, losses, variables, shared)`, which returns the gradient of every variable and the
effective weight of every task at this step. The model logs those weights; nothing here logs itself.

- fixed: L = sum_t a_t L_t (a_t = the task's loss_weight).
- uncertainty (Kendall et al. 2018): L = sum_t c_t exp(-s_t) a_t L_t + s_t / 2 with learned
  s_t = log sigma_t^2; c_t = 1 for classification and 1/2 for regression.
- gradnorm (Chen et al. 2018): weights w_t follow the gradient of sum_t |G_t - mean(G) r_t^alpha|,
  G_t = ||d(w_t L_t)/dW|| on the last shared layer W, r_t = (L_t/L_t(0)) / mean(L/L(0)); renormalised
  so that sum_t w_t = sum_t a_t.
- dwa (Liu et al. 2019): w_t = T a_t softmax_t(l_t(k-1) / l_t(k-2) / temperature), l_t(k) being the
  mean loss of window k; equal weights until two windows have been seen.
- pcgrad (Yu et al. 2020): on shared variables, each task's gradient drops its component along any
  other task's gradient it conflicts with (negative dot product) before they are summed.
"""
from __future__ import annotations

import dataclasses
import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import tensorflow as tf  # noqa: E402
import tf_keras  # noqa: E402

from models.spec import LossWeightingSpec, TaskType  # noqa: E402
from models.tasks import Task  # noqa: E402


@dataclasses.dataclass(frozen=True)
class LossTerms:
    """What the gradient tape must have recorded: the objective, and each task's loss unweighted and
    weighted (as lists, so that per-task gradients need no op outside the tape)."""

    objective: tf.Tensor
    losses: list[tf.Tensor]
    weighted: list[tf.Tensor]
    weights: tf.Tensor


def _dense(grad, variable: tf.Variable) -> tf.Tensor:
    # Embedding gradients arrive as IndexedSlices; None means the loss does not reach the variable.
    if grad is None:
        return tf.zeros_like(variable)
    return tf.convert_to_tensor(grad)


class LossWeighting(tf_keras.layers.Layer):
    """Fixed weights; the base of the adaptive methods."""

    def __init__(self, task_names: list[str], loss_weights: list[float], **kwargs):
        super().__init__(**kwargs)
        self.task_names = list(task_names)
        self.loss_weights = [float(a) for a in loss_weights]
        self.alphas = tf.constant(self.loss_weights, tf.float32)

    @property
    def num_tasks(self) -> int:
        return len(self.task_names)

    def task_weights(self) -> tf.Tensor:
        """The weight each task's loss gets at this step, [tasks]."""
        return self.alphas

    def objective(self, losses: tf.Tensor) -> tf.Tensor:
        """The scalar whose gradient trains the model; `losses` is [tasks]."""
        return tf.reduce_sum(self.task_weights() * losses)

    def terms(self, losses: tf.Tensor) -> LossTerms:
        """Call inside the gradient tape; `losses` is [tasks]."""
        weights = self.task_weights()
        return LossTerms(self.objective(losses), tf.unstack(losses), tf.unstack(weights * losses), weights)

    def gradients(self, tape: tf.GradientTape, terms: LossTerms, variables: list, shared: list,
                  last_shared: tf.Variable | None = None) -> list:
        """One gradient per variable, and any update of the method's own state.

        `shared`: variables several tasks train (PCGrad projects their gradients); `last_shared`: the
        last shared layer's kernel (GradNorm balances gradient norms there)."""
        return tape.gradient(terms.objective, variables)

    @property
    def needs_persistent_tape(self) -> bool:
        return False

    def get_config(self) -> dict:
        return {**super().get_config(), "task_names": self.task_names, "loss_weights": self.loss_weights}


class UncertaintyWeighting(LossWeighting):
    def __init__(self, task_names: list[str], loss_weights: list[float], regression: list[bool], **kwargs):
        super().__init__(task_names, loss_weights, **kwargs)
        self.regression = [bool(r) for r in regression]
        self.scale = tf.constant([0.5 if r else 1.0 for r in self.regression], tf.float32)
        self.log_variance = self.add_weight(name="log_variance", shape=(len(self.task_names),),
                                            initializer="zeros", trainable=True)

    def task_weights(self) -> tf.Tensor:
        return self.alphas * self.scale * tf.exp(-self.log_variance)

    def objective(self, losses):
        return tf.reduce_sum(self.task_weights() * losses + 0.5 * self.log_variance)

    def get_config(self) -> dict:
        return {**super().get_config(), "regression": self.regression}


class GradNorm(LossWeighting):
    def __init__(self, task_names: list[str], loss_weights: list[float], alpha: float = 1.5,
                 learning_rate: float = 0.025, **kwargs):
        super().__init__(task_names, loss_weights, **kwargs)
        self.alpha = float(alpha)
        self.learning_rate = float(learning_rate)
        n = len(self.task_names)
        self.weights_var = self.add_weight(name="task_weights", shape=(n,), trainable=False,
                                           initializer=tf_keras.initializers.Constant(self.loss_weights))
        self.initial_losses = self.add_weight(name="initial_losses", shape=(n,), initializer="zeros",
                                              trainable=False)

    def task_weights(self):
        return tf.identity(self.weights_var)

    @property
    def needs_persistent_tape(self) -> bool:
        return True

    def gradients(self, tape, terms, variables, shared, last_shared=None):
        if last_shared is None:
            raise ValueError("gradnorm needs a shared layer to balance gradients on; "
                             "set training.shared_units to at least one layer")
        grads = tape.gradient(terms.objective, variables)
        norms = tf.stack([tf.norm(_dense(tape.gradient(loss, last_shared), last_shared)) for loss in terms.losses])
        self.update(tf.stack(terms.losses), norms)
        return grads

    def update(self, losses: tf.Tensor, unweighted_norms: tf.Tensor) -> None:
        """One GradNorm step of the task weights, given ||dL_t/dW|| for every task."""
        # L_t(0) is the task's first nonzero loss: a batch may hold no label for a task.
        unset = tf.equal(self.initial_losses, 0.0)
        self.initial_losses.assign(tf.where(unset, losses, self.initial_losses))
        norms = self.weights_var * unweighted_norms
        known = self.initial_losses > 0.0
        ratios = tf.where(known, losses / tf.where(known, self.initial_losses, 1.0), 1.0)
        relative = ratios / tf.maximum(tf.reduce_mean(ratios), 1e-12)
        # The target is a constant in the paper; d|G_t - target_t|/dw_t = sign(.) * ||dL_t/dW||.
        target = tf.reduce_mean(norms) * tf.pow(relative, self.alpha)
        grad = tf.sign(norms - target) * unweighted_norms
        updated = tf.maximum(self.weights_var - self.learning_rate * grad, 1e-6)
        self.weights_var.assign(updated * tf.reduce_sum(self.alphas) / tf.reduce_sum(updated))

    def get_config(self) -> dict:
        return {**super().get_config(), "alpha": self.alpha, "learning_rate": self.learning_rate}


class DynamicWeightAverage(LossWeighting):
    def __init__(self, task_names: list[str], loss_weights: list[float], temperature: float = 2.0,
                 window_steps: int = 20, **kwargs):
        super().__init__(task_names, loss_weights, **kwargs)
        self.temperature = float(temperature)
        self.window_steps = int(window_steps)
        n = len(self.task_names)
        zeros = dict(initializer="zeros", trainable=False)
        self.window_sum = self.add_weight(name="window_sum", shape=(n,), **zeros)
        self.window_count = self.add_weight(name="window_count", shape=(), **zeros)
        self.last = self.add_weight(name="last_window_mean", shape=(n,), **zeros)
        self.before_last = self.add_weight(name="before_last_window_mean", shape=(n,), **zeros)
        self.windows = self.add_weight(name="windows_seen", shape=(), **zeros)

    def task_weights(self):
        ratios = self.last / tf.maximum(self.before_last, 1e-12)
        adaptive = self.num_tasks * tf.nn.softmax(ratios / self.temperature)
        return self.alphas * tf.where(self.windows >= 2.0, adaptive, tf.ones_like(adaptive))

    def gradients(self, tape, terms, variables, shared, last_shared=None):
        grads = tape.gradient(terms.objective, variables)
        self.observe(tf.stack(terms.losses))
        return grads

    def observe(self, losses: tf.Tensor) -> None:
        """Adds one step's losses; closes the window after `window_steps` steps."""
        self.window_sum.assign_add(tf.stop_gradient(losses))
        self.window_count.assign_add(1.0)
        full = self.window_count >= self.window_steps
        mean = self.window_sum / tf.maximum(self.window_count, 1.0)
        self.before_last.assign(tf.where(full, self.last, self.before_last))
        self.last.assign(tf.where(full, mean, self.last))
        self.windows.assign_add(tf.cast(full, tf.float32))
        self.window_sum.assign(tf.where(full, tf.zeros_like(self.window_sum), self.window_sum))
        self.window_count.assign(tf.where(full, 0.0, self.window_count))

    def get_config(self) -> dict:
        return {**super().get_config(), "temperature": self.temperature, "window_steps": self.window_steps}


def project_conflicting(task_grads: tf.Tensor, order: tf.Tensor | None = None) -> tuple[tf.Tensor, tf.Tensor]:
    """PCGrad on flat per-task gradients [tasks, d] -> (summed projected gradient [d], conflicts).

    Task i's gradient is projected, in `order` (default: task order), onto the normal plane of every
    other task's original gradient it has a negative dot product with. `conflicts` counts the
    projections made.
    """
    n = task_grads.shape[0]
    order = tf.range(n) if order is None else order
    projected, conflicts = [], tf.constant(0.0)
    for i in range(n):
        g = task_grads[i]
        for k in range(n):
            j = order[k]
            other = tf.gather(task_grads, j)
            dot = tf.reduce_sum(g * other)
            conflict = tf.logical_and(tf.not_equal(j, i), dot < 0.0)
            step = dot / tf.maximum(tf.reduce_sum(other * other), 1e-20)
            g = tf.where(conflict, g - step * other, g)
            conflicts += tf.cast(conflict, tf.float32)
        projected.append(g)
    return tf.add_n(projected), conflicts


class PCGrad(LossWeighting):
    def __init__(self, task_names: list[str], loss_weights: list[float], seed: int = 0, **kwargs):
        super().__init__(task_names, loss_weights, **kwargs)
        self.seed = int(seed)
        self.step = self.add_weight(name="step", shape=(), dtype=tf.int64, initializer="zeros", trainable=False)
        self.last_conflicts = self.add_weight(name="conflicts", shape=(), initializer="zeros", trainable=False)

    @property
    def needs_persistent_tape(self) -> bool:
        return True

    def gradients(self, tape, terms, variables, shared, last_shared=None):
        shared_ids = {id(v) for v in shared}
        own = [v for v in variables if id(v) not in shared_ids]
        total = tape.gradient(terms.objective, own) if own else []
        flat = tf.stack([self._flat(tape.gradient(loss, shared), shared) for loss in terms.weighted])
        # The paper visits the other tasks in random order; a stateless seed per step keeps it reproducible.
        self.step.assign_add(1)
        order = tf.random.experimental.stateless_shuffle(
            tf.range(self.num_tasks), seed=tf.stack([tf.constant(self.seed, tf.int64), self.step]))
        combined, conflicts = project_conflicting(flat, order)
        self.last_conflicts.assign(conflicts)
        by_id = dict(zip([id(v) for v in own], total))
        by_id.update(zip([id(v) for v in shared], self._unflat(combined, shared)))
        return [by_id.get(id(v)) for v in variables]

    @staticmethod
    def _flat(grads, variables) -> tf.Tensor:
        return tf.concat([tf.reshape(_dense(g, v), [-1]) for g, v in zip(grads, variables)], axis=0)

    @staticmethod
    def _unflat(flat: tf.Tensor, variables) -> list[tf.Tensor]:
        sizes = [int(tf.size(v)) for v in variables]
        return [tf.reshape(part, v.shape) for part, v in zip(tf.split(flat, sizes), variables)]

    def get_config(self) -> dict:
        return {**super().get_config(), "seed": self.seed}


def make_loss_weighting(spec: LossWeightingSpec, tasks: list[Task], seed: int = 0) -> LossWeighting:
    """The weighting layer the config asks for."""
    names, alphas = [t.name for t in tasks], [t.weight for t in tasks]
    kind = spec.method
    if kind == "uncertainty":
        return UncertaintyWeighting(names, alphas, [t.spec.type == TaskType.REGRESSION for t in tasks],
                                    name="loss_weighting")
    if kind == "gradnorm":
        return GradNorm(names, alphas, spec.gradnorm_alpha, spec.gradnorm_learning_rate, name="loss_weighting")
    if kind == "dwa":
        return DynamicWeightAverage(names, alphas, spec.dwa_temperature, spec.dwa_window_steps,
                                    name="loss_weighting")
    if kind == "pcgrad":
        return PCGrad(names, alphas, seed, name="loss_weighting")
    return LossWeighting(names, alphas, name="loss_weighting")
