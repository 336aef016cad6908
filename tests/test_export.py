"""The exported SavedModel on raw tf.Examples equals Transform + model on the same rows."""
from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_text  # noqa: F401  (the Transform graph inside the SavedModel tokenizes)

from models import features
from models.export import EXAMPLES_INPUT, TRANSFORM_SIGNATURE
from tests.conftest import serialize


@pytest.fixture(scope="module")
def exported_dir(trained_export):
    return trained_export[1]


@pytest.fixture(scope="module")
def exported(trained_export):
    return trained_export[0], tf.saved_model.load(str(trained_export[1]))


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


def _examples(spec, transformed, n):
    return tf.constant([serialize(raw, spec.features.all_columns()) for raw in transformed["raw"][:n]])


def test_classify_and_regress_signatures_follow_the_task_types(tiny_spec, exported, transformed):
    _, loaded = exported
    examples = _examples(tiny_spec, transformed, 6)
    default = loaded.signatures["serving_default"](examples=examples)
    for task in tiny_spec.tasks:
        if task.type.value == "regression":
            out = loaded.signatures[f"regress_{task.name}"](inputs=examples)
            np.testing.assert_allclose(out["outputs"].numpy(), default[task.name].numpy(), rtol=1e-5)
            continue
        out = loaded.signatures[f"classify_{task.name}"](inputs=examples)
        scores = out["scores"].numpy()
        classes = [c.decode() for c in out["classes"].numpy()[0]]
        if task.type.value == "binary":
            assert classes == ["0", "1"]
            np.testing.assert_allclose(scores[:, 1], default[task.name].numpy(), rtol=1e-5)
        else:
            assert classes == task.classes
            np.testing.assert_allclose(scores, default[task.name].numpy(), rtol=1e-5)


def test_method_names_let_tf_serving_classify_and_regress(tiny_spec, exported_dir):
    from tensorflow.core.protobuf import saved_model_pb2

    proto = saved_model_pb2.SavedModel.FromString((exported_dir / "saved_model.pb").read_bytes())
    defs = proto.meta_graphs[0].signature_def
    for task in tiny_spec.tasks:
        if task.type.value == "regression":
            assert defs[f"regress_{task.name}"].method_name == "tensorflow/serving/regress"
        else:
            assert defs[f"classify_{task.name}"].method_name == "tensorflow/serving/classify"
    assert defs["serving_default"].method_name == "tensorflow/serving/predict"


def test_predict_raw_equals_serving_default(tiny_spec, exported, transformed):
    _, loaded = exported
    raw_rows = transformed["raw"][:8]
    signature = loaded.signatures["predict_raw"]
    columns = {}
    for name, spec in signature.structured_input_signature[1].items():
        # Rows of the generated data may leave a text cell empty; predict_raw takes "" for those.
        default = b"" if spec.dtype == tf.string else 0
        columns[name] = tf.constant([(r[name] or [default])[0] for r in raw_rows], dtype=spec.dtype)
    got = signature(**columns)
    want = loaded.signatures["serving_default"](examples=_examples(tiny_spec, transformed, 8))
    for task in tiny_spec.tasks:
        np.testing.assert_allclose(got[task.name].numpy(), want[task.name].numpy(), rtol=1e-4, atol=1e-5)


def test_warmup_file_holds_a_predict_request_the_model_answers(tiny_spec, exported, exported_dir, transformed):
    from tensorflow_serving.apis import prediction_log_pb2

    _, loaded = exported
    records = list(tf.data.TFRecordDataset(str(exported_dir / "assets.extra" / "tf_serving_warmup_requests")))
    assert len(records) == 1
    log = prediction_log_pb2.PredictionLog.FromString(records[0].numpy())
    request = log.predict_log.request
    assert request.model_spec.name == tiny_spec.model_name
    examples = tf.make_ndarray(request.inputs["examples"])
    assert len(examples) == 4
    out = loaded.signatures["serving_default"](examples=tf.constant(examples))
    assert set(out) == {t.name for t in tiny_spec.tasks}


# The TF Text ops linked into TF Serving 2.16.1's tensorflow_model_server (TF Text 2.12.1) that a
# BERT tokenizer needs. A model needing any other non-core op would not load in the stock image.
TF_SERVING_TEXT_OPS = {"CaseFoldUTF8", "NormalizeUTF8", "RegexSplitWithOffsets", "WordpieceTokenizeWithOffsets"}


def test_export_needs_no_op_the_stock_tf_serving_lacks(exported_dir):
    import subprocess
    import sys

    from tests.conftest import ROOT

    proc = subprocess.run([sys.executable, "-m", "serving.model_ops", str(exported_dir)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    needed = set(proc.stdout.split())
    assert needed and needed <= TF_SERVING_TEXT_OPS, needed - TF_SERVING_TEXT_OPS
