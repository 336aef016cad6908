"""Training through MultiTaskModel with each loss weighting, gate and weight logging (TensorBoard and
curves), training-only token augmentation, and FGM adversarial training."""
from __future__ import annotations

import json

import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from models import features
from models.augmentation import TokenAugmentation
from models.loss_weighting import make_loss_weighting
from models.model import CurveRecorder
from models.multitask import MultiTaskModel, gate_metric, weight_metric
from models.network import build_network
from models.spec import LossWeightingSpec, parse_spec
from models.tasks import make_task


def _spec(architecture: str):
    return parse_spec({
        "model_name": "m",
        "sources": [{"simulated": {"rows": 10}}],
        "features": {"numeric": ["x", "y"]},
        "tasks": [
            {"name": "a", "type": "binary", "label": "a", "blessing_threshold": 0.5},
            {"name": "b", "type": "regression", "label": "b"},
        ],
        "architecture": {"type": architecture, "num_experts": 3, "expert_units": [8]},
        "training": {"shared_units": [8], "tower_units": [4], "dropout": 0.0},
    })


def _model(method: str, architecture: str = "mmoe"):
    spec = _spec(architecture)
    tasks = [make_task(t) for t in spec.tasks]
    weighting = make_loss_weighting(LossWeightingSpec(method=method, dwa_window_steps=3), tasks)
    model = MultiTaskModel(build_network(spec, tasks, {}), tasks, weighting=weighting)
    model.compile(optimizer=tf_keras.optimizers.Adam(0.03))
    return spec, model


def _data(spec, n=64, seed=0):
    x = np.random.default_rng(seed).normal(size=(n, 4)).astype("float32")
    a, b = spec.tasks
    mask_b = np.ones(n, "float32")
    mask_b[: n // 4] = 0.0  # b is unlabelled on a quarter of the rows
    return {features.NUMERIC: tf.constant(x),
            features.label_key(a): tf.constant((x[:, 0] > 0).astype("float32")),
            features.mask_key(a): tf.ones([n]),
            features.label_key(b): tf.constant(x[:, 1] * 2.0),
            features.mask_key(b): tf.constant(mask_b)}


@pytest.mark.parametrize("method", ["fixed", "uncertainty", "gradnorm", "dwa", "pcgrad"])
def test_every_weighting_trains_and_logs_task_weights(method):
    spec, model = _model(method)
    batch = _data(spec)
    first = model.train_step(batch)
    for _ in range(25):
        logs = model.train_step(batch)
    assert float(logs["a_loss"]) < float(first["a_loss"]) and float(logs["b_loss"]) < float(first["b_loss"])
    weights = [float(logs[weight_metric(t.name)]) for t in spec.tasks]
    assert all(np.isfinite(weights)) and all(w > 0 for w in weights)
    if method == "fixed" or method == "pcgrad":
        assert weights == [1.0, 1.0]
    if method == "gradnorm":
        assert sum(weights) == pytest.approx(2.0, rel=1e-5)
    if method == "uncertainty":
        assert weights != [1.0, 0.5]  # the learned log-variances moved away from their start


def test_gate_means_are_logged_per_task_and_expert():
    spec, model = _model("fixed", "mmoe")
    logs = model.train_step(_data(spec))
    for task in ("a", "b"):
        means = [float(logs[gate_metric(task, f"expert{i}")]) for i in range(3)]
        assert sum(means) == pytest.approx(1.0, rel=1e-5)


def test_ple_gates_are_named_by_expert():
    spec, model = _model("fixed", "ple")
    logs = model.train_step(_data(spec))
    names = [k for k in logs if k.startswith("gate_a_")]
    assert sorted(names) == ["gate_a_a0", "gate_a_shared0", "gate_a_shared1"]


def test_weights_and_gates_reach_tensorboard_and_the_curves_file(tmp_path):
    spec, model = _model("dwa", "mmoe")
    data = tf.data.Dataset.from_tensor_slices(_data(spec, n=96)).batch(16)
    curves = CurveRecorder(every=2)
    model.fit(data, epochs=1, verbose=0,
              callbacks=[tf_keras.callbacks.TensorBoard(log_dir=str(tmp_path / "tb"), update_freq=1), curves])
    tags = set()
    for path in (tmp_path / "tb" / "train").glob("events.out.tfevents.*"):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            tags |= {v.tag for v in event.summary.value}
    assert {"batch_weight_a", "batch_weight_b", "batch_gate_a_expert0", "batch_gate_b_expert2"} <= tags
    curves.write(str(tmp_path / "curves.json"))
    saved = json.loads((tmp_path / "curves.json").read_text())
    assert saved["step"] == [1, 2, 4, 6]
    assert len(saved["weight_a"]) == 4 and len(saved["gate_b_expert1"]) == 4
    # Per-task losses ride along (the transfer report draws them); the log-loss metric does not.
    assert len(saved["a_loss"]) == 4 and len(saved["loss"]) == 4 and "a_log_loss" not in saved
    # DWA starts adapting once two windows of 3 steps are closed (after step 6).
    assert saved["weight_a"][0] == 1.0


def test_token_augmentation_spares_special_tokens_and_padding():
    cls, sep, mask_id = 101, 102, 103
    ids = tf.constant([[cls] + list(range(1000, 1030)) + [sep] + [0] * 8] * 50, tf.int64)
    attention = tf.cast(ids != 0, tf.int64)
    augment = TokenAugmentation(token_dropout=0.2, mask_rate=0.3, mask_id=mask_id, protected_ids=[0, cls, sep])
    new_ids, new_attention = (t.numpy() for t in augment(ids, attention))
    assert np.all(new_ids[:, 0] == cls) and np.all(new_ids[:, 31] == sep) and np.all(new_ids[:, 32:] == 0)
    assert np.all(new_attention[:, [0, 31]] == 1) and np.all(new_attention[:, 32:] == 0)
    words = slice(1, 31)
    dropped = (new_attention[:, words] == 0).mean()
    masked = (new_ids[:, words] == mask_id).mean()
    assert 0.15 < dropped < 0.25 and 0.25 < masked < 0.35
    assert not np.any((new_ids[:, words] == mask_id) & (new_attention[:, words] == 0))
    assert TokenAugmentation.from_config(augment.get_config()).mask_rate == 0.3


def _text_batch(model, transformed, rows=16):
    data = transformed["data"][:rows]
    keys = set(model.network.input_names) | {k for k in data[0] if k.startswith(("label__", "mask__"))}
    return {k: tf.constant(np.stack([r[k] for r in data])) for k in keys}


def test_augmentation_changes_training_only(tiny_spec, transformed):
    from models.model import build_model, cardinalities

    spec = tiny_spec.model_copy(update={"augmentation": {"token_dropout": 0.2, "mask_rate": 0.2}})
    spec = spec.model_validate(spec.model_dump())
    model = build_model(spec, cardinalities(spec, transformed["output"]))
    assert model.augmentation is not None
    batch = _text_batch(model, transformed)
    augmented = model._augment(batch)
    assert not np.array_equal(augmented[features.INPUT_IDS].numpy(), batch[features.INPUT_IDS].numpy())
    inputs = {k: batch[k] for k in model.network.input_names}
    # Inference (and so every exported signature) never augments: two calls agree exactly.
    first, second = model(inputs, training=False), model(inputs, training=False)
    for task in spec.tasks:
        np.testing.assert_array_equal(first[task.name].numpy(), second[task.name].numpy())


def test_fgm_adds_an_adversarial_loss_restores_embeddings_and_exports(tiny_spec, transformed, tmp_path):
    from models.export import export_serving_model
    from models.model import build_model, cardinalities
    from models.multitask import ENCODER_LAYER
    from tests.conftest import serialize

    spec = tiny_spec.model_validate({**tiny_spec.model_dump(mode="json"), "adversarial": {"epsilon": 5.0}})
    model = build_model(spec, cardinalities(spec, transformed["output"]))
    batch = _text_batch(model, transformed)
    model(({k: batch[k] for k in model.network.input_names}))
    for optimizer in (model.optimizer, model.encoder_optimizer):
        optimizer.learning_rate.assign(0.0)
    embeddings = model.network.get_layer(ENCODER_LAYER).word_embeddings
    before = embeddings.numpy().copy()
    logs = model.train_step(batch)
    np.testing.assert_allclose(embeddings.numpy(), before, atol=1e-6)
    # The perturbation moves along the loss gradient, so the loss on perturbed embeddings is higher.
    assert float(logs["adversarial_loss"]) > float(logs["loss"])
    export_serving_model(model, transformed["output"], spec, str(tmp_path / "1"))
    loaded = tf.saved_model.load(str(tmp_path / "1"))
    examples = [serialize(raw, spec.features.all_columns()) for raw in transformed["raw"][:8]]
    got = loaded.signatures["serving_default"](examples=tf.constant(examples))
    want = model({k: batch[k][:8] for k in model.network.input_names})
    for task in spec.tasks:
        np.testing.assert_allclose(got[task.name].numpy(), want[task.name].numpy(), rtol=1e-4, atol=1e-5)
