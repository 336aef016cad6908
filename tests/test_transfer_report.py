"""TransferReport's own work around models/transfer.py: reading features from the evaluation rows,
joining the simulator's oracle, and gathering training curves (the statistics are in test_transfer)."""
from __future__ import annotations

import json
import types

import numpy as np
import pytest
import tensorflow as tf

from components.transfer_report import (MULTI_TASK, SINGLE_TASK, bayes_scores, baseline_name, feature_column,
                                        read_curves)


def _example(**features) -> bytes:
    feature = {}
    for name, value in features.items():
        if isinstance(value, str):
            feature[name] = tf.train.Feature(bytes_list=tf.train.BytesList(value=[value.encode()]))
        else:
            feature[name] = tf.train.Feature(int64_list=tf.train.Int64List(value=[value]))
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def test_feature_column_reads_the_first_value_and_none_where_absent():
    rows = [_example(user_id="u1", age=3), _example(age=4), _example(user_id="u2")]
    assert list(feature_column(rows, "user_id")) == ["u1", None, "u2"]
    assert list(feature_column(rows, "age")) == [3, 4, None]


def test_bayes_scores_join_the_oracle_by_event_id_and_refuse_rows_it_lacks(tmp_path):
    oracle = tmp_path / "bayes_optimal.csv"
    oracle.write_text("event_id,click,churn\ne1,0.25,\ne2,,0.5\ne3,0.75,\n")
    ids = np.asarray(["e3", "e1", "e2"], dtype=object)
    scores = bayes_scores(str(oracle), "event_id", ids, "click")
    assert scores[:2].tolist() == [0.75, 0.25] and np.isnan(scores[2])
    assert bayes_scores(str(oracle), "event_id", ids, "intent") is None  # no such column: no optimum known
    with pytest.raises(ValueError, match=r"1 of 2 evaluation rows have no 'event_id'"):
        bayes_scores(str(oracle), "event_id", np.asarray(["e1", "e9"], dtype=object), "click")


def _run(tmp_path, node: str, member: str | None, curves: dict):
    uri = tmp_path / node / "model_run" / "3"
    uri.mkdir(parents=True)
    (uri / "training_curves.json").write_text(json.dumps(curves))
    properties = {} if member is None else {"ensemble_member": member}
    return types.SimpleNamespace(
        uri=str(uri), has_custom_property=lambda key: key in properties,
        get_string_custom_property=lambda key: properties[key])


def test_read_curves_keeps_the_multi_task_run_and_gathers_each_baseline_loss_as_single_task(tmp_path):
    runs = [_run(tmp_path, "Trainer", None, {"step": [1, 10], "click_loss": [0.7, 0.5], "weight_click": [1, 1]}),
            _run(tmp_path, "Trainer.single_click", baseline_name("click"), {"step": [1, 10], "click_loss": [0.7, 0.6]}),
            _run(tmp_path, "Trainer.single_churn", baseline_name("churn"), {"step": [1, 10], "churn_loss": [0.6, 0.4]})]
    curves = read_curves(runs, ["click", "churn"])
    assert sorted(curves) == [MULTI_TASK, SINGLE_TASK]
    assert curves[MULTI_TASK]["weight_click"] == [1, 1]
    assert curves[SINGLE_TASK] == {"step": [1, 10], "click_loss": [0.7, 0.6], "churn_loss": [0.6, 0.4]}
