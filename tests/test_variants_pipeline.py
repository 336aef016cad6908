"""The whole TFX pipeline once per sharing architecture / weighting variant (configs/*.yaml), tiny encoder.

shared_bottom runs in test_pipeline_e2e.py; here MMoE with PCGrad, and PLE with GradNorm, an ESMM funnel
(purchase depends on click), token augmentation and FGM (two runs cover every option; uncertainty and
DWA train in tests/test_training_methods.py). Each must push a version that `commerce-mtl serve`
answers for every task, with its task weights and gate means in the run report.
"""
from __future__ import annotations

import json

import pytest
import yaml

from tests.conftest import ROOT, run_pipeline

pytestmark = pytest.mark.e2e

TINY = {"encoder": {"kind": "tiny", "hidden_size": 32, "num_layers": 1, "num_heads": 2}, "sequence_length": 32,
        "sources": [{"simulated": {"rows": 1200, "seed": 5}}],
        "training": {"batch_size": 32, "learning_rate": 1e-3, "head_learning_rate": 3e-3}}
VARIANTS = {
    "mmoe_uncertainty": {"loss_weighting": "pcgrad"},
    "ple_gradnorm": {"augmentation": {"token_dropout": 0.05, "mask_rate": 0.1}, "adversarial": {"epsilon": 1.0}},
}
FUNNEL = "ple_gradnorm"


@pytest.fixture(scope="module", params=sorted(VARIANTS))
def run(request, tmp_path_factory):
    name = request.param
    workdir = tmp_path_factory.mktemp(name)
    config = {"extends": str(ROOT / "configs" / f"{name}.yaml"), **TINY, **VARIANTS[name]}
    # Small data: the gate is only "better than chance" on click, which 1,200 rows can show.
    config["tasks"] = [{"name": t, "blessing_threshold": None} for t in ("purchase", "ad_click", "intent", "churn")]
    if name == FUNNEL:
        config["tasks"][0]["depends_on"] = "click"
    path = workdir / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    run_pipeline("--config", str(path), "--workdir", str(workdir), "--workers", "1")
    report = json.loads((workdir / "reports" / "metrics.json").read_text())
    return name, workdir, report


def test_pushes_a_version_that_commerce_mtl_serve_answers_for_every_task(run):
    from serving.client import ModelClient
    from tests.test_serving_contract import start_server, stop_server

    name, workdir, report = run
    server = start_server(workdir / "serving_model" / report["model"], report["model"])
    client = ModelClient(server.address)
    try:
        rows = [{"query": "red dress", "item_title": "Red summer dress", "item_price": 30, "channel": "app",
                 "user_id": "u1", "item_id": "i1"}]
        outputs = client.predict_rows(report["model"], rows)
    finally:
        client.close()
        stop_server(server)
    assert set(outputs) == set(report["tasks"]) == {"click", "purchase", "ad_click", "fraud", "intent",
                                                      "satisfaction", "churn"}
    assert all(v.shape[0] == 1 for v in outputs.values())
    if name == FUNNEL:  # ESMM: p(click) * p(purchase | click) can never exceed p(click)
        assert outputs["purchase"][0] <= outputs["click"][0] + 1e-6


def test_report_has_task_weights_and_gates(run):
    name, _, report = run
    training = report["training"]
    assert set(training["final_task_weights"]) == set(report["tasks"])
    if name == "ple_gradnorm":
        assert sum(training["final_task_weights"].values()) == pytest.approx(
            sum(1.0 if t != "satisfaction" else 0.5 for t in report["tasks"]), rel=1e-3)
    if name == "mmoe_uncertainty":
        assert set(training["gates"]["click"]) == {f"expert{i}" for i in range(4)}
    if name == "ple_gradnorm":
        assert set(training["gates"]["click"]) == {"click0", "shared0", "shared1"}
    for experts in training.get("gates", {}).values():
        assert sum(experts.values()) == pytest.approx(1.0, abs=1e-3)
    if name == FUNNEL:
        assert training["adversarial_loss"] > 0
