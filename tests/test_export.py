"""The exported SavedModel on raw tf.Examples equals Transform + model on the same rows."""
from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_text  # noqa: F401  (the Transform graph inside the SavedModel tokenizes)

from models import features
from models.export import EXAMPLES_INPUT, TRANSFORM_SIGNATURE, export_serving_model
from models.model import build_model, cardinalities
from tests.conftest import serialize


@pytest.fixture(scope="module")
def exported(tiny_spec, transformed, tmp_path_factory):
    model = build_model(tiny_spec, cardinalities(tiny_spec, transformed["output"]))
    export_dir = str(tmp_path_factory.mktemp("export") / "1")
    export_serving_model(model, transformed["output"], tiny_spec, export_dir)
    return model, tf.saved_model.load(export_dir)


def _batch(rows: list[dict], keys: list[str]) -> dict:
    return {k: tf.constant(np.stack([r[k] for r in rows])) for k in keys}


def test_serving_outputs_equal_transform_then_model(tiny_spec, transformed, exported):
    model, loaded = exported
    rows = transformed["data"][:24]
    expected = model(_batch(rows, list(model.network.input_names)), training=False)
    # Serving requests carry features only: the labels are stripped from the raw rows.
    examples = [serialize(raw, tiny_spec.features.all_columns()) for raw in transformed["raw"][:24]]
    got = loaded.signatures["serving_default"](**{EXAMPLES_INPUT: tf.constant(examples)})
    assert sorted(got) == sorted(t.name for t in tiny_spec.tasks)
    for task in tiny_spec.tasks:
        np.testing.assert_allclose(got[task.name].numpy(), expected[task.name].numpy(), rtol=1e-4, atol=1e-5)


def test_output_shapes_per_task_type(tiny_spec, transformed, exported):
    _, loaded = exported
    examples = [serialize(raw, tiny_spec.features.all_columns()) for raw in transformed["raw"][:5]]
    got = loaded.signatures["serving_default"](**{EXAMPLES_INPUT: tf.constant(examples)})
    for task in tiny_spec.tasks:
        out = got[task.name].numpy()
        if task.type.value == "multiclass":
            assert out.shape == (5, task.num_classes)
            np.testing.assert_allclose(out.sum(axis=1), 1.0, rtol=1e-5)
        else:
            assert out.shape == (5,)
        if task.type.value == "binary":
            assert np.all((out > 0) & (out < 1))


def test_transform_signature_returns_labels_and_masks(tiny_spec, transformed, exported):
    _, loaded = exported
    columns = tiny_spec.input_columns()
    examples = [serialize(raw, columns) for raw in transformed["raw"][:16]]
    got = loaded.signatures[TRANSFORM_SIGNATURE](**{EXAMPLES_INPUT: tf.constant(examples)})
    for task in tiny_spec.tasks:
        want = np.array([r[features.mask_key(task)] for r in transformed["data"][:16]])
        np.testing.assert_array_equal(got[features.mask_key(task)].numpy(), want)
