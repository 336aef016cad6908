"""models/transfer.py: the paired bootstrap covers the true difference, resamples users whole for
per-user metrics, and the report has every task and renders to json / md / html."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from models.metrics import task_metrics
from models.transfer import (TaskData, build_report, compare_task, paired_bootstrap, render_html, render_markdown,
                             transfer_verdict, write_report)

MULTI, SINGLE = "multi_task", "single_task"


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _generate(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Labels drawn from known probabilities; model A = true logit + small noise, B = noisier."""
    logit = rng.normal(-1.0, 1.5, n)
    labels = (rng.random(n) < _sigmoid(logit)).astype(np.float64)
    better = _sigmoid(logit + rng.normal(0.0, 0.5, n))
    worse = _sigmoid(logit + rng.normal(0.0, 0.8, n))
    return labels, better, worse, _sigmoid(logit)


def _binary_task(labels, predictions: dict, **kwargs) -> TaskData:
    return TaskData(name="click", type="binary", labels=labels, mask=np.ones(len(labels)), predictions=predictions,
                    primary_metric=kwargs.pop("primary_metric", "auc"), **kwargs)


def test_bootstrap_interval_contains_the_true_difference():
    big_labels, big_a, big_b, _ = _generate(np.random.default_rng(1), 500_000)
    true_difference = roc_auc_score(big_labels, big_a) - roc_auc_score(big_labels, big_b)
    labels, a, b, _ = _generate(np.random.default_rng(2), 20_000)
    interval = paired_bootstrap(_binary_task(labels, {"a": a, "b": b}), "auc", "a", "b", samples=1000, seed=0)
    assert interval["low"] <= true_difference <= interval["high"], (true_difference, interval)
    assert interval["value"] == pytest.approx(roc_auc_score(labels, a) - roc_auc_score(labels, b))
    assert (interval["samples"], interval["used"], interval["resampled"]) == (1000, 1000, "rows")
    assert transfer_verdict(interval) == "positive"
    # Paired and seeded: b over a on the same resamples is the mirror image.
    mirrored = paired_bootstrap(_binary_task(labels, {"a": a, "b": b}), "auc", "b", "a", samples=1000, seed=0)
    assert (mirrored["low"], mirrored["high"]) == pytest.approx((-interval["high"], -interval["low"]))
    assert transfer_verdict(mirrored) == "negative"


def test_equal_models_are_neutral():
    labels, a, _, truth = _generate(np.random.default_rng(3), 5_000)
    identical = paired_bootstrap(_binary_task(labels, {"a": a, "b": a.copy()}), "log_loss", "a", "b", samples=300)
    assert identical["low"] <= 0.0 <= identical["high"]
    assert transfer_verdict(identical) == "neutral"
    # Two different models equally far from the truth: the interval straddles 0.
    twin = _sigmoid(np.log(truth / (1 - truth)) + np.random.default_rng(6).normal(0.0, 0.5, len(truth)))
    twins = paired_bootstrap(_binary_task(labels, {"a": a, "b": twin}), "auc", "a", "b", samples=300)
    assert twins["low"] < 0.0 < twins["high"]
    assert transfer_verdict(twins) == "neutral"


def _grouped_task(users: int) -> TaskData:
    """Every user: labels 1,0,1,0; model a ranks both positives first (AUC 1, NDCG 1), model b
    scores .9,.8,.1,.2 (AUC: .9 beats both negatives, .1 beats neither -> 2/4)."""
    labels = np.tile([1.0, 0.0, 1.0, 0.0], users)
    a = np.tile([0.9, 0.1, 0.8, 0.2], users)
    b = np.tile([0.9, 0.8, 0.1, 0.2], users)
    groups = np.repeat([f"user{i}" for i in range(users)], 4)
    return _binary_task(labels, {MULTI: a, SINGLE: b}, groups=groups, primary_metric="gauc")


def test_per_user_metrics_resample_whole_users():
    task = _grouped_task(30)
    # Whole users drawn: every user's AUC difference is 1 - 0.5, so is every resample's GAUC difference.
    # Drawing rows instead would change b's per-user AUC from resample to resample.
    gauc = paired_bootstrap(task, "gauc", MULTI, SINGLE, samples=200)
    assert (gauc["resampled"], gauc["units"], gauc["used"]) == ("users", 30, 200)
    assert (gauc["value"], gauc["low"], gauc["high"]) == pytest.approx((0.5, 0.5, 0.5))
    # b ranks its positives 1st and 4th: NDCG = (1 + 1/log2(5)) / (1 + 1/log2(3)), the same for every user.
    ndcg = paired_bootstrap(task, "ndcg_at_10", MULTI, SINGLE, samples=200)
    expected = 1.0 - (1 + 1 / math.log2(5)) / (1 + 1 / math.log2(3))
    assert (ndcg["value"], ndcg["low"], ndcg["high"]) == pytest.approx((expected, expected, expected))
    # The pooled (row) AUC on the same rows does vary across resamples.
    rows = paired_bootstrap(task, "auc", MULTI, SINGLE, samples=200)
    assert rows["resampled"] == "rows" and rows["low"] < rows["high"]


def test_per_user_interval_is_finite_when_users_differ():
    task = _grouped_task(40)
    # Half of the users: b ranks like a there (difference 0 instead of 0.5).
    task.predictions[SINGLE][: 4 * 20] = task.predictions[MULTI][: 4 * 20]
    gauc = paired_bootstrap(task, "gauc", MULTI, SINGLE, samples=300)
    assert gauc["value"] == pytest.approx(0.25)  # (20 * 0 + 20 * 0.5) / 40 users of 4 impressions
    assert 0.0 < gauc["low"] < 0.25 < gauc["high"] < 0.5


def test_resamples_without_both_classes_are_skipped_and_counted():
    task = _binary_task(np.array([1.0, 0, 0, 0, 0]), {"a": np.array([0.9, 0.1, 0.2, 0.3, 0.4]),
                                                        "b": np.array([0.1, 0.2, 0.3, 0.4, 0.5])})
    interval = paired_bootstrap(task, "auc", "a", "b", samples=200)
    # The positive is missing from a resample with probability 0.8^5 = 0.33: about 134 of 200 remain.
    assert 100 < interval["used"] < 170 and interval["samples"] == 200
    # Whenever the positive is drawn, a ranks it first (AUC 1) and b last (AUC 0).
    assert (interval["value"], interval["low"], interval["high"]) == pytest.approx((1.0, 1.0, 1.0))


def test_compare_task_with_bayes_probabilities():
    labels = np.array([1, 0, 1, 0, 1, 0, 0.0])
    mask = np.array([1, 1, 1, 1, 1, 1, 0.0])  # the last row is unlabelled
    bayes = np.array([0.9, 0.1, np.nan, 0.2, 0.7, 0.3, 0.99])  # row 2 unknown
    multi = np.array([0.6, 0.7, 0.9, 0.1, 0.8, 0.2, 0.5])
    task = TaskData(name="click", type="binary", labels=labels, mask=mask, primary_metric="auc", bayes=bayes,
                    predictions={MULTI: multi, SINGLE: np.full(7, 0.5)})
    result = compare_task(task, samples=100)
    assert (result["labelled_rows"], result["bayes_rows"]) == (6, 5)
    # Rows 0,1,3,4,5: labels 1,0,0,1,0. Bayes .9,.7 beat .1,.2,.3: AUC 1. Multi: .6 beats .1,.2 but
    # not .7, .8 beats all three: 5/6. Single (constant): 1/2.
    assert result["bayes"]["auc"] == pytest.approx(1.0)
    assert result["bayes_gap"][MULTI]["auc"] == pytest.approx(1 - 5 / 6)
    assert result["bayes_gap"][SINGLE]["auc"] == pytest.approx(0.5)
    # The models' own metrics use all 6 labelled rows (row 2 too).
    assert result["metrics"][MULTI] == pytest.approx(task_metrics("binary", labels[:6], multi[:6]))


def _report_tasks() -> list[TaskData]:
    rng = np.random.default_rng(5)
    n = 400
    labels, a, b, truth = _generate(rng, n)
    click = TaskData(name="click", type="binary", labels=labels, mask=np.ones(n), primary_metric="auc",
                     predictions={MULTI: a[:, None], SINGLE: b}, groups=np.repeat(np.arange(40), 10), bayes=truth)
    genre = rng.integers(0, 3, n)
    sharp = np.eye(3)[genre] * 0.6 + 0.4 / 3
    flat = np.full((n, 3), 1 / 3) + np.eye(3)[rng.integers(0, 3, n)] * 0.01
    genre_task = TaskData(name="genre", type="multiclass", labels=genre, mask=(rng.random(n) < 0.7).astype(float),
                          primary_metric="accuracy", predictions={MULTI: sharp, SINGLE: flat})
    price = rng.normal(3.0, 1.0, n)
    price_task = TaskData(name="price", type="regression", labels=price, mask=np.ones(n), primary_metric="rmse",
                          predictions={MULTI: price + rng.normal(0, 0.5, n), SINGLE: price + rng.normal(0, 0.5, n)})
    return [click, genre_task, price_task]


CURVES = {
    MULTI: {"step": [1, 10, 20], "loss": [3.0, 2.0, 1.5], "click_loss": [0.7, 0.6, 0.5], "genre_loss": [1.1, 0.9, 0.8],
            "price_loss": [1.0, 0.6, 0.5], "weight_click": [1.0, 1.2, 1.3], "weight_genre": [1.0, 0.9, 0.8],
            "weight_price": [1.0, 0.9, 0.9]},
    SINGLE: {"step": [1, 10, 20], "click_loss": [0.7, 0.65, 0.6], "genre_loss": [1.1, 1.0, 0.95],
             "price_loss": [1.0, 0.7]},  # one value short: plotted up to the shorter, with a note
}


@pytest.fixture(scope="module")
def report() -> dict:
    return build_report(_report_tasks(), "commerce", curves=CURVES, samples=200, seed=7)


def test_build_report_has_every_task_with_both_models(report):
    assert list(report["tasks"]) == ["click", "genre", "price"]
    assert report["bootstrap"] == {"samples": 200, "seed": 7, "confidence": 0.95}
    keys = {"click": {"auc", "gauc", "ndcg_at_10", "log_loss"}, "genre": {"accuracy", "macro_f1"},
            "price": {"rmse", "mae"}}
    for name, result in report["tasks"].items():
        assert set(result["metrics"]) == {MULTI, SINGLE}
        for model in (MULTI, SINGLE):
            assert keys[name] <= set(result["metrics"][model])
        assert result["difference"]["metric"] == result["primary_metric"]
        assert result["transfer"] in report["summary"] and name in report["summary"][result["transfer"]]
    assert report["tasks"]["genre"]["labelled_rows"] < 400  # the mask is honoured
    # The sharp multi-task genre probabilities are right on every row, the flat ones on a third.
    assert report["tasks"]["genre"]["transfer"] == "positive"
    assert sorted(sum(report["summary"].values(), [])) == ["click", "genre", "price"]
    assert "bayes_gap" in report["tasks"]["click"] and "bayes_gap" not in report["tasks"]["price"]


def test_markdown_has_one_row_per_task(report):
    text = render_markdown(report)
    lines = text.splitlines()
    header = lines.index("| task | metric | multi-task | single-task | difference [95% CI] | transfer | Bayes gap |")
    rows = []
    for line in lines[header + 2:]:
        if not line.startswith("|"):
            break
        rows.append(line)
    assert [r.split(" | ")[0] for r in rows] == ["| click", "| genre", "| price"]
    assert rows[0].split(" | ")[1] == "auc" and rows[0].split(" | ")[-1].startswith("auc: ")
    assert "## All metrics" in text and "| genre | macro_f1 |" in text


def test_html_escapes_text_and_says_when_nothing_is_plotted(report):
    page = render_html({**report, "model": "<b>commerce</b>"}, {"Loss weights": None}, ["a note & more"])
    assert "&lt;b&gt;commerce&lt;/b&gt;" in page and "<b>commerce" not in page
    assert "Nothing to plot" in page and "a note &amp; more" in page


def test_write_report_files(report, tmp_path):
    pytest.importorskip("matplotlib", reason="transfer.html's plots need matplotlib, not installed in this venv")
    paths = write_report(report, tmp_path / "out")
    assert {k: p.name for k, p in paths.items()} == {"json": "transfer.json", "md": "transfer.md",
                                                      "html": "transfer.html"}
    assert json.loads(paths["json"].read_text()) == report
    page = paths["html"].read_text()
    assert page.count('<img src="data:image/png;base64,') >= 3
    assert all(name in page for name in ("click", "genre", "price"))
    assert "price_loss has 2 values for 3 steps" in page
    assert paths["md"].read_text() == render_markdown(report)
    # Undefined values are written as null (strict JSON).
    price = report["tasks"]["price"]
    undefined_price = {**price, "difference": {**price["difference"], "low": math.nan}}
    undefined = {**report, "tasks": {**report["tasks"], "price": undefined_price}}
    written = json.loads(write_report(undefined, tmp_path / "nan")["json"].read_text())
    assert written["tasks"]["price"]["difference"]["low"] is None


def test_task_data_errors_name_the_task():
    n = 4
    with pytest.raises(ValueError, match="task 'price': Bayes probabilities are for binary tasks"):
        TaskData(name="price", type="regression", labels=np.ones(n), mask=np.ones(n), primary_metric="rmse",
                 predictions={MULTI: np.ones(n)}, bayes=np.ones(n))
    with pytest.raises(ValueError, match="task 'click': primary metric 'gauc'.*need groups"):
        TaskData(name="click", type="binary", labels=np.ones(n), mask=np.ones(n), primary_metric="gauc",
                 predictions={MULTI: np.ones(n)})
    with pytest.raises(ValueError, match="task 'click': 3 predictions of 'single_task' for 4 rows"):
        TaskData(name="click", type="binary", labels=np.ones(n), mask=np.ones(n), primary_metric="auc",
                 predictions={MULTI: np.ones(n), SINGLE: np.ones(3)})
    task = TaskData(name="click", type="binary", labels=np.ones(n), mask=np.zeros(n), primary_metric="auc",
                    predictions={MULTI: np.ones(n), SINGLE: np.ones(n)})
    with pytest.raises(ValueError, match="task 'click': no labelled evaluation rows"):
        compare_task(task)


def test_primary_ndcg_at_other_k():
    task = _grouped_task(5)
    task.primary_metric = "ndcg_at_1"
    result = compare_task(task, samples=50)
    # Top 1: both models put a positive first in every user.
    assert result["metrics"][MULTI]["ndcg_at_1"] == pytest.approx(1.0)
    assert (result["difference"]["value"], result["transfer"]) == (pytest.approx(0.0), "neutral")
