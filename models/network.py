"""The shared-bottom multi-task network: BERT text encoder + tabular features -> shared MLP -> towers."""
from __future__ import annotations

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import tensorflow as tf  # noqa: E402
import tf_keras  # noqa: E402

from models import features  # noqa: E402
from models.encoders import TextEncoder  # noqa: E402
from models.experts import MMoE, PLE  # noqa: E402
from models.multitask import ENCODER_LAYER, gate_output_key  # noqa: E402
from models.spec import ProjectSpec  # noqa: E402
from models.tasks import Task  # noqa: E402


def _embedding_dim(cardinality: int) -> int:
    # The usual rule of thumb (about 6 * cardinality^0.25), capped for small data.
    return int(min(32, max(4, round(6 * cardinality ** 0.25))))


def model_inputs(spec: ProjectSpec) -> dict[str, tf_keras.Input]:
    inputs = {}
    if spec.features.text:
        for key in (features.INPUT_IDS, features.ATTENTION_MASK, features.SEGMENT_IDS):
            inputs[key] = tf_keras.Input(shape=(spec.sequence_length,), dtype=tf.int64, name=key)
    if spec.features.numeric:
        # z-scores followed by one missing-value indicator per numeric column
        inputs[features.NUMERIC] = tf_keras.Input(
            shape=(2 * len(spec.features.numeric),), dtype=tf.float32, name=features.NUMERIC
        )
    index_keys = ([features.categorical_key(c) for c in spec.features.categorical]
                  + [features.id_key(c) for c in spec.features.ids]
                  + [features.bucket_key(c) for c in spec.features.buckets])
    for key in index_keys:
        inputs[key] = tf_keras.Input(shape=(), dtype=tf.int64, name=key)
    return inputs


def _mlp(units: list[int], dropout: float, name: str) -> tf_keras.Sequential:
    layers = []
    for i, n in enumerate(units):
        layers += [tf_keras.layers.Dense(n, activation="relu", name=f"{name}_dense{i}"),
                   tf_keras.layers.Dropout(dropout, name=f"{name}_dropout{i}")]
    return tf_keras.Sequential(layers, name=name)


def build_network(spec: ProjectSpec, tasks: list[Task], cardinalities: dict[str, int]) -> tf_keras.Model:
    """Returns a functional model: transformed features -> {task name: logits}.

    `cardinalities` maps each categorical / id / bucket input key to its number of distinct indices.
    """
    inputs = model_inputs(spec)
    parts = []
    if spec.features.text:
        encoder = TextEncoder(spec.encoder.model_dump(mode="json"), spec.sequence_length, name=ENCODER_LAYER)
        parts.append(encoder(inputs[features.INPUT_IDS], inputs[features.ATTENTION_MASK]))
    if spec.features.numeric:
        parts.append(inputs[features.NUMERIC])
    for key, size in sorted(cardinalities.items()):
        embed = tf_keras.layers.Embedding(size, _embedding_dim(size), name=f"embed_{key}")
        parts.append(embed(inputs[key]))
    joined = parts[0] if len(parts) == 1 else tf_keras.layers.Concatenate(name="joined")(parts)
    shared = _mlp(spec.training.shared_units, spec.training.dropout, "shared_bottom")(joined)
    sharing = _sharing(spec, [t.name for t in tasks])
    outputs = {}
    if isinstance(sharing, (MMoE, PLE)):
        # Gate weights ride along as extra outputs so training can log how tasks share experts.
        per_task, gates = sharing(shared, return_gates=True)
        outputs.update({gate_output_key(t): g for t, g in gates.items()})
    else:
        per_task = sharing(shared)
    for task in tasks:
        tower = _mlp(spec.training.tower_units, spec.training.dropout, f"tower_{task.name}")(per_task[task.name])
        outputs[task.name] = tf_keras.layers.Dense(task.logits_dim, name=f"logits_{task.name}")(tower)
    return tf_keras.Model(inputs=inputs, outputs=outputs, name="multitask_network")


SHARING_LAYER = "task_sharing"


def _sharing(spec: ProjectSpec, task_names: list[str]):
    """The layer that turns the shared representation into one input per task tower."""
    arch = spec.architecture
    if arch.type == "mmoe":
        return MMoE(task_names, arch.num_experts, arch.expert_units, name=SHARING_LAYER)
    if arch.type == "ple":
        return PLE(task_names, arch.levels, arch.num_shared_experts, arch.num_task_experts, arch.expert_units,
                   name=SHARING_LAYER)
    return lambda shared: {t: shared for t in task_names}
