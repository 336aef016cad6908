"""TransferReport: does joint training help each task? The multi-task model against one single-task
model per task (`commerce-mtl run --baselines`), on the same evaluation rows.

Inputs: the Examples (its `eval` split is scored), the multi-task candidate `Model` (a Trainer's, or
ModelFusion's for an ensemble), the single-task baselines' Models as one unioned channel (each tagged
with its Trainer's name, `single_<task>`, as ensemble members are), and the Trainers' ModelRuns (for the
training curves). For generated data `oracle_csv` names the simulator's Bayes-optimal probabilities,
joined to the evaluation rows on `oracle_id_column` (event_id).

The statistics (metrics, paired bootstrap intervals, verdicts) and the json/md/html files come from
models/transfer.py; this component only loads the models, scores the rows and hands the arrays over.
The output artifact holds transfer.{json,md,html}; the CLI copies them to `<workdir>/reports/`.
"""
# No `from __future__ import annotations`: the TFX component decorator reads the real type hints.
import json
import logging
import os
from typing import Dict, List, Optional

import numpy as np
from tfx import v1 as tfx
from tfx.types.artifact import Artifact

from components.model_fusion import member_dirs, member_name, read_split
from models.model import CURVES_FILE

BASELINE_PREFIX = "single_"
MULTI_TASK = "multi_task"
SINGLE_TASK = "single_task"


class TransferReportArtifact(Artifact):
    """The files of one transfer report: transfer.json, transfer.md, transfer.html."""

    TYPE_NAME = "TransferReport"


def baseline_name(task: str) -> str:
    """The name a task's single-task baseline trains under (its Trainer is `Trainer.single_<task>`)."""
    return f"{BASELINE_PREFIX}{task}"


def feature_column(rows: List[bytes], name: str) -> np.ndarray:
    """The first value of feature `name` in each serialized tf.Example (None where it is absent)."""
    import tensorflow as tf

    values = []
    for row in rows:
        feature = tf.train.Example.FromString(row).features.feature.get(name)
        kind = feature.WhichOneof("kind") if feature is not None else None
        value = list(getattr(feature, kind).value) if kind else []
        first = value[0] if value else None
        values.append(first.decode("utf-8", "replace") if isinstance(first, bytes) else first)
    return np.asarray(values, dtype=object)


def bayes_scores(oracle_csv: str, id_column: str, ids: np.ndarray, label: str) -> Optional[np.ndarray]:
    """The oracle's probability for `label` on each row (nan where the oracle has none)."""
    import pandas as pd

    oracle = pd.read_csv(oracle_csv, dtype={id_column: str})
    if label not in oracle:
        return None
    by_id = dict(zip(oracle[id_column], oracle[label]))
    missing = sum(1 for i in ids if i is None or i not in by_id)
    if missing:
        raise ValueError(f"{oracle_csv}: {missing} of {len(ids)} evaluation rows have no {id_column!r} in the "
                         "oracle file; the report would compare against the Bayes optimum on other rows")
    return np.asarray([by_id[i] for i in ids], dtype=np.float64)


def read_curves(model_runs: list, tasks: List[str]) -> Dict[str, dict]:
    """Training curves by model: "multi_task" (the project's Trainer; for an ensemble, each member by
    name) and "single_task", which gathers each baseline's `<task>_loss` series (same steps: same budget)."""
    curves: Dict[str, dict] = {}
    for run in model_runs:
        path = os.path.join(run.uri, CURVES_FILE)
        if not os.path.isfile(path):
            continue
        try:
            name = member_name(run)
        except ValueError:
            name = MULTI_TASK  # the project's own Trainer carries no member tag
        with open(path) as f:
            curves[name] = json.load(f)
    single: dict = {}
    for task in tasks:
        own = curves.pop(baseline_name(task), None)
        if own and f"{task}_loss" in own:
            single.setdefault("step", own["step"])
            single[f"{task}_loss"] = own[f"{task}_loss"]
    return {**curves, **({SINGLE_TASK: single} if single else {})}


def task_data(spec, multi, baselines: dict, rows: List[bytes], oracle_csv: str, id_column: str) -> list:
    """One `TaskData` per task: labels and masks, and the multi-task and single-task predictions."""
    from models import features
    from models.ensemble import SERVING_SIGNATURE, run_signature
    from models.export import TRANSFORM_SIGNATURE
    from models.transfer import TaskData

    keys = [k for t in spec.tasks for k in (features.label_key(t), features.mask_key(t))]
    labels = run_signature(multi, TRANSFORM_SIGNATURE, rows, keys)
    multi_out = run_signature(multi, SERVING_SIGNATURE, rows)
    group_by = spec.evaluation.group_by
    groups = feature_column(rows, group_by) if group_by else None
    ids = feature_column(rows, id_column) if oracle_csv else None
    data = []
    for task in spec.tasks:
        single_out = run_signature(baselines[task.name], SERVING_SIGNATURE, rows, [task.name])
        bayes = None
        if oracle_csv and task.type.value == "binary" and task.depends_on is None:
            # A funnel task's label is the joint event, which the oracle's conditional is not.
            bayes = bayes_scores(oracle_csv, id_column, ids, task.label)
        data.append(TaskData(
            name=task.name, type=task.type.value, primary_metric=task.primary_metric,
            labels=labels[features.label_key(task)].reshape(len(rows), -1)[:, 0],
            mask=labels[features.mask_key(task)].reshape(-1),
            predictions={MULTI_TASK: multi_out[task.name], SINGLE_TASK: single_out[task.name]},
            groups=groups if task.type.value == "binary" else None, bayes=bayes,
            metrics=tuple(task.evaluated_metrics)))
    return data


def run_transfer_report(model, baseline_models: list, model_runs: list, examples, output_uri: str,
                        spec_json: str, oracle_csv: str = "", oracle_id_column: str = "event_id") -> dict:
    """The component's work, callable without TFX."""
    import tensorflow as tf
    import tensorflow_text  # noqa: F401  (the models tokenize in graph)
    from tfx.utils import path_utils

    from models.spec import ProjectSpec
    from models.transfer import build_report, write_report

    spec = ProjectSpec.from_json(spec_json)
    dirs = member_dirs(baseline_models)
    missing = [t.name for t in spec.tasks if baseline_name(t.name) not in dirs]
    if missing:
        raise ValueError(f"no single-task baseline model for tasks {missing}; got {sorted(dirs)}")
    multi = tf.saved_model.load(path_utils.serving_model_path(model.uri, path_utils.is_old_model_artifact(model)))
    baselines = {t.name: tf.saved_model.load(dirs[baseline_name(t.name)]) for t in spec.tasks}
    rows = read_split(examples, "eval")
    logging.info("TransferReport: scoring %d evaluation rows with 1 + %d models", len(rows), len(baselines))
    data = task_data(spec, multi, baselines, rows, oracle_csv, oracle_id_column)
    curves = read_curves(model_runs, [t.name for t in spec.tasks])
    report = build_report(data, spec.model_name, curves=curves, samples=spec.evaluation.bootstrap_samples,
                          seed=spec.training.seed)
    write_report(report, output_uri)
    return report


@tfx.dsl.components.component
def TransferReport(
    examples: tfx.dsl.components.InputArtifact[tfx.types.standard_artifacts.Examples],
    model: tfx.dsl.components.InputArtifact[tfx.types.standard_artifacts.Model],
    baseline_models: tfx.dsl.components.InputArtifact[List[tfx.types.standard_artifacts.Model]],
    model_runs: tfx.dsl.components.InputArtifact[List[tfx.types.standard_artifacts.ModelRun]],
    report: tfx.dsl.components.OutputArtifact[TransferReportArtifact],
    spec_json: tfx.dsl.components.Parameter[str],
    oracle_csv: tfx.dsl.components.Parameter[str] = "",
) -> None:
    """Multi-task vs single-task, per task, with bootstrap intervals (see module doc)."""
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    run_transfer_report(model, list(baseline_models), list(model_runs), examples, report.uri, spec_json,
                        oracle_csv)
