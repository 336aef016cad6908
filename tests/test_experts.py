"""MMoE and PLE: shapes, normalised gates, config round trips, and training through MultiTaskModel."""
from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from models import features
from models.experts import MMoE, PLE
from models.multitask import MultiTaskModel
from models.network import SHARING_LAYER, build_network
from models.spec import parse_spec
from models.tasks import make_task

TASKS = ["click", "purchase", "churn"]


@pytest.mark.parametrize("layer", [
    MMoE(TASKS, num_experts=3, expert_units=[8]),
    PLE(TASKS, levels=2, num_shared_experts=2, num_task_experts=1, expert_units=[8]),
])
def test_one_output_per_task_and_gates_sum_to_one(layer):
    x = tf.random.normal([5, 12], seed=0)
    out, all_gates = layer(x, return_gates=True)
    assert sorted(out) == sorted(TASKS)
    for task in TASKS:
        assert out[task].shape == (5, 8)
        gates = all_gates[task].numpy()
        np.testing.assert_allclose(gates.sum(axis=1), 1.0, rtol=1e-5)
        assert np.all(gates >= 0)
    expected_width = 3 if isinstance(layer, MMoE) else 1 + 2
    assert all_gates[TASKS[0]].shape == (5, expected_width)


def test_mmoe_output_is_the_gate_weighted_sum_of_experts():
    layer = MMoE(["a"], num_experts=2, expert_units=[4])
    x = tf.random.normal([3, 6], seed=1)
    out, gates = layer(x, return_gates=True)
    out = out["a"].numpy()
    experts = np.stack([e(x).numpy() for e in layer.experts], axis=1)
    weights = gates["a"].numpy()
    np.testing.assert_allclose(out, (experts * weights[:, :, None]).sum(axis=1), rtol=1e-5)


@pytest.mark.parametrize("cls", [MMoE, PLE])
def test_config_round_trip(cls):
    layer = cls(TASKS, expert_units=[8])
    clone = cls.from_config(layer.get_config())
    assert clone.get_config() == layer.get_config()


@pytest.mark.parametrize("arch", [{"type": "mmoe", "num_experts": 3, "expert_units": [8]},
                                  {"type": "ple", "levels": 2, "expert_units": [8]}])
def test_networks_with_experts_train(arch):
    spec = parse_spec({
        "model_name": "m", "sources": [{"simulated": {"rows": 10}}], "features": {"numeric": ["x", "y"]},
        "tasks": [{"name": "a", "type": "binary", "label": "a", "blessing_threshold": 0.5},
                  {"name": "b", "type": "regression", "label": "b"}],
        "architecture": arch, "training": {"shared_units": [8], "tower_units": [4], "dropout": 0.0},
    })
    tasks = [make_task(t) for t in spec.tasks]
    network = build_network(spec, tasks, {})
    assert type(network.get_layer(SHARING_LAYER)).__name__.lower() == arch["type"]
    model = MultiTaskModel(network, tasks)
    model.compile(optimizer=tf_keras.optimizers.Adam(0.05))
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 4)).astype("float32")
    batch = {features.NUMERIC: tf.constant(x),
             features.label_key(spec.tasks[0]): tf.constant((x[:, 0] > 0).astype("float32")),
             features.mask_key(spec.tasks[0]): tf.ones([64]),
             features.label_key(spec.tasks[1]): tf.constant(x[:, 1] * 2.0),
             features.mask_key(spec.tasks[1]): tf.ones([64])}
    first = float(model.train_step(batch)["loss"])
    for _ in range(30):
        last = float(model.train_step(batch)["loss"])
    assert last < first


def test_a_ple_model_exports_and_serves_like_in_process(tiny_spec, transformed, tmp_path):
    from models.export import export_serving_model
    from models.model import build_model, cardinalities
    from tests.conftest import serialize

    spec = tiny_spec.model_copy(update={"architecture": tiny_spec.architecture.model_copy(
        update={"type": "ple", "expert_units": [16]})})
    model = build_model(spec, cardinalities(spec, transformed["output"]))
    export_serving_model(model, transformed["output"], spec, str(tmp_path / "1"))
    loaded = tf.saved_model.load(str(tmp_path / "1"))
    rows = transformed["data"][:8]
    want = model({k: tf.constant(np.stack([r[k] for r in rows])) for k in model.network.input_names})
    examples = [serialize(raw, spec.features.all_columns()) for raw in transformed["raw"][:8]]
    got = loaded.signatures["serving_default"](examples=tf.constant(examples))
    for task in spec.tasks:
        np.testing.assert_allclose(got[task.name].numpy(), want[task.name].numpy(), rtol=1e-4, atol=1e-5)
