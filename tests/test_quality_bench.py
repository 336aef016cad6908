"""bench/quality.py without pipelines: the classical baselines on synthetic data, the target checks, the report."""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from models.spec import parse_spec

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def quality():
    spec = importlib.util.spec_from_file_location("bench_quality", ROOT / "bench" / "quality.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file executes
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


def _reviews(n: int, seed: int) -> pd.DataFrame:
    """Words decide the labels: "great"/"awful" the recommendation, "starN" the rating, "helpful" the
    feedback count."""
    rng = np.random.default_rng(seed)
    filler = ["dress", "fabric", "size", "colour", "fits", "ordered", "top", "material"]
    rows = []
    for _ in range(n):
        recommended = int(rng.random() < 0.6)
        rating = int(rng.integers(4, 6) if recommended else rng.integers(1, 4))
        helpful = bool(rng.random() < 0.4)
        words = [*rng.choice(filler, 4), "great" if recommended else "awful", f"star{rating}",
                 *(["helpful"] if helpful else [])]
        rng.shuffle(words)
        rows.append({"title": None if rng.random() < 0.2 else str(rng.choice(filler)),
                     "review_text": " ".join(words), "recommended": recommended, "rating": str(rating),
                     "positive_feedback": int(rng.integers(8, 20) if helpful else rng.integers(0, 2))})
    return pd.DataFrame(rows)


def test_tfidf_baselines_learn_words_and_report_every_metric(quality):
    result = quality.tfidf_baselines(_reviews(240, 0), _reviews(120, 1), classes=["1", "2", "3", "4", "5"])
    tasks = result["tasks"]
    assert set(tasks["recommended"]) == {"auc", "pr_auc", "log_loss", "calibration"}
    assert set(tasks["rating"]) == {"accuracy", "macro_f1", "log_loss"}
    assert set(tasks["positive_feedback"]) == {"rmse", "mae", "mean_rmse"}
    assert tasks["recommended"]["auc"] > 0.9
    assert tasks["rating"]["accuracy"] > 0.6
    assert tasks["positive_feedback"]["rmse"] < tasks["positive_feedback"]["mean_rmse"]
    chosen = result["settings"]["chosen"]
    assert chosen["recommended"]["C"] in quality.LOGISTIC_C_GRID
    assert chosen["positive_feedback"]["alpha"] in quality.RIDGE_ALPHA_GRID
    assert result["rows"]["rating"] == {"train": 240, "eval": 120}
    json.dumps(result)  # recorded as is in quality.json


def test_gbt_baselines_learn_a_categorical_rule(quality):
    spec = parse_spec({
        "model_name": "census_test", "sources": [{"path": "census.csv"}],
        "features": {"numeric": ["age"], "categorical": ["status"]},
        "tasks": [{"name": "income", "type": "binary", "label": "income", "metrics": ["auc"], "blessing_threshold": 0.5},
                  {"name": "marital", "type": "binary", "label": "marital", "metrics": ["auc"]}]})
    rng = np.random.default_rng(0)

    def frame(n: int) -> pd.DataFrame:
        status = rng.choice(["single", "married", "widowed", "divorced"], n)
        age = rng.integers(18, 90, n).astype(float)
        age[rng.random(n) < 0.05] = np.nan
        flip = rng.random(n) < 0.05
        return pd.DataFrame({"age": age, "status": status,
                             "income": ((status == "married") ^ flip).astype(int),
                             "marital": (status == "single").astype(int)})

    train, evaluation = frame(600), frame(200)
    evaluation.loc[evaluation.index[:5], "status"] = "never seen"  # unknown categories: missing, not an error
    result = quality.gbt_baselines(train, evaluation, spec, settings={"max_iter": 50})
    assert result["tasks"]["income"]["auc"] > 0.9
    assert result["tasks"]["marital"]["auc"] > 0.9
    assert result["features"] == {"numeric": ["age"], "categorical": ["status"]}
    assert result["fits"]["income"]["eval_rows"] == 200


def _reviews_dataset(multi_rmse: float, multi_auc: float = 0.95) -> dict:
    """A finished reviews run: multi-task vs single-task (transfer.json) and the TF-IDF baseline."""
    transfer = {"tasks": {
        "recommended": {"type": "binary", "primary_metric": "auc",
                        "metrics": {"multi_task": {"auc": multi_auc, "log_loss": 0.2},
                                    "single_task": {"auc": 0.94, "log_loss": 0.21}},
                        "difference": {"metric": "auc", "value": multi_auc - 0.94, "low": 0.001, "high": 0.02},
                        "transfer": "positive"},
        "positive_feedback": {"type": "regression", "primary_metric": "rmse",
                              "metrics": {"multi_task": {"rmse": multi_rmse, "mae": 0.6},
                                          "single_task": {"rmse": 0.79, "mae": 0.6}},
                              "difference": {"metric": "rmse", "value": 0.79 - multi_rmse, "low": -0.03, "high": 0.01},
                              "transfer": "neutral"}}}
    return {
        "title": "reviews",
        "tasks": [{"name": "recommended", "type": "binary", "label": "recommended", "primary_metric": "auc"},
                  {"name": "positive_feedback", "type": "regression", "label": "positive_feedback",
                   "primary_metric": "rmse"}],
        "runs": [{"name": "reviews", "config": "configs/reviews.yaml", "baselines": True, "pushed": True,
                  "command": "commerce-mtl run --config configs/reviews.yaml", "seconds": 10.0,
                  "metrics": {"recommended": {"auc": multi_auc}, "positive_feedback": {"rmse": multi_rmse}},
                  "transfer": transfer}],
        "classical": {"name": "TF-IDF", "tasks": {"recommended": {"auc": 0.954, "log_loss": 0.21},
                                                  "positive_feedback": {"rmse": 0.812, "mae": 0.66,
                                                                        "mean_rmse": 0.874}}},
    }


def test_targets_flag_a_missed_target_lower_is_better_aware(quality):
    # rmse 0.80 is worse than the single-task 0.79 (lower is better), though better than TF-IDF's 0.812.
    dataset = _reviews_dataset(multi_rmse=0.80, multi_auc=0.96)
    single, tfidf = quality.targets_met(dataset, quality.TARGETS["reviews"])
    assert single["met"] is False
    assert [c["task"] for c in single["checks"] if c["met"] is False] == ["positive_feedback"]
    assert tfidf["met"] is True


def test_targets_met_when_multi_task_wins_everywhere(quality):
    dataset = _reviews_dataset(multi_rmse=0.78, multi_auc=0.96)
    assert [t["met"] for t in quality.targets_met(dataset, quality.TARGETS["reviews"])] == [True, True]
    # Below the TF-IDF AUC (higher is better) misses the classical target only.
    dataset = _reviews_dataset(multi_rmse=0.78, multi_auc=0.95)
    assert [t["met"] for t in quality.targets_met(dataset, quality.TARGETS["reviews"])] == [True, False]


def test_bayes_gap_and_census_targets(quality):
    def generated(multi_auc: float) -> dict:
        return {"tasks": [{"name": "click", "type": "binary", "primary_metric": "auc"},
                          {"name": "satisfaction", "type": "regression", "primary_metric": "rmse"}],
                "runs": [{"name": "generated", "baselines": True, "metrics": {"click": {"auc": multi_auc}},
                          "transfer": {"tasks": {"click": {"metrics": {"multi_task": {"auc": multi_auc}},
                                                           "bayes": {"auc": 0.80}}}}}]}

    assert quality.targets_met(generated(0.795), quality.TARGETS["generated"])[0]["met"] is True
    missed = quality.targets_met(generated(0.78), quality.TARGETS["generated"])[0]
    assert missed["met"] is False and missed["checks"][0]["gap"] == pytest.approx(0.02)

    def census(mmoe_auc: float, ple: dict) -> dict:
        tasks = [{"name": "income", "type": "binary", "primary_metric": "auc"}]
        return {"tasks": tasks, "classical": {"name": "GBT", "tasks": {"income": {"auc": 0.9475}}},
                "runs": [{"name": "census", "metrics": {"income": {"auc": 0.95}}},
                         {"name": "census_mmoe", "metrics": {"income": {"auc": mmoe_auc}}}, ple]}

    ple_ok = {"name": "census_ple", "metrics": {"income": {"auc": 0.9475}}}  # equal is enough: ≥
    assert quality.targets_met(census(0.951, ple_ok), quality.TARGETS["census"])[0]["met"] is True
    assert quality.targets_met(census(0.94, ple_ok), quality.TARGETS["census"])[0]["met"] is False
    # One architecture did not run: the target cannot be called met.
    failed = quality.targets_met(census(0.951, {"name": "census_ple", "failed": "exit status 1", "metrics": None}),
                                 quality.TARGETS["census"])[0]
    assert failed["met"] is None and "census_ple" in failed["reason"]


def test_markdown_rows_per_task_and_missed_target(quality):
    dataset = _reviews_dataset(multi_rmse=0.80, multi_auc=0.96)
    dataset["targets"] = quality.targets_met(dataset, quality.TARGETS["reviews"])
    skipped = {"title": "census", "skipped": "data file /nowhere/census-income.test.gz not found",
               "runs": [{"name": "census", "config": "configs/census.yaml",
                         "skipped": "data file /nowhere/census-income.test.gz not found"}]}
    skipped["targets"] = quality.targets_met(skipped, quality.TARGETS["census"])
    text = quality.markdown({"command": "bench/quality.py", "datasets": {"reviews": dataset, "census": skipped}})
    rows = [line for line in text.splitlines() if line.startswith("| ")]
    assert any(r.startswith("| recommended | auc | 0.9600 | 0.9400 [Δ +0.0200") for r in rows)
    assert any(r.startswith("| positive_feedback | rmse | 0.8000 | 0.7900") and "train mean: 0.8740" in r
               for r in rows)
    assert "**missed**: multi-task ≥ single-task" in text
    assert "**met**: multi-task better than the TF-IDF baseline" in text
    assert "not evaluated: each architecture's AUC ≥ the GBT AUC on each task — data file /nowhere" in text


def test_missing_data_is_skipped_with_its_reason(quality, tmp_path, monkeypatch):
    def no_pipelines(*args, **kwargs):
        raise AssertionError(f"a pipeline was started: {args}")

    monkeypatch.setattr(quality, "launch", no_pipelines)
    status = quality.main(["--datasets", "reviews", "--data", str(tmp_path / "no-data"), "--out", str(tmp_path),
                           "--workdir", str(tmp_path / "work")])
    assert status == 0
    results = json.loads((tmp_path / "quality.json").read_text())
    reviews = results["datasets"]["reviews"]
    assert "not found" in reviews["skipped"] and "womens_clothing" in reviews["skipped"]
    assert reviews["targets"] and all(t["met"] is None for t in reviews["targets"])
    assert "**Skipped**" in (tmp_path / "quality.md").read_text()


def test_datasets_measured_separately_accumulate_in_the_results(quality, tmp_path, monkeypatch):
    monkeypatch.setattr(quality, "launch", lambda *a, **k: pytest.fail("no pipeline may start without data"))
    common = ["--data", str(tmp_path / "no-data"), "--out", str(tmp_path), "--workdir", str(tmp_path / "work")]
    assert quality.main(["--datasets", "census", *common]) == 0
    assert quality.main(["--datasets", "reviews", *common]) == 0
    results = json.loads((tmp_path / "quality.json").read_text())
    assert list(results["datasets"]) == ["reviews", "census"]  # the script's order, not the order measured
    assert results["datasets"]["census"]["command"].endswith("--datasets census " + " ".join(common))
    assert "--datasets reviews" in results["datasets"]["reviews"]["command"]
    text = (tmp_path / "quality.md").read_text()
    assert text.index("## reviews") < text.index("--datasets reviews") < text.index("## census")
    assert text.index("## census") < text.index("--datasets census")
    # Measuring a dataset again replaces only its own entry.
    assert quality.main(["--datasets", "census", *common]) == 0
    again = json.loads((tmp_path / "quality.json").read_text())
    assert again["datasets"]["reviews"] == results["datasets"]["reviews"]


def test_an_unreadable_results_file_stops_the_run_before_any_work(quality, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(quality, "launch", lambda *a, **k: pytest.fail("no pipeline may start"))
    (tmp_path / "quality.json").write_text("{ not json")
    with pytest.raises(SystemExit) as stopped:
        quality.main(["--datasets", "census", "--data", str(tmp_path / "no-data"), "--out", str(tmp_path),
                      "--workdir", str(tmp_path / "work")])
    assert stopped.value.code == 2
    assert f"{tmp_path / 'quality.json'} exists but is not a readable JSON results file" in capsys.readouterr().err
    assert (tmp_path / "quality.json").read_text() == "{ not json"  # the earlier results are left as they were
