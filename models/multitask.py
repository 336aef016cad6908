"""MultiTaskModel: composes Tasks over a network; per-task label masks, a loss-weighting method,
ESMM funnels, gate logging, and the training-only robustness steps (token augmentation, FGM)."""
from __future__ import annotations

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import tensorflow as tf  # noqa: E402
import tf_keras  # noqa: E402

from models import features  # noqa: E402
from models.loss_weighting import LossWeighting  # noqa: E402
from models.tasks import FunnelTask, Task  # noqa: E402

ENCODER_LAYER = "text_encoder"
SHARED_BOTTOM_LAYER = "shared_bottom"
_TASK_LAYER_PREFIXES = ("tower_", "logits_")


def gate_output_key(task: str) -> str:
    """Network output holding `task`'s gate weights over experts, [batch, experts]."""
    return f"gate__{task}"


def weight_metric(task: str) -> str:
    return f"weight_{task}"


def gate_metric(task: str, expert: str) -> str:
    return f"gate_{task}_{expert}"


def _add_gradients(a, b):
    if a is None or b is None:
        return b if a is None else a
    if isinstance(a, tf.IndexedSlices) and isinstance(b, tf.IndexedSlices):
        return tf.IndexedSlices(tf.concat([a.values, b.values], 0), tf.concat([a.indices, b.indices], 0),
                                a.dense_shape)
    return tf.convert_to_tensor(a) + tf.convert_to_tensor(b)


class MultiTaskModel(tf_keras.Model):
    """Trains `network` on every task at once; a task's loss and metrics skip rows it does not label.

    `weighting` turns the task losses into gradients (fixed, uncertainty, GradNorm, DWA, PCGrad);
    `augmentation` and `adversarial_epsilon` (FGM) act in `train_step` only, so inference and the
    exported signatures are untouched.
    """

    def __init__(self, network: tf_keras.Model, tasks: list[Task], weighting: LossWeighting | None = None,
                 encoder_optimizer=None, augmentation=None, adversarial_epsilon: float | None = None, **kwargs):
        super().__init__(**kwargs)
        self.network = network
        self.tasks = tasks
        self.weighting = weighting or LossWeighting([t.name for t in tasks], [t.weight for t in tasks],
                                                    name="loss_weighting")
        self.encoder_optimizer = encoder_optimizer
        self.augmentation = augmentation
        self.adversarial_epsilon = adversarial_epsilon
        self.loss_trackers = {t.name: tf_keras.metrics.Mean(name=f"{t.name}_loss") for t in tasks}
        self.total_tracker = tf_keras.metrics.Mean(name="loss")
        self.adversarial_tracker = tf_keras.metrics.Mean(name="adversarial_loss")
        self.task_metrics = {t.name: t.make_metrics() for t in tasks}
        self.expert_names = self._expert_names()
        self.gate_trackers = {gate_metric(t, e): tf_keras.metrics.Mean(name=gate_metric(t, e))
                              for t, experts in self.expert_names.items() for e in experts}

    def _expert_names(self) -> dict[str, list[str]]:
        for layer in self.network.layers:
            if hasattr(layer, "expert_names"):
                return {t.name: layer.expert_names(t.name) for t in self.tasks}
        return {}

    @property
    def metrics(self):
        ms = [self.total_tracker, *self.loss_trackers.values(), *self.gate_trackers.values()]
        if self.adversarial_epsilon:
            ms.append(self.adversarial_tracker)
        for t in self.tasks:
            ms += self.task_metrics[t.name]
        return ms

    # --- outputs ---------------------------------------------------------------------------------
    def _network_outputs(self, inputs, training) -> dict:
        return self.network({k: inputs[k] for k in self.network.input_names}, training=training)

    def _funnel_log_probability(self, task: FunnelTask, logits: dict) -> tf.Tensor:
        """log p(task) = log p(task | parent) + log p(parent), down the chain of parents."""
        log_p = tf.math.log_sigmoid(tf.squeeze(logits[task.name], -1))
        parent = next(t for t in self.tasks if t.name == task.parent)
        if isinstance(parent, FunnelTask):
            return log_p + self._funnel_log_probability(parent, logits)
        return log_p + tf.math.log_sigmoid(tf.squeeze(logits[parent.name], -1))

    def predictions(self, logits: dict) -> dict[str, tf.Tensor]:
        return {t.name: tf.exp(self._funnel_log_probability(t, logits)) if isinstance(t, FunnelTask)
                else t.activation(logits[t.name]) for t in self.tasks}

    def call(self, inputs, training=None):
        return self.predictions(self._network_outputs(inputs, training))

    # --- losses ----------------------------------------------------------------------------------
    def task_losses(self, batch, logits) -> dict[str, tf.Tensor]:
        losses = {}
        for t in self.tasks:
            labels, mask = batch[features.label_key(t.spec)], batch[features.mask_key(t.spec)]
            if isinstance(t, FunnelTask):
                losses[t.name] = t.loss_from_log_probability(labels, self._funnel_log_probability(t, logits), mask)
            else:
                losses[t.name] = t.loss(labels, logits[t.name], mask)
        return losses

    def _loss_vector(self, losses: dict) -> tf.Tensor:
        return tf.stack([losses[t.name] for t in self.tasks])

    def total_loss(self, losses: dict[str, tf.Tensor]) -> tf.Tensor:
        """The weighted sum at the current task weights (what is reported as `loss`)."""
        return tf.reduce_sum(self.weighting.task_weights() * self._loss_vector(losses))

    def _forward(self, batch, training):
        outputs = self._network_outputs(batch, training)
        losses = self.task_losses(batch, outputs)
        return outputs, losses

    # --- metrics ---------------------------------------------------------------------------------
    def _update_metrics(self, batch, outputs, losses, total):
        self.total_tracker.update_state(total)
        predictions = self.predictions(outputs)
        for t in self.tasks:
            mask = batch[features.mask_key(t.spec)]
            # A batch with no label for a task must not count as a zero loss for it.
            self.loss_trackers[t.name].update_state(losses[t.name], sample_weight=tf.reduce_sum(mask))
            # Keras metrics want [batch, 1] labels and weights next to [batch, k] predictions.
            prediction = predictions[t.name]
            if prediction.shape.rank == 1:
                prediction = prediction[:, None]
            labels = batch[features.label_key(t.spec)][:, None]
            for m in self.task_metrics[t.name]:
                m.update_state(labels, prediction, sample_weight=mask[:, None])
        for task, experts in self.expert_names.items():
            means = tf.reduce_mean(outputs[gate_output_key(task)], axis=0)
            for i, expert in enumerate(experts):
                self.gate_trackers[gate_metric(task, expert)].update_state(means[i])
        return self._results()

    def _results(self):
        out = {"loss": self.total_tracker.result()}
        for t in self.tasks:
            out[f"{t.name}_loss"] = self.loss_trackers[t.name].result()
            for m in self.task_metrics[t.name]:
                out[f"{t.name}_{m.name}"] = m.result()
        for name, tracker in self.gate_trackers.items():
            out[name] = tracker.result()
        if self.adversarial_epsilon:
            out["adversarial_loss"] = self.adversarial_tracker.result()
        return out

    # --- training --------------------------------------------------------------------------------
    def _encoder(self):
        names = {layer.name for layer in self.network.layers}
        return self.network.get_layer(ENCODER_LAYER) if ENCODER_LAYER in names else None

    def _split_variables(self):
        """(encoder variables, everything else): the pretrained encoder is tuned with a smaller step."""
        encoder = self._encoder()
        encoder_vars = encoder.trainable_variables if encoder is not None else []
        ids = {id(v) for v in encoder_vars}
        return encoder_vars, [v for v in self.trainable_variables if id(v) not in ids]

    def shared_variables(self) -> list[tf.Variable]:
        """Network variables more than one task trains: everything but the towers and logit layers."""
        return [v for layer in self.network.layers if not layer.name.startswith(_TASK_LAYER_PREFIXES)
                for v in layer.trainable_variables]

    def last_shared_kernel(self) -> tf.Variable | None:
        """GradNorm's W: the kernel of the shared bottom's last dense layer."""
        names = {layer.name for layer in self.network.layers}
        if SHARED_BOTTOM_LAYER not in names:
            return None
        dense = [l for l in self.network.get_layer(SHARED_BOTTOM_LAYER).layers if isinstance(l, tf_keras.layers.Dense)]
        return dense[-1].kernel if dense else None

    def _augment(self, batch):
        if self.augmentation is None or features.INPUT_IDS not in batch:
            return batch
        ids, mask = self.augmentation(batch[features.INPUT_IDS], batch[features.ATTENTION_MASK])
        return {**batch, features.INPUT_IDS: ids, features.ATTENTION_MASK: mask}

    def _adversarial_gradients(self, batch, weights, variables, clean_gradient):
        """FGM: gradients of the loss with the word embeddings moved by epsilon along the direction of
        their clean gradient, then restored."""
        embeddings = self._encoder().word_embeddings
        direction = tf.convert_to_tensor(clean_gradient)
        delta = self.adversarial_epsilon * direction / (tf.norm(direction) + 1e-12)
        embeddings.assign_add(delta)
        with tf.GradientTape() as tape:
            _, losses = self._forward(batch, training=True)
            adversarial = tf.reduce_sum(tf.stop_gradient(weights) * self._loss_vector(losses))
        grads = tape.gradient(adversarial, variables)
        embeddings.assign_sub(delta)
        self.adversarial_tracker.update_state(adversarial)
        return grads

    def train_step(self, batch):
        batch = self._augment(batch)
        encoder_vars, head_vars = self._split_variables()
        variables = encoder_vars + head_vars
        with tf.GradientTape(persistent=self.weighting.needs_persistent_tape) as tape:
            outputs, losses = self._forward(batch, training=True)
            terms = self.weighting.terms(self._loss_vector(losses))
        weights = terms.weights
        grads = self.weighting.gradients(tape, terms, variables, self.shared_variables(), self.last_shared_kernel())
        del tape
        if self.adversarial_epsilon:
            index = [id(v) for v in variables].index(id(self._encoder().word_embeddings))
            adversarial = self._adversarial_gradients(batch, weights, variables, grads[index])
            grads = [_add_gradients(a, b) for a, b in zip(grads, adversarial)]
        self._apply(grads, encoder_vars, head_vars)
        results = self._update_metrics(batch, outputs, losses, tf.add_n(terms.weighted))
        # Current (not averaged) weights: what the method chose at this step.
        return {**results, **{weight_metric(t.name): weights[i] for i, t in enumerate(self.tasks)}}

    def _apply(self, grads, encoder_vars, head_vars):
        n = len(encoder_vars)
        if self.encoder_optimizer is not None and encoder_vars:
            self.encoder_optimizer.apply_gradients(zip(grads[:n], encoder_vars))
            self.optimizer.apply_gradients(zip(grads[n:], head_vars))
        else:
            self.optimizer.apply_gradients(zip(grads, encoder_vars + head_vars))

    def test_step(self, batch):
        outputs, losses = self._forward(batch, training=False)
        return self._update_metrics(batch, outputs, losses, self.total_loss(losses))
