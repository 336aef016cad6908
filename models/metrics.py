"""Evaluation metrics in numpy, in one place: the TFMA custom metrics (models/tfma_metrics.py) and the
transfer report (models/transfer.py) both compute them here.

Conventions shared by every function:
- `weights` are per-row sample weights (None: all 1). A row with weight 0 is unlabelled (the task's
  label mask) and is dropped before anything else, so its label may hold any placeholder.
- A metric that is undefined on the rows given (AUC with one class, calibration without a positive
  label, precision without a predicted positive, ...) is nan, never a made-up number.
- Resampling a row k times is the same as giving it weight k; `weighted_metric` exploits this to
  evaluate many bootstrap resamples at once from a (resamples, rows) weight matrix.

Metrics by task type (the spec's names): binary: auc, pr_auc, log_loss, calibration,
binary_accuracy, precision, recall (and, per user, gauc and ndcg_at_<k>); multiclass: accuracy,
macro_f1, log_loss, top2_accuracy; regression: rmse, mae, mse.
"""
from __future__ import annotations

import re
from typing import Callable, Hashable

import numpy as np

from models.spec import LOWER_IS_BETTER

# Probabilities are clipped to [EPSILON, 1 - EPSILON] before a log, as Keras does.
EPSILON = 1e-7
# binary_accuracy / precision / recall count a score > THRESHOLD as a predicted positive (Keras' rule).
THRESHOLD = 0.5
TASK_TYPES = ("binary", "multiclass", "regression")
BINARY_METRICS = ("auc", "pr_auc", "log_loss", "calibration", "binary_accuracy", "precision", "recall")
MULTICLASS_METRICS = ("accuracy", "macro_f1", "log_loss", "top2_accuracy")
REGRESSION_METRICS = ("rmse", "mae", "mse")
_ROW_METRICS = {"binary": BINARY_METRICS, "multiclass": MULTICLASS_METRICS, "regression": REGRESSION_METRICS}
# Best at 1 (predictions as large as the labels on average), worse in both directions.
BEST_AT_ONE = {"calibration"}
GAUC = "gauc"
_NDCG = re.compile(r"^ndcg_at_([1-9][0-9]*)$")

WeightedMetric = Callable[[np.ndarray], np.ndarray]


# ----------------------------------------------------------------------------------------------
# Which direction is better


def ndcg_name(k: int = 10) -> str:
    """The key of NDCG@k in task_metrics' result."""
    return f"ndcg_at_{k}"


def ndcg_k(metric: str) -> int | None:
    """k of an `ndcg_at_<k>` metric name; None for any other name."""
    match = _NDCG.match(metric)
    return int(match.group(1)) if match else None


def is_group_metric(metric: str) -> bool:
    """Whether `metric` is computed per group (user) and then averaged: gauc, ndcg_at_<k>."""
    return metric == GAUC or ndcg_k(metric) is not None


def _known_metric(metric: str) -> bool:
    return is_group_metric(metric) or any(metric in names for names in _ROW_METRICS.values())


def _require_known(metric: str) -> None:
    if not _known_metric(metric):
        raise ValueError(f"unknown metric {metric!r}; known: {sorted(_all_metric_names())} (ndcg_at_<k> for any k)")


def higher_is_better(metric: str) -> bool:
    """True if a larger value of `metric` is better, False if a smaller one is.

    Raises for `calibration`, which is best at 1 (neither direction): use metric_improvement."""
    _require_known(metric)
    if metric in BEST_AT_ONE:
        raise ValueError(f"metric {metric!r} is best at 1, not at an end of its scale; "
                         "compare values with metric_improvement")
    return metric not in LOWER_IS_BETTER


def metric_improvement(metric: str, candidate, reference):
    """How much better `candidate` is than `reference` on `metric` (positive: candidate better).

    reference - candidate for lower-is-better metrics, candidate - reference for higher-is-better
    ones, |reference - 1| - |candidate - 1| for calibration. Works elementwise on arrays (returns an
    array then; a float for two scalars)."""
    _require_known(metric)
    cand, ref = np.asarray(candidate, dtype=np.float64), np.asarray(reference, dtype=np.float64)
    if metric in BEST_AT_ONE:
        diff = np.abs(ref - 1.0) - np.abs(cand - 1.0)
    elif metric in LOWER_IS_BETTER:
        diff = ref - cand
    else:
        diff = cand - ref
    return float(diff) if diff.ndim == 0 else diff


def _all_metric_names() -> set[str]:
    return {GAUC, ndcg_name(), *(m for names in _ROW_METRICS.values() for m in names)}


def metric_names(task_type: str, grouped: bool = False, k: int = 10) -> tuple[str, ...]:
    """The keys task_metrics returns for `task_type` (with per-user metrics when `grouped`)."""
    _check_task_type(task_type)
    names = _ROW_METRICS[task_type]
    return (*names, GAUC, ndcg_name(k)) if grouped and task_type == "binary" else names


# ----------------------------------------------------------------------------------------------
# Input checking


def _check_task_type(task_type: str) -> None:
    if task_type not in TASK_TYPES:
        raise ValueError(f"unknown task type {task_type!r}; expected one of {list(TASK_TYPES)}")


def _vector(values, what: str) -> np.ndarray:
    """`values` as a float64 vector; a (n, 1) column is flattened, any other 2-D shape is an error."""
    array = np.asarray(values, dtype=np.float64)
    if array.ndim == 2 and array.shape[1] == 1:
        array = array[:, 0]
    if array.ndim != 1:
        raise ValueError(f"{what}: expected one value per row (shape (n,) or (n, 1)), got shape {array.shape}")
    return array


def _finite(array: np.ndarray, what: str) -> np.ndarray:
    bad = ~np.isfinite(array)
    if bad.any():
        first = int(np.flatnonzero(bad.reshape(len(array), -1).any(axis=1))[0])
        raise ValueError(f"{what}: {int(bad.sum())} values are nan or infinite (first in labelled row #{first})")
    return array


def _weights(weights, n: int, what: str) -> np.ndarray:
    """Per-row weights (all 1 if None); they must be finite and >= 0."""
    if weights is None:
        return np.ones(n)
    w = _vector(weights, f"{what} weights")
    if len(w) != n:
        raise ValueError(f"{what}: {len(w)} weights for {n} rows")
    if not np.isfinite(w).all() or (w < 0).any():
        raise ValueError(f"{what}: weights must be finite and >= 0 (0 = unlabelled row)")
    return w


def _rows(array: np.ndarray, n: int, what: str) -> np.ndarray:
    if len(array) != n:
        raise ValueError(f"{what}: {len(array)} rows, but the labels have {n}")
    return array


def _binary_labels(labels: np.ndarray, what: str) -> np.ndarray:
    binary = (labels == 0.0) | (labels == 1.0)
    if not binary.all():
        odd = np.unique(labels[~binary])[:5]
        raise ValueError(f"{what}: labels must be 0 or 1, got {odd.tolist()}")
    return labels


def _class_labels(labels: np.ndarray, num_classes: int, what: str) -> np.ndarray:
    labels = _finite(labels, f"{what} labels")
    valid = (labels == np.round(labels)) & (labels >= 0) & (labels < num_classes)
    if not valid.all():
        odd = np.unique(labels[~valid])[:5]
        raise ValueError(f"{what}: labels must be class ids 0..{num_classes - 1} (the probabilities have "
                         f"{num_classes} columns), got {odd.tolist()}")
    return labels.astype(np.int64)


def _probabilities(predictions, n: int, what: str) -> np.ndarray:
    p = np.asarray(predictions, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] < 2:
        raise ValueError(f"{what}: expected class probabilities of shape (n, classes >= 2), got shape {p.shape}")
    return _finite(_rows(p, n, what), f"{what} probabilities")


def _safe_ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """numerator / denominator, nan where the denominator is 0 (the metric is undefined there)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(denominator > 0, numerator / np.where(denominator > 0, denominator, 1.0), np.nan)


# ----------------------------------------------------------------------------------------------
# Metrics as functions of a weight matrix (one row of weights per resample)


def _ratio_metric(numerator: np.ndarray, denominator: np.ndarray) -> WeightedMetric:
    """Σ w·numerator / Σ w·denominator for each row of weights."""
    return lambda weights: _safe_ratio(weights @ numerator, weights @ denominator)


def _auc_metric(labels: np.ndarray, scores: np.ndarray) -> WeightedMetric:
    """Weighted ROC AUC from ranks: P(score of a positive > score of a negative), ties count 1/2.

    Rows are sorted once; each weight row then costs O(n), which makes 1000 bootstrap resamples
    cheap. Each pair (i positive, j negative) counts w_i·w_j, as it would for duplicated rows."""
    blocks = _ranked_blocks(labels, scores, descending=False)

    def auc(weights: np.ndarray) -> np.ndarray:
        if not len(scores):
            return np.full(len(weights), np.nan)
        pos, neg = blocks(weights)
        neg_below = np.cumsum(neg, axis=1) - neg
        wins = (pos * (neg_below + 0.5 * neg)).sum(axis=1)
        return _safe_ratio(wins, pos.sum(axis=1) * neg.sum(axis=1))

    return auc


def _ranked_blocks(labels: np.ndarray, scores: np.ndarray, descending: bool) -> Callable:
    """Sorts the rows by score once; returns weights -> (positive weight, negative weight) of each
    block of tied scores, per weight row, in that order."""
    order = np.argsort(-scores if descending else scores, kind="stable")
    positive, ordered = labels[order], scores[order]
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]]) if len(ordered) else None

    def blocks(weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        sorted_weights = weights[:, order]
        return (np.add.reduceat(sorted_weights * positive, starts, axis=1),
                np.add.reduceat(sorted_weights * (1.0 - positive), starts, axis=1))

    return blocks


def _average_precision_metric(labels: np.ndarray, scores: np.ndarray) -> WeightedMetric:
    """Weighted average precision, AP = Σ_t (R_t - R_{t-1}) · P_t over the distinct score thresholds t
    from the highest down (no interpolation) — sklearn's average_precision_score, vectorised over
    weight rows so the bootstrap does not call sklearn 2000 times (tests check they agree)."""
    blocks = _ranked_blocks(labels, scores, descending=True)

    def average_precision(weights: np.ndarray) -> np.ndarray:
        if not len(scores):
            return np.full(len(weights), np.nan)
        tp, fp = blocks(weights)
        precision = _safe_ratio(np.cumsum(tp, axis=1), np.cumsum(tp + fp, axis=1))
        # A block without positive weight adds no recall (and may have an undefined precision).
        gained = np.where(tp > 0, tp * np.nan_to_num(precision), 0.0).sum(axis=1)
        total_tp, total_fp = tp.sum(axis=1), fp.sum(axis=1)
        # nan unless both classes occur, like auc.
        return np.where((total_tp > 0) & (total_fp > 0), _safe_ratio(gained, total_tp), np.nan)

    return average_precision


def _binary_metric(metric: str, labels: np.ndarray, scores: np.ndarray) -> WeightedMetric:
    if metric == "auc":
        return _auc_metric(labels, scores)
    if metric == "pr_auc":
        return _average_precision_metric(labels, scores)
    clipped = np.clip(scores, EPSILON, 1.0 - EPSILON)
    predicted = (scores > THRESHOLD).astype(np.float64)
    ones = np.ones_like(scores)
    parts = {
        "log_loss": (-(labels * np.log(clipped) + (1.0 - labels) * np.log(1.0 - clipped)), ones),
        # Σw·p / Σw·y = (weighted mean prediction) / (weighted mean label).
        "calibration": (scores, labels),
        "binary_accuracy": ((predicted == labels).astype(np.float64), ones),
        "precision": (labels * predicted, predicted),
        "recall": (labels * predicted, labels),
    }
    return _ratio_metric(*parts[metric])


def _macro_f1_batch(confusion: np.ndarray) -> np.ndarray:
    """Macro-F1 of confusion matrices (..., C, C), rows = labels, columns = predictions.

    F1 is averaged over the classes that occur as a label or a prediction: a class absent from both
    has no F1 (0/0) and is left out rather than counted as 0 or 1 — sklearn's
    f1_score(average="macro", labels=<those classes>)."""
    tp = np.diagonal(confusion, axis1=-2, axis2=-1)
    label_totals, predicted_totals = confusion.sum(axis=-1), confusion.sum(axis=-2)
    present = (label_totals + predicted_totals) > 0
    # 2TP / (2TP + FP + FN) = 2TP / (label total + predicted total).
    f1 = np.where(present, _safe_ratio(2.0 * tp, label_totals + predicted_totals), 0.0)
    return _safe_ratio(f1.sum(axis=-1), present.sum(axis=-1).astype(np.float64))


def macro_f1_from_confusion(confusion: np.ndarray) -> float:
    """Macro-F1 of one (weighted) confusion matrix, rows = labels, columns = argmax predictions; nan
    when empty. Averages over the classes occurring as a label or a prediction (see _macro_f1_batch)."""
    matrix = np.asarray(confusion, dtype=np.float64)
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
        raise ValueError(f"macro_f1: expected a square confusion matrix, got shape {matrix.shape}")
    return float(_macro_f1_batch(matrix))


def _macro_f1_metric(labels: np.ndarray, probabilities: np.ndarray) -> WeightedMetric:
    classes = probabilities.shape[1]
    cells = labels * classes + probabilities.argmax(axis=1)

    def macro_f1(weights: np.ndarray) -> np.ndarray:
        # bincount per weight row: a (rows, C²) one-hot matrix would not fit for many classes.
        confusion = np.stack([np.bincount(cells, weights=w, minlength=classes * classes) for w in weights])
        return _macro_f1_batch(confusion.reshape(len(weights), classes, classes))

    return macro_f1


def _multiclass_metric(metric: str, labels: np.ndarray, probabilities: np.ndarray) -> WeightedMetric:
    if metric == "macro_f1":
        return _macro_f1_metric(labels, probabilities)
    rows = np.arange(len(labels))
    ones = np.ones(len(labels))
    if metric == "accuracy":
        return _ratio_metric((probabilities.argmax(axis=1) == labels).astype(np.float64), ones)
    if metric == "top2_accuracy":
        # In the top 2 if fewer than 2 classes score strictly higher (ties count as in, like tf.math.in_top_k).
        higher = (probabilities > probabilities[rows, labels][:, None]).sum(axis=1)
        return _ratio_metric((higher < 2).astype(np.float64), ones)
    # log_loss: renormalised then clipped, as Keras' sparse categorical crossentropy does.
    normalised = probabilities / probabilities.sum(axis=1, keepdims=True)
    return _ratio_metric(-np.log(np.clip(normalised[rows, labels], EPSILON, 1.0 - EPSILON)), ones)


def _regression_metric(metric: str, labels: np.ndarray, predictions: np.ndarray) -> WeightedMetric:
    errors = predictions - labels
    ones = np.ones_like(errors)
    if metric == "mae":
        return _ratio_metric(np.abs(errors), ones)
    mse = _ratio_metric(errors ** 2, ones)
    return mse if metric == "mse" else (lambda weights: np.sqrt(mse(weights)))


def weighted_metric(task_type: str, metric: str, labels, predictions) -> WeightedMetric:
    """`metric` as a function of row weights: given a (resamples, rows) weight matrix, its value under
    each row of weights (shape (resamples,)). Weight k on a row = the row drawn k times, so bootstrap
    resamples are multiplicity matrices. All rows given must be labelled (drop masked rows first).

    Inputs are checked and prepared (sorted for AUC) once, here."""
    _check_task_type(task_type)
    if metric not in _ROW_METRICS[task_type]:
        raise ValueError(f"metric {metric!r} is not a row metric of {task_type} tasks; "
                         f"expected one of {list(_ROW_METRICS[task_type])}")
    y = _vector(labels, f"{task_type} {metric}")
    if task_type == "multiclass":
        probabilities = _probabilities(predictions, len(y), f"multiclass {metric}")
        return _multiclass_metric(metric, _class_labels(y, probabilities.shape[1], f"multiclass {metric}"),
                                  probabilities)
    p = _finite(_rows(_vector(predictions, f"{task_type} {metric} predictions"), len(y), f"{task_type} {metric}"),
                f"{task_type} {metric} predictions")
    if task_type == "binary":
        return _binary_metric(metric, _binary_labels(y, f"binary {metric}"), p)
    return _regression_metric(metric, _finite(y, f"regression {metric} labels"), p)


# ----------------------------------------------------------------------------------------------
# Row metrics of one task


def _labelled(labels, predictions, weights, what: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(labels, predictions, weights, kept) restricted to the rows with weight > 0 (kept: their mask)."""
    y = _vector(labels, f"{what} labels")
    p = np.asarray(predictions, dtype=np.float64)
    _rows(p, len(y), f"{what} predictions")
    w = _weights(weights, len(y), what)
    kept = w > 0
    return y[kept], p[kept], w[kept], kept


def _evaluate(task_type: str, labels, predictions, weights) -> dict[str, float]:
    y, p, w, _ = _labelled(labels, predictions, weights, task_type)
    return {m: float(weighted_metric(task_type, m, y, p)(w[None, :])[0]) for m in _ROW_METRICS[task_type]}


def binary_metrics(labels, scores, weights=None) -> dict[str, float]:
    """auc, pr_auc (average precision, as sklearn's), log_loss, calibration (weighted mean prediction / weighted
    mean label), and at threshold 0.5 binary_accuracy, precision, recall. auc / pr_auc are nan with
    one class, calibration without a positive label, precision without a predicted positive."""
    return _evaluate("binary", labels, scores, weights)


def multiclass_metrics(labels, probabilities, weights=None) -> dict[str, float]:
    """accuracy, macro_f1 (of the argmax, over the classes occurring as a label or a prediction),
    log_loss (probabilities renormalised per row), top2_accuracy. Labels are class ids."""
    return _evaluate("multiclass", labels, probabilities, weights)


def regression_metrics(labels, predictions, weights=None) -> dict[str, float]:
    """rmse, mae and mse."""
    return _evaluate("regression", labels, predictions, weights)


# ----------------------------------------------------------------------------------------------
# Per-group (per-user) metrics


def group_auc_terms(labels, scores, weights=None) -> tuple[float, float] | None:
    """One group's (impressions = Σ weights, weighted AUC), or None if the group lacks either class
    among its rows with weight > 0 (its AUC is undefined and it is left out of GAUC)."""
    y, s, w, _ = _labelled(labels, scores, weights, "gauc")
    auc = weighted_metric("binary", "auc", y, s)(w[None, :])[0]
    return None if np.isnan(auc) else (float(w.sum()), float(auc))


def group_ndcg(labels, scores, k: int = 10) -> float | None:
    """NDCG@k of one group: Σ_{i<=k} gain_i / log2(i + 1) over the rows ranked by descending score,
    gain = label (binary or graded, linear), divided by the same sum for the ideal ranking.

    Ties in score keep the rows' input order (a stable sort), so the result is deterministic but
    depends on that order. None if no row has a positive gain (NDCG is undefined there)."""
    if k < 1:
        raise ValueError(f"ndcg: k must be >= 1, got {k}")
    gains = _finite(_vector(labels, "ndcg labels"), "ndcg labels")
    s = _finite(_rows(_vector(scores, "ndcg scores"), len(gains), "ndcg scores"), "ndcg scores")
    if (gains < 0).any():
        raise ValueError(f"ndcg: gains (labels) must be >= 0, got {np.unique(gains[gains < 0])[:5].tolist()}")
    if not (gains > 0).any():
        return None
    top = np.argsort(-s, kind="stable")[:k]
    discounts = 1.0 / np.log2(np.arange(2, len(top) + 2))
    ideal = np.sort(gains)[::-1][:k]
    return float(gains[top] @ discounts / (ideal @ discounts))


def _group_codes(groups, kept: np.ndarray, what: str) -> np.ndarray:
    """Integer codes of the group of each kept (labelled) row; ids may be any hashable (str, int, bytes)."""
    values = np.asarray(groups, dtype=object).reshape(-1) if np.ndim(groups) else None
    if values is None or len(values) != len(kept):
        raise ValueError(f"{what}: expected one group id per row ({len(kept)}), got shape {np.shape(groups)}")
    ids: dict[Hashable, int] = {}
    rows = np.flatnonzero(kept)
    codes = np.empty(len(rows), dtype=np.int64)
    for i, (row, g) in enumerate(zip(rows.tolist(), values[kept].tolist())):
        if g is None or (isinstance(g, float) and np.isnan(g)):
            raise ValueError(f"{what}: labelled row {row} has no group id (user); every labelled row needs one")
        codes[i] = ids.setdefault(g, len(ids))
    return codes


def group_metric_terms(metric: str, labels, scores, groups, weights=None) -> tuple[np.ndarray, np.ndarray]:
    """Per group with a labelled row: (its weight in the average, its value; nan if undefined).

    gauc: weight = impressions (Σ row weights), value = the group's AUC. ndcg_at_<k>: weight 1,
    value = NDCG@k. The metric is Σ weight·value / Σ weight over groups with a defined value, so a
    bootstrap over groups (users) only reweights these terms."""
    k = ndcg_k(metric)
    if metric != GAUC and k is None:
        raise ValueError(f"{metric!r} is not a per-group metric; expected 'gauc' or 'ndcg_at_<k>'")
    y, s, w, kept = _labelled(labels, scores, weights, metric)
    codes = _group_codes(groups, kept, metric)
    order = np.argsort(codes, kind="stable")
    bounds = np.flatnonzero(np.diff(codes[order])) + 1
    sizes, values = [], []
    for rows in np.split(order, bounds) if len(order) else []:
        if k is None:
            terms = group_auc_terms(y[rows], s[rows], w[rows])
            sizes.append(float(w[rows].sum()))
            values.append(np.nan if terms is None else terms[1])
        else:
            value = group_ndcg(y[rows], s[rows], k)
            sizes.append(1.0)
            values.append(np.nan if value is None else value)
    return np.asarray(sizes, dtype=np.float64), np.asarray(values, dtype=np.float64)


def _group_average(sizes: np.ndarray, values: np.ndarray) -> float:
    defined = ~np.isnan(values)
    return float(_safe_ratio(np.sum(sizes[defined] * values[defined]), np.sum(sizes[defined])))


def group_auc(labels, scores, groups, weights=None) -> float:
    """GAUC = Σ_g n_g·AUC_g / Σ_g n_g over the groups having both classes, n_g = the group's
    impressions (Σ weights of its rows); nan if no group has both classes."""
    return _group_average(*group_metric_terms(GAUC, labels, scores, groups, weights))


def ndcg_at_k(labels, scores, groups, k: int = 10, weights=None) -> float:
    """Mean NDCG@k over the groups with a positive gain (rows with weight 0 removed first; other
    weights do not scale gains: every such group counts once); nan if there is none."""
    return _group_average(*group_metric_terms(ndcg_name(k), labels, scores, groups, weights))


# ----------------------------------------------------------------------------------------------
# One task


def task_metrics(task_type: str, labels, predictions, weights=None, groups=None, k: int = 10) -> dict[str, float]:
    """The metrics of one task's predictions (see metric_names for the keys). Rows with weight 0
    (unlabelled) are dropped; other weights are sample weights. Binary tasks with `groups` (user
    ids) also get gauc and ndcg_at_<k>."""
    _check_task_type(task_type)
    evaluate = {"binary": binary_metrics, "multiclass": multiclass_metrics, "regression": regression_metrics}
    result = evaluate[task_type](labels, predictions, weights)
    if groups is not None:
        if task_type != "binary":
            raise ValueError(f"per-user metrics (gauc, ndcg) need a binary task, not a {task_type} one; "
                             "pass groups=None")
        result[GAUC] = group_auc(labels, predictions, groups, weights)
        result[ndcg_name(k)] = ndcg_at_k(labels, predictions, groups, k, weights)
    return result
