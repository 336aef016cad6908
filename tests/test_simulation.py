"""Behavioural tests for the simulated e-commerce data generator."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest

from pipeline import simulation as sim

ROWS = 20_000
SEED = 0
# Words shared by many titles/queries that say nothing about the product.
STOPWORDS = frozenset({"for", "with", "by", "and", "the", "a", "of", "new", "best", "cheap", "premium",
                       "budget", "sale", "gift", "under", "top", "rated", "high", "end", "discount",
                       "affordable", "basic", "pro", "-", "|", "in"})


def _read(path) -> pd.DataFrame:
    return pd.read_csv(path, dtype=str, keep_default_na=False)


def _auc(y: np.ndarray, score: np.ndarray) -> float:
    """Mann-Whitney AUC with average ranks for ties (churn scores tie per user)."""
    _, inverse, counts = np.unique(score, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    ranks = ((ends - counts + 1 + ends) / 2.0)[inverse]
    n_pos = int(y.sum())
    n_neg = len(y) - n_pos
    return float((ranks[y == 1].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _tokens(text: str) -> set[str]:
    return set(re.findall(r"[a-z0-9][a-z0-9\-]*", text.lower())) - STOPWORDS


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    return sim.generate(ROWS, SEED, tmp_path_factory.mktemp("sim"))


@pytest.fixture(scope="module")
def events(generated) -> pd.DataFrame:
    return _read(generated.events_csv)


@pytest.fixture(scope="module")
def oracle(generated) -> pd.DataFrame:
    return _read(generated.oracle_csv)


def _labelled(events: pd.DataFrame, task: str) -> pd.Series:
    return events.loc[events[task] != "", task].astype(int)


# ---------------------------------------------------------------- API / files
@pytest.mark.parametrize("rows", [0, -3])
def test_rejects_non_positive_rows(tmp_path, rows):
    with pytest.raises(ValueError, match="rows must be >= 1"):
        sim.generate(rows, 0, tmp_path)


def test_same_seed_gives_identical_bytes_and_other_seed_differs(tmp_path):
    first = sim.generate(600, 7, tmp_path / "a")
    second = sim.generate(600, 7, tmp_path / "b")
    other = sim.generate(600, 8, tmp_path / "c")
    assert first.events_csv.read_bytes() == second.events_csv.read_bytes()
    assert first.oracle_csv.read_bytes() == second.oracle_csv.read_bytes()
    assert first.events_csv.read_bytes() != other.events_csv.read_bytes()
    assert first.label_counts == second.label_counts


def test_tiny_run_still_valid(tmp_path):
    result = sim.generate(1, 0, tmp_path)
    assert len(_read(result.events_csv)) == 1
    assert len(_read(result.oracle_csv)) == 1


def test_writes_exactly_two_files_in_expected_places(generated):
    out = generated.events_csv.parent.parent
    assert generated.events_csv == out / "events" / "events.csv"
    assert generated.oracle_csv == out / "oracle" / "bayes_optimal.csv"
    assert [p.name for p in generated.events_csv.parent.iterdir()] == ["events.csv"]
    assert [p.name for p in generated.oracle_csv.parent.iterdir()] == ["bayes_optimal.csv"]
    assert generated.rows == ROWS


def test_public_constants():
    assert sim.BINARY_TASKS == ("click", "purchase", "ad_click", "fraud", "churn")
    assert len(sim.INTENTS) == 6 and "cancel_account" in sim.INTENTS
    assert "gift_cards" in sim.CATEGORIES and "electronics" in sim.CATEGORIES


def test_exact_columns(generated):
    header = generated.events_csv.read_text(encoding="utf-8").splitlines()[0]
    assert header.split(",") == list(sim.EVENT_COLUMNS)
    assert list(sim.EVENT_COLUMNS)[:3] == ["event_id", "user_id", "item_id"]
    oracle_header = generated.oracle_csv.read_text(encoding="utf-8").splitlines()[0]
    assert oracle_header.split(",") == ["event_id", "click", "purchase", "ad_click", "fraud", "churn"]


def test_label_counts_match_file(generated, events):
    for task in ("click", "purchase", "ad_click", "fraud", "intent", "satisfaction", "churn"):
        assert generated.label_counts[task] == int((events[task] != "").sum()), task


# ---------------------------------------------------------------- feature values
def test_ids_and_feature_domains(events):
    assert len(events) == ROWS and events.event_id.is_unique
    assert events.event_id.str.fullmatch(r"e\d{7}").all()
    assert events.user_id.str.fullmatch(r"u\d{5}").all()
    assert events.item_id.str.fullmatch(r"i\d{5}").all()
    assert ROWS / 16 < events.user_id.nunique() <= ROWS / 8
    assert ROWS / 8 < events.item_id.nunique() <= ROWS / 4
    assert set(events.channel) == {"search", "feed", "ad"}
    assert set(events.device) == {"app", "mobile_web", "desktop"}
    assert set(events.item_category) == set(sim.CATEGORIES)
    assert events.item_price.str.fullmatch(r"\d+\.\d{2}").all()
    assert (events.item_price.astype(float) > 0).all()
    assert events.user_age.astype(int).between(18, 80).all()
    assert events.account_age_days.astype(int).between(0, 3000).all()
    assert (events.user_orders_90d.astype(int) >= 0).all()


def test_query_present_only_for_search(events):
    is_search = events.channel == "search"
    assert (events.loc[is_search, "query"] != "").all()
    assert (events.loc[~is_search, "query"] == "").all()
    assert events.loc[is_search, "query"].nunique() > 500  # varied, not a few templates
    assert (events.item_title != "").all()


def test_cs_message_share_and_variety(events):
    has_msg = events.cs_message != ""
    assert 0.12 < has_msg.mean() < 0.28
    assert events.loc[has_msg, "cs_message"].nunique() > 0.8 * has_msg.sum()


# ---------------------------------------------------------------- missingness
def test_label_missingness_rules(events):
    is_ad = events.channel == "ad"
    assert ((events.click != "") == ~is_ad).all()
    assert ((events.ad_click != "") == is_ad).all()
    assert ((events.purchase != "") == (events.click == "1")).all()
    assert ((events.fraud != "") == (events.purchase == "1")).all()
    has_msg = events.cs_message != ""
    assert ((events.intent != "") == has_msg).all()
    assert ((events.satisfaction != "") == has_msg).all()
    for task in sim.BINARY_TASKS:
        assert set(events[task]) <= {"", "0", "1"}, task


def test_churn_is_constant_per_user_and_mostly_observed(events):
    per_user = events.groupby("user_id").churn.nunique()
    assert (per_user == 1).all()
    observed_users = events.groupby("user_id").churn.first() != ""
    assert 0.75 < observed_users.mean() < 0.95


def test_intent_and_satisfaction_values(events):
    has_msg = events.cs_message != ""
    assert set(events.loc[has_msg, "intent"]) == set(sim.INTENTS)
    sat = events.loc[has_msg, "satisfaction"]
    assert sat.str.fullmatch(r"\d\.\d").all()
    assert sat.astype(float).between(1.0, 5.0).all()
    assert sat.astype(float).std() > 0.5


# ---------------------------------------------------------------- label rates
@pytest.mark.parametrize("task,low,high", [
    ("click", 0.08, 0.20), ("purchase", 0.15, 0.35), ("ad_click", 0.03, 0.10),
    ("fraud", 0.05, 0.18), ("churn", 0.15, 0.30),
])
def test_label_rates(events, task, low, high):
    assert low <= _labelled(events, task).mean() <= high


def test_label_rates_hold_on_smaller_run(tmp_path):
    small = _read(sim.generate(5_000, SEED, tmp_path).events_csv)
    for task, low, high in [("click", 0.08, 0.20), ("purchase", 0.15, 0.35),
                            ("ad_click", 0.03, 0.10), ("churn", 0.15, 0.30)]:
        assert low <= _labelled(small, task).mean() <= high, task


# ---------------------------------------------------------------- oracle
def test_oracle_aligned_with_labels(events, oracle):
    assert (oracle.event_id == events.event_id).all()
    for task in sim.BINARY_TASKS:
        assert ((oracle[task] != "") == (events[task] != "")).all(), task
        p = oracle.loc[oracle[task] != "", task].astype(float)
        assert ((p > 0) & (p < 1)).all()
        # Labels are Bernoulli draws of these probabilities, so rates agree.
        assert abs(p.mean() - _labelled(events, task).mean()) < 0.02, task


@pytest.mark.parametrize("task", sim.BINARY_TASKS)
def test_bayes_optimal_auc_is_learnable_but_noisy(events, oracle, task):
    mask = events[task] != ""
    auc = _auc(events.loc[mask, task].astype(int).to_numpy(), oracle.loc[mask, task].astype(float).to_numpy())
    assert 0.7 < auc < 0.97


def test_auc_helper_handles_ties():
    assert _auc(np.array([0, 1, 0, 1]), np.array([0.1, 0.9, 0.5, 0.5])) == pytest.approx(0.875)


# ---------------------------------------------------------------- text signal
def test_query_matching_title_raises_click(events):
    search = events[events.channel == "search"]
    overlap = np.array([bool(_tokens(q) & _tokens(t)) for q, t in zip(search["query"], search.item_title)])
    click = search.click.astype(int).to_numpy()
    assert 0.2 < overlap.mean() < 0.8
    assert click[overlap].mean() > 2.0 * click[~overlap].mean()


def test_title_quality_cues_drive_purchase(events):
    clicked = events[events.purchase != ""]
    premium = clicked.item_title.str.contains(r"\b(?:Premium|Professional|Luxury|Organic|Genuine Leather)\b")
    budget = clicked.item_title.str.contains(r"\b(?:Cheap|Budget|Basic|Economy|Generic|Faux Leather)\b")
    bought = clicked.purchase.astype(int)
    assert bought[premium].mean() > 1.5 * bought[budget].mean()


def test_gift_cards_are_riskier_orders(events):
    orders = events[events.fraud != ""]
    fraud = orders.fraud.astype(int)
    gift = orders.item_category == "gift_cards"
    assert fraud[gift].mean() > 2.0 * fraud[~gift].mean()


def test_intent_recoverable_from_text_by_nearest_centroid(events):
    msgs = events[events.cs_message != ""]
    docs = [_tokens(m) for m in msgs.cs_message]
    vocab = {w: i for i, w in enumerate(sorted(set().union(*docs)))}
    x = np.zeros((len(docs), len(vocab)))
    for row, doc in enumerate(docs):
        x[row, [vocab[w] for w in doc]] = 1.0
    x /= np.linalg.norm(x, axis=1, keepdims=True) + 1e-9
    y = msgs.intent.to_numpy()
    half = len(y) // 2
    labels = np.array(sim.INTENTS)
    centroids = np.stack([x[:half][y[:half] == k].mean(axis=0) for k in labels])
    predicted = labels[np.argmax(x[half:] @ centroids.T, axis=1)]
    assert (predicted == y[half:]).mean() > 0.6


def test_wording_carries_satisfaction_signal(events):
    msgs = events[events.cs_message != ""]
    sat = msgs.satisfaction.astype(float)
    polite = msgs.cs_message.str.contains(r"\b(?:[Tt]hank|[Aa]ppreciate)")
    angry = msgs.cs_message.str.contains(r"(?:Unacceptable|ridiculous|[Ww]orst|terrible|frustrated|!!)")
    assert sat[polite].mean() - sat[angry].mean() > 1.0


def test_bad_support_experiences_raise_churn(events):
    observed = events[events.churn != ""]
    bad_row = np.isin(observed.intent.to_numpy(), ["damaged_item", "refund_request", "cancel_account"])
    users = observed.assign(bad=bad_row).groupby("user_id").agg(churn=("churn", "first"), bad=("bad", "max"))
    churn = users.churn.astype(int)
    assert churn[users.bad].mean() > 1.5 * churn[~users.bad].mean()
