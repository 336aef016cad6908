"""Mixture-of-experts sharing layers: MMoE (Ma et al. 2018) and PLE / CGC (Tang et al. 2020).

Each layer maps the shared input to one representation per task; called with `return_gates=True` it
also returns the (last level's) gate weights {task: [batch, experts]}, so callers can log how tasks
share experts. Nothing is stored on the layer: state written during a traced call would leak tensors.
"""
from __future__ import annotations

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import tensorflow as tf  # noqa: E402
import tf_keras  # noqa: E402


def _expert(units: list[int], name: str) -> tf_keras.Sequential:
    return tf_keras.Sequential([tf_keras.layers.Dense(n, activation="relu") for n in units], name=name)


def _mix(gate_logits: tf.Tensor, experts: list[tf.Tensor]) -> tuple[tf.Tensor, tf.Tensor]:
    """Softmax gate over experts -> (weighted sum [batch, units], gate weights [batch, experts])."""
    weights = tf.nn.softmax(gate_logits, axis=-1)
    stacked = tf.stack(experts, axis=1)  # [batch, experts, units]
    return tf.reduce_sum(stacked * weights[:, :, None], axis=1), weights


class MMoE(tf_keras.layers.Layer):
    """K shared experts; one softmax gate per task."""

    def __init__(self, task_names: list[str], num_experts: int = 4, expert_units: list[int] | None = None, **kwargs):
        super().__init__(**kwargs)
        self.task_names = list(task_names)
        self.num_experts = num_experts
        self.expert_units = list(expert_units or [64])
        self.experts = [_expert(self.expert_units, f"expert{i}") for i in range(num_experts)]
        self.gates = {t: tf_keras.layers.Dense(num_experts, name=f"gate_{t}") for t in self.task_names}

    def call(self, inputs, return_gates: bool = False):
        experts = [e(inputs) for e in self.experts]
        outputs, gates = {}, {}
        for task in self.task_names:
            outputs[task], gates[task] = _mix(self.gates[task](inputs), experts)
        return (outputs, gates) if return_gates else outputs

    def expert_names(self, task: str) -> list[str]:
        """Names of the experts `task`'s gate weighs, in gate order."""
        return [f"expert{i}" for i in range(self.num_experts)]

    def get_config(self) -> dict:
        return {**super().get_config(), "task_names": self.task_names, "num_experts": self.num_experts,
                "expert_units": self.expert_units}


class PLE(tf_keras.layers.Layer):
    """Progressive Layered Extraction: `levels` CGC layers of shared and task-specific experts.

    At every level each task gates over its own experts plus the shared ones; below the last level a
    shared gate over all experts feeds the next level's shared experts.
    """

    def __init__(self, task_names: list[str], levels: int = 2, num_shared_experts: int = 2,
                 num_task_experts: int = 1, expert_units: list[int] | None = None, **kwargs):
        super().__init__(**kwargs)
        self.task_names = list(task_names)
        self.levels = levels
        self.num_shared_experts = num_shared_experts
        self.num_task_experts = num_task_experts
        self.expert_units = list(expert_units or [64])
        n_all = num_shared_experts + num_task_experts * len(self.task_names)
        self.shared = [[_expert(self.expert_units, f"l{l}_shared{i}") for i in range(num_shared_experts)]
                       for l in range(levels)]
        self.specific = [{t: [_expert(self.expert_units, f"l{l}_{t}{i}") for i in range(num_task_experts)]
                          for t in self.task_names} for l in range(levels)]
        self.task_gates = [{t: tf_keras.layers.Dense(num_task_experts + num_shared_experts, name=f"l{l}_gate_{t}")
                            for t in self.task_names} for l in range(levels)]
        self.shared_gates = [tf_keras.layers.Dense(n_all, name=f"l{l}_gate_shared") for l in range(levels - 1)]

    def call(self, inputs, return_gates: bool = False):
        task_in = {t: inputs for t in self.task_names}
        shared_in, gates = inputs, {}
        for level in range(self.levels):
            shared = [e(shared_in) for e in self.shared[level]]
            specific = {t: [e(task_in[t]) for e in self.specific[level][t]] for t in self.task_names}
            task_out = {}
            for t in self.task_names:
                task_out[t], gates[t] = _mix(self.task_gates[level][t](task_in[t]), specific[t] + shared)
            if level < self.levels - 1:
                every = [e for t in self.task_names for e in specific[t]] + shared
                shared_in, _ = _mix(self.shared_gates[level](shared_in), every)
            task_in = task_out
        return (task_in, gates) if return_gates else task_in

    def expert_names(self, task: str) -> list[str]:
        """Names of the experts `task`'s last-level gate weighs, in gate order."""
        return ([f"{task}{i}" for i in range(self.num_task_experts)]
                + [f"shared{i}" for i in range(self.num_shared_experts)])

    def get_config(self) -> dict:
        return {**super().get_config(), "task_names": self.task_names, "levels": self.levels,
                "num_shared_experts": self.num_shared_experts, "num_task_experts": self.num_task_experts,
                "expert_units": self.expert_units}
