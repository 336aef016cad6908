"""Reads a finished run from ML Metadata and writes reports/metrics.json (per task, per metric)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import tensorflow_model_analysis as tfma
from ml_metadata.metadata_store import metadata_store
from ml_metadata.proto import metadata_store_pb2

from components.fusion_example_gen import EVAL, TRAIN, read_stats
from components.model_fusion import FUSION_FILE, member_trainer_id
from components.transfer_report import TransferReportArtifact
from models.model import HISTORY_FILE
from models.multitask import gate_metric, weight_metric
from models.spec import ProjectSpec


class RunError(RuntimeError):
    """The pipeline finished without producing what a run promises (e.g. the model was not blessed)."""


def open_store(metadata_path: Path) -> metadata_store.MetadataStore:
    config = metadata_store_pb2.ConnectionConfig()
    config.sqlite.filename_uri = str(metadata_path)
    config.sqlite.connection_mode = metadata_store_pb2.SqliteMetadataSourceConfig.READONLY
    return metadata_store.MetadataStore(config)


# The node id of the multi-task model's Trainer (single-task and member Trainers are "Trainer.<name>").
MULTI_TASK_TRAINER = "Trainer"


def latest_artifact(store, type_name: str):
    artifacts = store.get_artifacts_by_type(type_name)
    if not artifacts:
        raise RunError(f"the run produced no {type_name} artifact")
    return max(artifacts, key=lambda a: (a.create_time_since_epoch, a.id))


def component_name(store, execution) -> str:
    """The component an execution ran, e.g. "Trainer" (the last part of its MLMD type name)."""
    return store.get_execution_types_by_id([execution.type_id])[0].name.rsplit(".", 1)[-1]


def executed_components(store) -> set[str]:
    """Names of the components whose executions completed (from ML Metadata)."""
    done = {metadata_store_pb2.Execution.COMPLETE, metadata_store_pb2.Execution.CACHED}
    return {component_name(store, e) for e in store.get_executions() if e.last_known_state in done}


BASELINE_MODEL = "baseline"  # the name TFX gives the latest blessed model in a two-model evaluation


def _slice_name(slice_key) -> tuple[str, str] | None:
    """(feature, value) of a single-feature slice; None for the overall slice."""
    if not slice_key.single_slice_keys:
        return None
    key = slice_key.single_slice_keys[0]
    value = key.bytes_value.decode() if key.HasField("bytes_value") else (
        key.int64_value if key.HasField("int64_value") else key.float_value)
    return key.column, str(value)


def evaluation_metrics(evaluation_uri: str, spec: ProjectSpec) -> dict:
    """The candidate's metrics per task, overall (`tasks`), per slice value (`slices`: feature -> value ->
    task -> metrics), and its change against the latest blessed model when one was compared
    (`against_blessed`: task -> metric -> candidate minus baseline)."""
    tasks: dict[str, dict[str, float]] = {t.name: {} for t in spec.tasks}
    slices: dict[str, dict[str, dict[str, dict[str, float]]]] = {}
    diffs: dict[str, dict[str, float]] = {}
    for metrics_for_slice in tfma.load_metrics(evaluation_uri):
        where = _slice_name(metrics_for_slice.slice_key)
        for kv in metrics_for_slice.metric_keys_and_values:
            key = kv.key
            if key.output_name not in tasks or key.model_name == BASELINE_MODEL or not kv.value.HasField("double_value"):
                continue
            value = round(kv.value.double_value.value, 6)
            if where is not None:
                if not key.is_diff:
                    slices.setdefault(where[0], {}).setdefault(where[1], {}).setdefault(key.output_name, {})[
                        key.name] = value
            elif key.is_diff:
                diffs.setdefault(key.output_name, {})[key.name] = value
            else:
                tasks[key.output_name][key.name] = value
    return {"tasks": tasks, "slices": slices, **({"against_blessed": diffs} if diffs else {})}


def _describe_failure(failure) -> str:
    key, value, threshold = failure.metric_key, failure.metric_value.double_value.value, failure.metric_threshold
    where = f"{key.output_name}/{key.name}"
    if key.is_diff:
        allowed = threshold.change_threshold.absolute.value
        return (f"{where} changed by {value:+.4f} against the latest blessed model "
                f"(the config allows {'at most' if allowed >= 0 else 'no less than'} {allowed:+.4f}: max_loss)")
    bound = threshold.value_threshold
    limit = (f"must be >= {bound.lower_bound.value:.4f}" if bound.HasField("lower_bound")
             else f"must be <= {bound.upper_bound.value:.4f}")
    return f"{where} = {value:.4f} ({limit}: blessing_threshold)" + (f" {failure.message.strip()}" if failure.message.strip() else "")


def blessing_failures(evaluation_uri: str) -> list[str]:
    result = tfma.load_validation_result(evaluation_uri)
    return [_describe_failure(f) for per_slice in result.metric_validations_per_slice for f in per_slice.failures]


def source_counts(store, per_source: dict | None = None) -> dict[str, dict]:
    """Per source: rows and labels per task as prepared (`PreparedData.per_source`), and for a
    multi-source run the train/eval examples and labels after sampling (FusionExampleGen's stats)."""
    sources = {name: dict(counts) for name, counts in (per_source or {}).items()}
    stats = read_stats(latest_artifact(store, "Examples").uri) or {}
    for name, weight in stats.get("sampling_weights", {}).items():
        sources.setdefault(name, {})["sampling_weight"] = weight
        for split in (TRAIN, EVAL):
            sources[name][split] = stats["splits"][split]["sources"][name]
    return sources


def newest_model_runs(store) -> dict[str, object]:
    """Each trainer's newest ModelRun, keyed by its node id: "Trainer" (the multi-task model),
    "Trainer.<member>" (ensemble members), "Trainer.single_<task>" (the --baselines models)."""
    runs: dict[str, object] = {}
    for run in sorted(store.get_artifacts_by_type("ModelRun"), key=lambda a: (a.create_time_since_epoch, a.id)):
        runs[Path(run.uri).parent.parent.name] = run  # <pipeline root>/<node id>/model_run/<execution id>
    return runs


def training_summary(store, spec: ProjectSpec, run=None) -> dict:
    """From a Trainer's history (default: the multi-task `Trainer`'s): each task's loss weight at the last
    step, the mean gate weight of every expert per task on the evaluation split (MMoE / PLE), and FGM's
    adversarial loss."""
    run = run or newest_model_runs(store).get(MULTI_TASK_TRAINER)
    path = Path(run.uri) / HISTORY_FILE if run is not None else None
    if path is None or not path.is_file():
        return {}
    history = {k: v[-1] for k, v in json.loads(path.read_text()).items() if v}
    summary: dict = {"final_task_weights": {t.name: history[weight_metric(t.name)]
                                            for t in spec.tasks if weight_metric(t.name) in history}}
    gates: dict[str, dict[str, float]] = {}
    # Longest task name first: "gate_ad_click_expert0" belongs to ad_click, not to click.
    tasks = sorted((t.name for t in spec.tasks), key=len, reverse=True)
    for key, value in history.items():
        task = next((t for t in tasks if key.startswith("val_" + gate_metric(t, ""))), None)
        if task is not None:
            gates.setdefault(task, {})[key[len("val_" + gate_metric(task, "")):]] = round(value, 6)
    if gates:
        summary["gates"] = gates
    if "adversarial_loss" in history:
        summary["adversarial_loss"] = history["adversarial_loss"]
    return summary


def ensemble_report(store) -> dict | None:
    """What ModelFusion recorded (method, members, weights or band, eval losses): the `fusion.json` of
    the newest Model artifact that has one."""
    for model in sorted(store.get_artifacts_by_type("Model"), key=lambda a: (a.create_time_since_epoch, a.id),
                        reverse=True):
        path = Path(model.uri) / FUSION_FILE
        if path.is_file():
            return json.loads(path.read_text())
    return None


def member_training(store, spec: ProjectSpec) -> dict[str, dict]:
    """An ensemble's training summary per member: each `Trainer.<member>`'s newest ModelRun."""
    runs = newest_model_runs(store)
    return {m.name: training_summary(store, spec.member_spec(m.name), run)
            if (run := runs.get(member_trainer_id(m.name))) is not None else {} for m in spec.ensemble.members}


def copy_transfer_report(metadata_path: Path, report_dir: Path) -> dict | None:
    """Copies the newest TransferReport artifact's files (transfer.json/.md/.html) into `report_dir`;
    returns the report, or None if the run made none."""
    store = open_store(metadata_path)
    if not store.get_artifacts_by_type(TransferReportArtifact.TYPE_NAME):
        return None
    source = Path(latest_artifact(store, TransferReportArtifact.TYPE_NAME).uri)
    report_dir.mkdir(parents=True, exist_ok=True)
    for path in sorted(source.glob("transfer.*")):
        shutil.copy2(path, report_dir / path.name)
    return json.loads((report_dir / "transfer.json").read_text())


def write_metrics_report(metadata_path: Path, spec: ProjectSpec, report_dir: Path,
                         per_source: dict | None = None) -> dict:
    store = open_store(metadata_path)
    evaluation = latest_artifact(store, "ModelEvaluation")
    pushed = latest_artifact(store, "PushedModel")
    was_pushed = bool(pushed.custom_properties["pushed"].int_value)
    failures = [] if was_pushed else blessing_failures(evaluation.uri) or ["(no failure recorded)"]
    evaluated = evaluation_metrics(evaluation.uri, spec)
    report = {
        "model": spec.model_name,
        "pushed": was_pushed,
        "version": int(pushed.custom_properties["pushed_version"].string_value) if was_pushed else None,
        "tasks": evaluated["tasks"],
        **({"against_blessed": evaluated["against_blessed"]} if "against_blessed" in evaluated else {}),
        "slices": evaluated["slices"],
        "sources": source_counts(store, per_source),
        "training": training_summary(store, spec) if spec.ensemble is None else member_training(store, spec),
    }
    if failures:
        report["blessing_failures"] = failures
    if spec.ensemble is not None:
        report["ensemble"] = ensemble_report(store)
    report_dir.mkdir(parents=True, exist_ok=True)
    # Written before failing too: the metrics of a candidate that was not blessed are what users need.
    (report_dir / "metrics.json").write_text(json.dumps(report, indent=2) + "\n")
    if not was_pushed:
        raise RunError("the Evaluator did not bless the model, nothing was pushed:\n  " + "\n  ".join(failures)
                       + f"\n  (metrics: {report_dir / 'metrics.json'})")
    return report
