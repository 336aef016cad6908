"""The Evaluator's config: metrics per task type, per-user metrics, slices and blessing thresholds, run
through TFMA itself on rows whose predictions are known (no model needed: TFMA reads them from
features), so the custom metrics and the thresholds are checked against hand-computed values."""
from __future__ import annotations

import json

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_model_analysis as tfma

from models.evaluation import eval_config
from models.spec import parse_spec
from pipeline.report import _describe_failure

# user, click label (None: unlabelled), click score, intent label, intent probabilities
ROWS = [
    ("u1", 1, 0.9, 0, [0.8, 0.1, 0.1]),
    ("u1", 0, 0.5, 0, [0.2, 0.7, 0.1]),
    ("u1", 0, 0.7, 1, [0.1, 0.8, 0.1]),
    ("u1", None, 0.0, 1, [0.3, 0.6, 0.1]),  # click unlabelled: would pull u1's AUC below 1 if counted
    ("u2", 1, 0.2, 2, [0.1, 0.1, 0.8]),
    ("u2", 0, 0.6, 2, [0.6, 0.2, 0.2]),
    ("u2", 1, 0.8, None, [0.9, 0.05, 0.05]),  # intent unlabelled
    ("u2", 0, 0.1, None, [0.9, 0.05, 0.05]),
    ("u3", 0, 0.4, None, [0.9, 0.05, 0.05]),
    ("u3", 0, 0.3, None, [0.9, 0.05, 0.05]),
]
# GAUC: u1 AUC 1 (3 labelled rows), u2 AUC 3/4 (4 rows: .2<.6, .2>.1, .8>.6, .8>.1), u3 has no positive.
GAUC = (3 * 1.0 + 4 * 0.75) / 7
# NDCG@10: u1 ranks its positive first -> 1; u2 ranks 1,0,1,0 -> (1 + 1/log2 4) / (1 + 1/log2 3).
NDCG = (1.0 + (1 + 0.5) / (1 + 1 / np.log2(3))) / 2
# Intent (argmax vs label over the 6 labelled rows): class 0 P 1/2 R 1/2, class 1 P 2/3 R 1,
# class 2 P 1 R 1/2 -> F1 1/2, 4/5, 2/3.
MACRO_F1 = (0.5 + 0.8 + 2 / 3) / 3


def _spec(**evaluation):
    return parse_spec({
        "model_name": "shop",
        "sources": [{"path": "x.csv"}],
        "features": {"text": ["query"], "categorical": ["device"], "ids": ["user_id"]},
        "tasks": [
            {"name": "click", "type": "binary", "label": "click", "metrics": ["auc", "gauc", "ndcg_at_10"],
             "blessing_threshold": 0.5},
            {"name": "intent", "type": "multiclass", "label": "intent", "classes": ["a", "b", "c"]},
            {"name": "spend", "type": "regression", "label": "spend", "max_loss": 0.3},
        ],
        "evaluation": {"group_by": "user_id", "slice_by": ["device"], **evaluation},
    })


def _metric_names(config, task: str) -> list[str]:
    return [json.loads(m.config)["name"] if m.config else m.class_name
            for s in config.metrics_specs if list(s.output_names) == [task] for m in s.metrics]


def test_every_task_type_gets_its_standard_metrics_and_per_user_metrics_group_by_the_user():
    config = eval_config(_spec())
    assert _metric_names(config, "click") == ["ExampleCount", "auc", "pr_auc", "log_loss", "calibration",
                                              "gauc", "ndcg_at_10"]
    assert _metric_names(config, "intent") == ["ExampleCount", "accuracy", "macro_f1", "log_loss"]
    assert _metric_names(config, "spend") == ["ExampleCount", "rmse", "mae"]
    query_specs = [s for s in config.metrics_specs if s.query_key]
    assert [(s.query_key, list(s.output_names)) for s in query_specs] == [("user_id", ["click"])]
    assert [list(s.feature_keys) for s in config.slicing_specs] == [[], ["device"]]


def test_thresholds_bound_the_primary_metric_on_the_overall_slice_and_limit_the_loss_against_the_blessed_model():
    config = eval_config(_spec(max_loss=0.02))
    by_name = {json.loads(m.config)["name"]: m for s in config.metrics_specs for m in s.metrics if m.config}
    auc = by_name["auc"].per_slice_thresholds[0]
    assert list(auc.slicing_specs) == [tfma.SlicingSpec()]
    assert auc.threshold.value_threshold.lower_bound.value == 0.5
    assert auc.threshold.change_threshold.direction == tfma.MetricDirection.HIGHER_IS_BETTER
    assert auc.threshold.change_threshold.absolute.value == pytest.approx(-0.02)
    # spend's own max_loss wins over the default; RMSE may grow by at most that much.
    rmse = by_name["rmse"].per_slice_thresholds[0].threshold
    assert not rmse.HasField("value_threshold")
    assert rmse.change_threshold.direction == tfma.MetricDirection.LOWER_IS_BETTER
    assert rmse.change_threshold.absolute.value == pytest.approx(0.3)
    # intent has no bound of its own, but the default max_loss limits its accuracy's loss
    accuracy = by_name["accuracy"].per_slice_thresholds[0].threshold
    assert not accuracy.HasField("value_threshold") and accuracy.change_threshold.absolute.value == pytest.approx(-0.02)
    assert all(not m.per_slice_thresholds for n, m in by_name.items() if n not in {"auc", "rmse", "accuracy"})


def test_per_user_metrics_need_a_group_column():
    from models.spec import ConfigError

    with pytest.raises(ConfigError, match="evaluation.group_by"):
        _spec(group_by=None)
    with pytest.raises(ConfigError, match="slice_by"):
        _spec(slice_by=["query"])


def _feature(value) -> tf.train.Feature:
    values = value if isinstance(value, list) else [value]
    if isinstance(values[0], str):
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=[v.encode() for v in values]))
    return tf.train.Feature(float_list=tf.train.FloatList(value=[float(v) for v in values]))


def _write_rows(path, worse_click: bool = False) -> str:
    with tf.io.TFRecordWriter(str(path)) as writer:
        for i, (user, click, score, intent, probs) in enumerate(ROWS):
            features = {
                "user_id": user, "device": "app" if i % 2 else "web",
                "click": float(click or 0), "click_mask": float(click is not None), "p_click": score,
                # the baseline ranks every labelled click perfectly; a worse candidate reverses its scores
                "p_click_baseline": float(click or 0), "p_click_worse": 1.0 - float(click or 0),
                "intent": float(intent or 0), "intent_mask": float(intent is not None), "p_intent": probs,
            }
            writer.write(tf.train.Example(features=tf.train.Features(
                feature={k: _feature(v) for k, v in features.items()})).SerializeToString())
    return str(path)


def _with_models(config: tfma.EvalConfig, *models: tuple[str, str, bool]) -> tfma.EvalConfig:
    """`config` evaluating prediction columns instead of SavedModels: (name, click column, is_baseline)."""
    config = tfma.EvalConfig.FromString(config.SerializeToString())
    del config.model_specs[:]
    for name, click_column, baseline in models:
        config.model_specs.add(name=name, is_baseline=baseline,
                               label_keys={"click": "click", "intent": "intent"},
                               prediction_keys={"click": click_column, "intent": "p_intent"},
                               example_weight_keys={"click": "click_mask", "intent": "intent_mask"})
    for spec in config.metrics_specs:
        spec.model_names[:] = [m[0] for m in models]
    return config


def _two_task_spec(**evaluation):
    spec = _spec(**evaluation)
    return spec.model_copy(update={"tasks": spec.tasks[:2]})


def test_tfma_computes_gauc_ndcg_and_macro_f1_as_worked_out_by_hand(tmp_path):
    config = _with_models(eval_config(_two_task_spec()), ("", "p_click", False))
    result = tfma.run_model_analysis(eval_config=config, data_location=_write_rows(tmp_path / "rows.tfrecord"),
                                     output_path=str(tmp_path / "out"))
    overall = dict(result.slicing_metrics)[()]
    click, intent = overall["click"][""], overall["intent"][""]
    assert click["gauc"]["doubleValue"] == pytest.approx(GAUC)
    assert click["ndcg_at_10"]["doubleValue"] == pytest.approx(NDCG)
    assert intent["macro_f1"]["doubleValue"] == pytest.approx(MACRO_F1)
    labelled = [r for r in ROWS if r[1] is not None]
    calibration = sum(r[2] for r in labelled) / sum(r[1] for r in labelled)
    assert click["calibration"]["doubleValue"] == pytest.approx(calibration, rel=1e-5)
    # each device slice has its own metrics
    devices = {dict(k).get("device") for k, _ in result.slicing_metrics} - {None}
    assert devices == {"app", "web"}


def _echo_model(path, click_column: str) -> str:
    """A real SavedModel whose `serving_default` answers with prediction columns of the rows themselves,
    so TFMA evaluates a candidate and a baseline whose scores the test chose."""

    class Echo(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
        def serve(self, examples):
            parsed = tf.io.parse_example(examples, {click_column: tf.io.FixedLenFeature([], tf.float32),
                                                    "p_intent": tf.io.FixedLenFeature([3], tf.float32)})
            return {"click": parsed[click_column], "intent": parsed["p_intent"]}

    module = Echo()
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve})
    return str(path)


@pytest.mark.parametrize("candidate, blessed", [("p_click_worse", False), ("p_click", True)])
def test_blessing_refuses_a_candidate_that_loses_more_than_max_loss_against_the_blessed_model(
        tmp_path, candidate, blessed):
    config = eval_config(_two_task_spec(max_loss=0.3))
    del config.model_specs[:]
    for name, baseline in (("candidate", False), ("baseline", True)):
        config.model_specs.add(name=name, is_baseline=baseline, signature_name="serving_default",
                               label_keys={"click": "click", "intent": "intent"},
                               example_weight_keys={"click": "click_mask", "intent": "intent_mask"})
    models = [tfma.default_eval_shared_model(eval_saved_model_path=_echo_model(tmp_path / name, column),
                                             model_name=name, eval_config=config)
              for name, column in (("candidate", candidate), ("baseline", "p_click_baseline"))]
    tfma.run_model_analysis(eval_shared_model=models, eval_config=config,
                            data_location=_write_rows(tmp_path / "rows.tfrecord"), output_path=str(tmp_path / "out"))
    validation = tfma.load_validation_result(str(tmp_path / "out"))
    assert validation.validation_ok is blessed
    failures = [_describe_failure(f) for s in validation.metric_validations_per_slice for f in s.failures]
    if blessed:  # p_click's AUC (13/18 pairs = 0.72) is 0.28 below the perfect baseline: within max_loss 0.3
        assert failures == []
    else:  # reversed scores: AUC 0, a loss of 1.0 against the baseline, and below the 0.5 bound
        assert any(f.startswith("click/auc changed by -1.0000 against the latest blessed model") for f in failures)
        assert any(f.startswith("click/auc = 0.0000 (must be >= 0.5000") for f in failures)
