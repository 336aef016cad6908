"""configs/reviews.yaml through the whole pipeline on a sample of the real Women's clothing reviews,
started from another folder with --data pointing at the file (the encoder swapped for the tiny one)."""
from __future__ import annotations

import json

import pandas as pd
import pytest
import yaml

from tests.conftest import ROOT, SHARED_DATA, run_pipeline

REVIEWS = SHARED_DATA / "womens_clothing_reviews" / "womens_clothing_ecommerce_reviews.csv.gz"

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(not REVIEWS.is_file(), reason=f"real data not present: {REVIEWS} (see ../shared/data)"),
]


@pytest.fixture(scope="module")
def reviews_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("reviews")
    sample = tmp / "sample.csv.gz"
    # The raw file as published (unnamed index column, quoted multi-line reviews, empty texts).
    pd.read_csv(REVIEWS, dtype=str, keep_default_na=False).head(1500).to_csv(sample, index=False)
    config = yaml.safe_load((ROOT / "configs" / "reviews.yaml").read_text())
    config["encoder"] = {"kind": "tiny", "hidden_size": 32, "num_layers": 1, "num_heads": 2}
    config["sequence_length"] = 48
    config["training"].update(epochs=3, learning_rate=1e-3, head_learning_rate=3e-3)
    for task in config["tasks"]:  # gate on recommendation beating chance only
        task["blessing_threshold"] = 0.5 if task["name"] == "recommended" else None
    (tmp / "reviews.yaml").write_text(yaml.safe_dump(config))
    run_pipeline("--config", "reviews.yaml", "--data", str(sample), "--workdir", "wd", cwd=tmp)
    return tmp / "wd"


def test_reviews_report_has_the_three_tasks(reviews_run):
    report = json.loads((reviews_run / "reports" / "metrics.json").read_text())
    assert report["model"] == "reviews"
    assert set(report["tasks"]) == {"recommended", "rating", "positive_feedback"}
    assert {"auc", "pr_auc", "log_loss"} <= set(report["tasks"]["recommended"])
    assert {"accuracy", "log_loss"} <= set(report["tasks"]["rating"])
    assert {"rmse", "mae"} <= set(report["tasks"]["positive_feedback"])
    # Every eval row labels all three tasks, so the counts agree.
    counts = {m["example_count"] for m in report["tasks"].values()}
    assert len(counts) == 1 and counts.pop() > 200
    assert (reviews_run / "serving_model" / "reviews" / str(report["version"]) / "saved_model.pb").is_file()


def test_reviews_text_carries_signal_for_recommendation(reviews_run):
    report = json.loads((reviews_run / "reports" / "metrics.json").read_text())
    assert report["tasks"]["recommended"]["auc"] > 0.6
