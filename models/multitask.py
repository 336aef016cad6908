"""MultiTaskModel: composes Tasks over a network; L = sum_t alpha_t * L_t with per-task label masks."""
from __future__ import annotations

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import tensorflow as tf  # noqa: E402
import tf_keras  # noqa: E402

from models import features  # noqa: E402
from models.tasks import Task  # noqa: E402

ENCODER_LAYER = "text_encoder"


class MultiTaskModel(tf_keras.Model):
    """Trains `network` on every task at once; a task's loss and metrics skip rows it does not label."""

    def __init__(self, network: tf_keras.Model, tasks: list[Task], encoder_optimizer=None, **kwargs):
        super().__init__(**kwargs)
        self.network = network
        self.tasks = tasks
        self.encoder_optimizer = encoder_optimizer
        self.loss_trackers = {t.name: tf_keras.metrics.Mean(name=f"{t.name}_loss") for t in tasks}
        self.total_tracker = tf_keras.metrics.Mean(name="loss")
        self.task_metrics = {t.name: t.make_metrics() for t in tasks}

    @property
    def metrics(self):
        ms = [self.total_tracker, *self.loss_trackers.values()]
        for t in self.tasks:
            ms += self.task_metrics[t.name]
        return ms

    def call(self, inputs, training=None):
        logits = self.network({k: inputs[k] for k in self.network.input_names}, training=training)
        return {t.name: t.activation(logits[t.name]) for t in self.tasks}

    def task_losses(self, batch, logits) -> dict[str, tf.Tensor]:
        return {
            t.name: t.loss(batch[features.label_key(t.spec)], logits[t.name], batch[features.mask_key(t.spec)])
            for t in self.tasks
        }

    def total_loss(self, losses: dict[str, tf.Tensor]) -> tf.Tensor:
        return tf.add_n([t.weight * losses[t.name] for t in self.tasks])

    def _forward(self, batch, training):
        logits = self.network({k: batch[k] for k in self.network.input_names}, training=training)
        losses = self.task_losses(batch, logits)
        return logits, losses, self.total_loss(losses)

    def _update_metrics(self, batch, logits, losses, total):
        self.total_tracker.update_state(total)
        for t in self.tasks:
            mask = batch[features.mask_key(t.spec)]
            # A batch with no label for a task must not count as a zero loss for it.
            self.loss_trackers[t.name].update_state(losses[t.name], sample_weight=tf.reduce_sum(mask))
            # Keras metrics want [batch, 1] labels and weights next to [batch, k] predictions.
            predictions = t.activation(logits[t.name])
            if predictions.shape.rank == 1:
                predictions = predictions[:, None]
            labels = batch[features.label_key(t.spec)][:, None]
            for m in self.task_metrics[t.name]:
                m.update_state(labels, predictions, sample_weight=mask[:, None])
        return self._results()

    def _results(self):
        out = {"loss": self.total_tracker.result()}
        for t in self.tasks:
            out[f"{t.name}_loss"] = self.loss_trackers[t.name].result()
            for m in self.task_metrics[t.name]:
                out[f"{t.name}_{m.name}"] = m.result()
        return out

    def _split_variables(self):
        """(encoder variables, everything else): the pretrained encoder is tuned with a smaller step."""
        names = {layer.name for layer in self.network.layers}
        encoder_vars = self.network.get_layer(ENCODER_LAYER).trainable_variables if ENCODER_LAYER in names else []
        ids = {id(v) for v in encoder_vars}
        return encoder_vars, [v for v in self.trainable_variables if id(v) not in ids]

    def train_step(self, batch):
        with tf.GradientTape() as tape:
            logits, losses, total = self._forward(batch, training=True)
        encoder_vars, head_vars = self._split_variables()
        if self.encoder_optimizer is not None and encoder_vars:
            grads = tape.gradient(total, encoder_vars + head_vars)
            self.encoder_optimizer.apply_gradients(zip(grads[: len(encoder_vars)], encoder_vars))
            self.optimizer.apply_gradients(zip(grads[len(encoder_vars):], head_vars))
        else:
            variables = encoder_vars + head_vars
            self.optimizer.apply_gradients(zip(tape.gradient(total, variables), variables))
        return self._update_metrics(batch, logits, losses, total)

    def test_step(self, batch):
        logits, losses, total = self._forward(batch, training=False)
        return self._update_metrics(batch, logits, losses, total)
