"""`commerce-mtl run --baselines` end to end on generated data, then a second run in the same work directory
whose deliberately worse candidate the Evaluator refuses against the blessed first one.

Tabular features only (no text encoder), so the five Trainers take seconds; the run also goes through the
seeded train/eval split (`training.split_seed`, CsvExampleGen reading two prepared splits)."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

from pipeline.report import executed_components, open_store
from tests.conftest import ROOT, run_pipeline, tiny_config

pytestmark = pytest.mark.e2e

# click and ad_click between them label every generated impression (a row must label some task)
TASKS = ["click", "ad_click", "intent", "satisfaction"]


def _config(**training) -> dict:
    config = tiny_config(**{"epochs": 2, "learning_rate": 1e-3, "head_learning_rate": 3e-3, "split_seed": 0,
                            "eval_split_by": None, **training})
    config["model_name"] = "transfer"
    config["features"]["text"] = []
    del config["encoder"]
    config["sources"] = [{"simulated": {"rows": 1500, "seed": 5}}]
    config["tasks"] = [t for t in config["tasks"] if t["name"] in TASKS]
    for task in config["tasks"]:
        task["blessing_threshold"] = 0.0 if task["name"] == "intent" else None
    config["tasks"][0]["metrics"] = ["auc", "gauc", "ndcg_at_10"]
    config["evaluation"] = {"group_by": "user_id", "slice_by": ["device"], "max_loss": 0.05,
                            "bootstrap_samples": 200}
    return config


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("transfer")
    path = workdir / "transfer.yaml"
    path.write_text(yaml.safe_dump(_config()))
    proc = run_pipeline("--config", str(path), "--workdir", str(workdir), "--workers", "1", "--baselines")
    return workdir, proc.stdout


def test_baselines_train_one_single_task_model_per_task_beside_the_multi_task_one(first_run):
    workdir, _ = first_run
    # MLMD names the component type (every Trainer is a "Trainer"); the pipeline root has one folder a node.
    nodes = sorted(p.name for p in (workdir / "pipeline").iterdir() if p.name.startswith("Trainer"))
    assert nodes == ["Trainer"] + [f"Trainer.single_{t}" for t in sorted(TASKS)]
    assert "TransferReport" in executed_components(open_store(workdir / "metadata.sqlite"))


def test_transfer_report_compares_every_task_with_intervals_and_the_bayes_optimum(first_run):
    workdir, stdout = first_run
    reports = workdir / "reports"
    report = json.loads((reports / "transfer.json").read_text())
    assert sorted(report["tasks"]) == sorted(TASKS)
    for name, entry in report["tasks"].items():
        assert set(entry["metrics"]) >= {"multi_task", "single_task"}, name
        diff = entry["difference"]
        assert diff["low"] <= diff["value"] <= diff["high"], name
        assert entry["transfer"] in {"positive", "negative", "neutral"}
    click = report["tasks"]["click"]
    assert {"gauc", "ndcg_at_10"} <= set(click["metrics"]["multi_task"])
    # generated data: the oracle's probabilities of the same evaluation rows
    assert 0.5 < click["bayes"]["auc"] <= 1.0
    html = (reports / "transfer.html").read_text()
    assert html.count('<img src="data:image/png;base64,') >= 3
    assert all(t in (reports / "transfer.md").read_text() for t in TASKS)
    assert "transfer (multi-task minus single-task" in stdout


def test_the_tabular_model_reads_the_seeded_split_and_serves_without_a_tokenizer(first_run):
    import pandas as pd
    import tensorflow as tf

    from serving.examples import load_raw_features, to_examples

    workdir, stdout = first_run
    metrics = json.loads((workdir / "reports" / "metrics.json").read_text())
    held_out = pd.read_csv(workdir / "data" / "prepared" / "eval" / "data.csv", dtype=str, keep_default_na=False)
    assert len(held_out) == 300 and "(300 rows)" in stdout  # exactly 20% of 1,500 rows, as printed
    version = workdir / "serving_model" / "transfer" / str(metrics["version"])
    assert not list(version.rglob("vocab.txt"))
    raw = load_raw_features(str(version))
    assert not {"query", "item_title", "cs_message"} & set(raw)
    model = tf.saved_model.load(str(version))
    assert {"predict_raw", "classify_click", "regress_satisfaction"} <= set(model.signatures)
    outputs = model.signatures["serving_default"](examples=tf.constant(to_examples(held_out.head(5).to_dict("records"), raw)))
    assert set(outputs) == set(TASKS) and outputs["click"].shape[0] == 5


def test_evaluator_reports_standard_per_user_and_sliced_metrics(first_run):
    workdir, _ = first_run
    metrics = json.loads((workdir / "reports" / "metrics.json").read_text())
    assert metrics["pushed"] is True
    assert {"auc", "pr_auc", "log_loss", "calibration", "gauc", "ndcg_at_10"} <= set(metrics["tasks"]["click"])
    assert {"accuracy", "macro_f1", "log_loss"} <= set(metrics["tasks"]["intent"])
    assert 0.0 <= metrics["tasks"]["click"]["gauc"] <= 1.0
    devices = metrics["slices"]["device"]
    assert len(devices) >= 2 and all("click" in per_task for per_task in devices.values())
    # The training summary is the multi-task Trainer's, not that of the single-task Trainer that ran last.
    assert set(metrics["training"]["final_task_weights"]) == set(TASKS)


def test_a_worse_candidate_is_refused_against_the_blessed_model_and_nothing_is_pushed(first_run):
    workdir, _ = first_run
    versions = sorted(p.name for p in (workdir / "serving_model" / "transfer").iterdir())
    # Untrained: one step at a vanishing learning rate; satisfaction's RMSE is far worse than the blessed one's.
    path = workdir / "worse.yaml"
    path.write_text(yaml.safe_dump(_config(learning_rate=1e-9, head_learning_rate=1e-9, max_steps_per_epoch=1)))
    proc = subprocess.run([sys.executable, "-m", "pipeline.cli", "run", "--config", str(path), "--workdir",
                           str(workdir), "--workers", "1"], cwd=ROOT, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "satisfaction/rmse changed by +" in proc.stderr and "against the latest blessed model" in proc.stderr
    metrics = json.loads((workdir / "reports" / "metrics.json").read_text())
    assert metrics["pushed"] is False and metrics["against_blessed"]["satisfaction"]["rmse"] > 0.05
    assert sorted(p.name for p in (workdir / "serving_model" / "transfer").iterdir()) == versions
