"""models/metrics.py against values worked out by hand (the arithmetic is in the comments), plus a
few cross-checks with scikit-learn on random data."""
from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, f1_score, roc_auc_score

from models.metrics import (binary_metrics, group_auc, group_auc_terms, group_ndcg, higher_is_better,
                            macro_f1_from_confusion, metric_improvement, multiclass_metrics, ndcg_at_k,
                            regression_metrics, task_metrics, weighted_metric)

LABELS = [1, 0, 1, 0]
SCORES = [0.8, 0.4, 0.3, 0.2]


def test_binary_metrics_by_hand():
    m = binary_metrics(LABELS, SCORES)
    # Pairs (positive, negative): (.8,.4) won, (.8,.2) won, (.3,.4) lost, (.3,.2) won -> 3/4.
    assert m["auc"] == pytest.approx(0.75)
    # Ranked .8(+) .4(-) .3(+) .2(-): precision at each positive 1/1 and 2/3, recall steps 1/2 each.
    assert m["pr_auc"] == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)
    assert m["log_loss"] == pytest.approx(-(math.log(0.8) + math.log(0.6) + math.log(0.3) + math.log(0.8)) / 4)
    # Mean prediction 1.7/4 = 0.425 over mean label 0.5.
    assert m["calibration"] == pytest.approx(0.85)
    # Only .8 is above 0.5: predicted [1,0,0,0] vs [1,0,1,0].
    assert (m["binary_accuracy"], m["precision"], m["recall"]) == pytest.approx((0.75, 1.0, 0.5))


def test_binary_metrics_weighted_and_tied():
    m = binary_metrics(LABELS, SCORES, weights=[2, 1, 1, 1])
    # AUC: positive .8 (w 2) beats both negatives (w 1 + 1): 2*2; .3 (w 1) beats only .2: 1*1.
    # Total pair weight = (2+1) * (1+1) = 6 -> 5/6.
    assert m["auc"] == pytest.approx(5 / 6)
    # Weighted means: predictions (1.6+.4+.3+.2)/5 = .5, labels 3/5 = .6 -> .5/.6.
    assert m["calibration"] == pytest.approx(0.5 / 0.6)
    # A tie between a positive and a negative counts 1/2: pairs (.9,.5) 1, (.9,.1) 1, (.5,.5) 1/2,
    # (.5,.1) 1 -> 3.5/4.
    assert binary_metrics([1, 0, 1, 0], [0.9, 0.5, 0.5, 0.1])["auc"] == pytest.approx(0.875)


def test_binary_metrics_undefined_with_one_class():
    m = binary_metrics([0, 0, 0], [0.2, 0.4, 0.1])
    assert math.isnan(m["auc"]) and math.isnan(m["pr_auc"])
    # Mean label 0: the ratio is undefined, not infinite.
    assert math.isnan(m["calibration"])
    assert m["log_loss"] == pytest.approx(-(math.log(0.8) + math.log(0.6) + math.log(0.9)) / 3)


def test_auc_and_average_precision_agree_with_sklearn_on_weighted_ties():
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 2, 400).astype(float)
    scores = np.round(rng.random(400), 1)  # many ties
    weights = rng.integers(0, 4, 400).astype(float)
    m = binary_metrics(labels, scores, weights)
    kept = weights > 0
    assert m["auc"] == pytest.approx(roc_auc_score(labels, scores, sample_weight=weights))
    assert m["pr_auc"] == pytest.approx(average_precision_score(labels[kept], scores[kept],
                                                                sample_weight=weights[kept]))


def test_weight_k_is_the_row_repeated_k_times():
    # The bootstrap relies on it: a resample is a weight (multiplicity) matrix.
    rng = np.random.default_rng(4)
    labels, scores = rng.integers(0, 2, 50).astype(float), rng.random(50)
    counts = rng.integers(0, 3, (3, 50)).astype(float)
    for metric in ("auc", "pr_auc", "log_loss", "calibration"):
        batch = weighted_metric("binary", metric, labels, scores)(counts)
        for row, c in zip(batch, counts):
            repeated = np.repeat(np.arange(50), c.astype(int))
            assert row == pytest.approx(binary_metrics(labels[repeated], scores[repeated])[metric]), metric


def test_multiclass_metrics_by_hand():
    labels = [0, 0, 0, 1, 1, 2]
    predicted = [0, 0, 1, 1, 2, 2]
    # Four classes, class 3 neither a label nor a prediction: it is left out of the macro average.
    probabilities = np.full((6, 4), 0.1)
    probabilities[np.arange(6), predicted] = 0.7
    m = multiclass_metrics(labels, probabilities)
    assert m["accuracy"] == pytest.approx(4 / 6)
    # class 0: TP 2, FP 0, FN 1 -> 4/5; class 1: TP 1, FP 1 (row 2), FN 1 (row 4) -> 2/4;
    # class 2: TP 1, FP 1 (row 4), FN 0 -> 2/3. Macro = (0.8 + 0.5 + 2/3) / 3.
    assert m["macro_f1"] == pytest.approx((0.8 + 0.5 + 2 / 3) / 3)
    assert m["macro_f1"] == pytest.approx(f1_score(labels, predicted, average="macro", labels=[0, 1, 2]))
    # P(label) is 0.7 on the 4 correct rows and 0.1 on the 2 others.
    assert m["log_loss"] == pytest.approx(-(4 * math.log(0.7) + 2 * math.log(0.1)) / 6)
    # Wrong rows: the label's 0.1 ties with two other 0.1s, one class (0.7) is above -> in the top 2.
    assert m["top2_accuracy"] == pytest.approx(1.0)
    confusion = [[2, 1, 0, 0], [0, 1, 1, 0], [0, 0, 1, 0], [0, 0, 0, 0]]
    assert macro_f1_from_confusion(confusion) == pytest.approx((0.8 + 0.5 + 2 / 3) / 3)


def test_regression_metrics_by_hand():
    m = regression_metrics([1, 2, 3], [1.5, 2, 5])
    # Errors .5, 0, 2: MAE 2.5/3, MSE (.25 + 0 + 4)/3.
    assert m["mae"] == pytest.approx(2.5 / 3)
    assert m["mse"] == pytest.approx(4.25 / 3)
    assert m["rmse"] == pytest.approx(math.sqrt(4.25 / 3))


# User a: 4 rows, b: 2 rows, c: 3 rows with no positive.
GAUC_LABELS = [1, 0, 0, 0, 1, 0, 0, 0, 0]
GAUC_SCORES = [0.9, 0.5, 0.95, 0.1, 0.2, 0.6, 0.1, 0.2, 0.3]
GAUC_GROUPS = ["a", "a", "a", "a", "b", "b", "c", "c", "c"]


def test_gauc_weights_users_by_impressions_and_skips_one_class_users():
    # a: .9 beats .5 and .1, loses to .95 -> 2/3 over 4 impressions; b: .2 loses to .6 -> 0 over 2;
    # c has no positive: no AUC, left out. GAUC = (4 * 2/3 + 2 * 0) / (4 + 2) = 4/9
    # (unweighted mean would be 1/3; counting c's impressions 8/3 / 9).
    assert group_auc(GAUC_LABELS, GAUC_SCORES, GAUC_GROUPS) == pytest.approx(4 / 9)
    assert group_auc_terms(GAUC_LABELS[:4], GAUC_SCORES[:4]) == pytest.approx((4.0, 2 / 3))
    assert group_auc_terms(GAUC_LABELS[6:], GAUC_SCORES[6:]) is None
    # Weight 3 on b's rows: impressions 6, GAUC = (4 * 2/3) / (4 + 6) = 0.2667.
    weights = [1, 1, 1, 1, 3, 3, 1, 1, 1]
    assert group_auc(GAUC_LABELS, GAUC_SCORES, GAUC_GROUPS, weights) == pytest.approx((8 / 3) / 10)


def test_gauc_is_nan_without_any_two_class_user():
    assert math.isnan(group_auc([1, 0, 1], [0.1, 0.2, 0.3], ["a", "b", "c"]))


def test_ndcg_of_one_group_by_hand():
    # The only positive is ranked 2nd: DCG = 1/log2(3), ideal DCG = 1/log2(2) = 1.
    assert group_ndcg([0, 1, 0], [0.9, 0.8, 0.1]) == pytest.approx(1 / math.log2(3))
    # Graded: ranking by score is rows 1 (gain 2), 2 (0), 3 (1), 0 (3):
    # DCG = 2/1 + 0/log2(3) + 1/log2(4) + 3/log2(5); ideal order 3, 2, 1, 0: 3 + 2/log2(3) + 1/2.
    dcg = 2 + 0.5 + 3 / math.log2(5)
    ideal = 3 + 2 / math.log2(3) + 0.5
    assert group_ndcg([3, 2, 0, 1], [0.1, 0.9, 0.8, 0.7]) == pytest.approx(dcg / ideal)
    # Ties keep the input order: the positive, second in the input, is ranked 2nd.
    assert group_ndcg([0, 1], [0.5, 0.5]) == pytest.approx(1 / math.log2(3))
    assert group_ndcg([0, 0], [0.5, 0.2]) is None


def test_ndcg_cuts_at_k():
    scores = np.linspace(1.0, 0.0, 12)  # row i is ranked i+1
    alone = np.zeros(12)
    alone[10] = 1  # ranked 11th: outside the top 10, but the ideal ranking puts it 1st
    assert group_ndcg(alone, scores, k=10) == pytest.approx(0.0)
    both = alone.copy()
    both[0] = 1  # ranked 1st: DCG@10 = 1, ideal = 1 + 1/log2(3)
    assert group_ndcg(both, scores, k=10) == pytest.approx(1 / (1 + 1 / math.log2(3)))
    assert group_ndcg(alone, scores, k=11) == pytest.approx((1 / math.log2(12)) / 1)


def test_ndcg_at_k_averages_users_with_a_positive():
    labels = [0, 1, 0, 0, 0, 1, 1, 0]
    scores = [0.9, 0.8, 0.7, 0.6, 0.1, 0.5, 0.4, 0.3]
    groups = ["a", "a", "b", "b", "b", "c", "c", "c"]
    # a: positive 2nd -> 1/log2(3); b: no positive, left out; c: positive 1st -> 1.
    expected = (1 / math.log2(3) + 1.0) / 2
    assert ndcg_at_k(labels, scores, groups) == pytest.approx(expected)
    # Row 4 (b, a positive at the top) unlabelled: b still has no labelled positive.
    assert ndcg_at_k([0, 1, 0, 0, 1, 1, 1, 0], [0.9, 0.8, 0.7, 0.6, 1.0, 0.5, 0.4, 0.3], groups,
                     weights=[1, 1, 1, 1, 0, 1, 1, 1]) == pytest.approx(expected)


def test_masked_rows_change_no_metric():
    # Unlabelled rows (weight 0) carry placeholder labels that would be invalid if they counted.
    garbage = 3
    binary = task_metrics("binary", LABELS + [garbage, garbage], SCORES + [0.99, 0.01], [1, 1, 1, 1, 0, 0],
                          groups=["a", "a", "b", "b", None, None])
    clean = task_metrics("binary", LABELS, SCORES, groups=["a", "a", "b", "b"])
    assert binary == pytest.approx(clean)
    assert clean["gauc"] == pytest.approx(1.0)  # a: .8 over .4; b: .3 over .2
    probabilities = np.eye(3)[[0, 1, 2, 0]] * 0.8 + 0.2 / 3
    masked = task_metrics("multiclass", [0, 1, 2, -1], probabilities, [1, 1, 1, 0])
    assert masked == pytest.approx(task_metrics("multiclass", [0, 1, 2], probabilities[:3]))
    masked = task_metrics("regression", [1.0, 2.0, np.nan], [1.5, 2.5, 100.0], [1, 1, 0])
    assert masked == pytest.approx(task_metrics("regression", [1.0, 2.0], [1.5, 2.5]))


def test_task_metrics_keys_and_k():
    m = task_metrics("binary", LABELS, SCORES, groups=["a", "a", "b", "b"], k=5)
    assert set(m) == {"auc", "pr_auc", "log_loss", "calibration", "binary_accuracy", "precision", "recall",
                      "gauc", "ndcg_at_5"}
    assert set(task_metrics("regression", [1.0], [2.0])) == {"rmse", "mae", "mse"}


def test_clear_errors():
    with pytest.raises(ValueError, match="labels must be 0 or 1"):
        task_metrics("binary", [0, 2], [0.1, 0.2])
    with pytest.raises(ValueError, match="class ids 0..2"):
        task_metrics("multiclass", [0, 3], np.full((2, 3), 1 / 3))
    with pytest.raises(ValueError, match="3 rows, but the labels have 2"):
        task_metrics("regression", [1.0, 2.0], [1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="need a binary task"):
        task_metrics("regression", [1.0], [1.0], groups=["a"])
    with pytest.raises(ValueError, match="unknown task type"):
        task_metrics("ranking", [1.0], [1.0])
    with pytest.raises(ValueError, match="labelled row 1 has no group id"):
        group_auc([1, 0], [0.5, 0.4], ["a", None])


def test_directions_and_improvement():
    assert higher_is_better("auc") and higher_is_better("gauc") and higher_is_better("ndcg_at_10")
    assert not higher_is_better("log_loss") and not higher_is_better("rmse")
    with pytest.raises(ValueError, match="best at 1"):
        higher_is_better("calibration")
    with pytest.raises(ValueError, match="unknown metric"):
        higher_is_better("speed")
    assert metric_improvement("auc", 0.75, 0.70) == pytest.approx(0.05)
    assert metric_improvement("log_loss", 0.40, 0.50) == pytest.approx(0.10)
    # |0.9 - 1| - |1.05 - 1| = 0.1 - 0.05: 1.05 is closer to 1 than 0.9.
    assert metric_improvement("calibration", 1.05, 0.9) == pytest.approx(0.05)
    np.testing.assert_allclose(metric_improvement("rmse", np.array([1.0, 2.0]), np.array([2.0, 2.0])), [1.0, 0.0])
