"""One real run of the whole TFX pipeline on small generated data with the tiny encoder."""
from __future__ import annotations

import csv
import json

import pytest
import tensorflow as tf
import tensorflow_text  # noqa: F401  (the pushed model tokenizes in graph)
import yaml

from pipeline.report import executed_components, open_store
from serving.examples import load_raw_features, to_examples
from tests.conftest import tiny_config, run_pipeline

pytestmark = pytest.mark.e2e

STANDARD_COMPONENTS = {"CsvExampleGen", "StatisticsGen", "SchemaGen", "ExampleValidator", "Transform",
                       "Trainer", "Evaluator", "Pusher"}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("e2e")
    config = tiny_config(epochs=3, batch_size=32, learning_rate=1e-3, head_learning_rate=3e-3)
    config["model_name"] = "e2e"
    config["sources"] = [{"simulated": {"rows": 6000, "seed": 7}}]
    for task in config["tasks"]:  # blessed only if every binary task beats chance
        task["blessing_threshold"] = 0.5 if task["type"] == "binary" else None
    config_path = workdir / "e2e.yaml"
    config_path.write_text(yaml.safe_dump(config))
    proc = run_pipeline("--config", str(config_path), "--workdir", str(workdir), "--workers", "1")
    return workdir, config, proc.stdout


def test_all_eight_components_ran(run):
    workdir, _, _ = run
    ran = executed_components(open_store(workdir / "metadata.sqlite"))
    assert STANDARD_COMPONENTS <= ran, f"missing: {STANDARD_COMPONENTS - ran}"


def test_a_version_was_pushed_and_reported(run):
    workdir, config, stdout = run
    report = json.loads((workdir / "reports" / "metrics.json").read_text())
    assert report["model"] == "e2e"
    version_dir = workdir / "serving_model" / "e2e" / str(report["version"])
    assert (version_dir / "saved_model.pb").is_file()
    assert set(report["tasks"]) == {t["name"] for t in config["tasks"]}
    assert f"pushed e2e version {report['version']}" in stdout


def test_every_binary_task_beats_chance(run):
    workdir, config, _ = run
    report = json.loads((workdir / "reports" / "metrics.json").read_text())
    for task in config["tasks"]:
        metrics = report["tasks"][task["name"]]
        assert metrics["example_count"] > 0, task["name"]
        if task["type"] == "binary":
            assert metrics["auc"] > 0.5, (task["name"], metrics)
        if task["type"] == "regression":
            assert metrics["rmse"] > 0


def test_pushed_model_answers_every_task_for_rows_of_the_data(run):
    workdir, _, _ = run
    report = json.loads((workdir / "reports" / "metrics.json").read_text())
    model_dir = str(workdir / "serving_model" / "e2e" / str(report["version"]))
    with open(workdir / "data" / "prepared" / "data.csv", newline="") as f:
        rows = [row for _, row in zip(range(20), csv.DictReader(f))]
    examples = to_examples(rows, load_raw_features(model_dir))
    outputs = tf.saved_model.load(model_dir).signatures["serving_default"](examples=tf.constant(examples))
    assert set(outputs) == set(report["tasks"])
    for name, values in outputs.items():
        assert values.shape[0] == 20, name


def test_training_logs_go_to_tensorboard(run):
    workdir, _, _ = run
    event_files = list((workdir / "pipeline" / "Trainer" / "model_run").rglob("events.out.tfevents.*"))
    assert event_files


def test_pushed_model_carries_warmup_requests_and_the_feature_description(run):
    workdir, _, _ = run
    report = json.loads((workdir / "reports" / "metrics.json").read_text())
    version_dir = workdir / "serving_model" / "e2e" / str(report["version"])
    assert (version_dir / "assets.extra" / "tf_serving_warmup_requests").stat().st_size > 0
    assert "query" in load_raw_features(str(version_dir))
