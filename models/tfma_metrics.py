"""TFMA custom metrics the Evaluator computes besides the stock ones: per-user GAUC and NDCG@k for a
recommendation task, and macro-F1 for a multiclass task.

GAUC and NDCG are query metrics: their MetricsSpec sets `query_key` (the config's
`evaluation.group_by`, e.g. user_id), so TFMA hands each combiner all rows of one user at once. The
arithmetic lives in models/metrics.py, shared with the transfer report; these classes only feed it.
The example weight is the task's label mask: rows a task does not label count for nothing.
"""
from __future__ import annotations

from typing import Callable, Iterable

import apache_beam as beam
import numpy as np
from tensorflow_model_analysis.metrics import metric_types, metric_util

from models.metrics import group_auc_terms, group_ndcg, macro_f1_from_confusion

GAUC_NAME = "gauc"
NDCG_NAME = "ndcg_at_10"
MACRO_F1_NAME = "macro_f1"


def _arrays(element, eval_config, model_name: str, output_name: str, flatten: bool):
    """(labels, predictions, weights) of one TFMA input as numpy arrays, weights per row."""
    label, prediction, weight = next(metric_util.to_label_prediction_example_weight(
        element, eval_config=eval_config, model_name=model_name, output_name=output_name,
        example_weighted=True, flatten=False, require_single_example_weight=False))
    label, prediction = np.asarray(label, dtype=np.float64), np.asarray(prediction, dtype=np.float64)
    weight = np.broadcast_to(np.asarray(weight, dtype=np.float64).reshape(-1), (len(label.reshape(len(label), -1)),))
    if flatten:
        label, prediction = label.reshape(-1), prediction.reshape(-1)
    return label, prediction, weight


def _computations(combiner: Callable[..., beam.CombineFn], name: str, eval_config, model_names, output_names,
                  example_weighted: bool, **combiner_args) -> metric_types.MetricComputations:
    """One computation per (model, output), each with its own combiner."""
    computations = []
    for model_name in model_names or [""]:
        for output_name in output_names or [""]:
            key = metric_types.MetricKey(name=name, model_name=model_name, output_name=output_name,
                                         example_weighted=example_weighted)
            computations.append(metric_types.MetricComputation(
                keys=[key], preprocessors=None,
                combiner=combiner(key, eval_config, model_name, output_name, **combiner_args)))
    return computations


def _require_query_key(query_key: str, name: str) -> None:
    if not query_key:
        raise ValueError(f"metric {name!r} is computed per user: its MetricsSpec needs a query_key "
                         "(the config's evaluation.group_by)")


class _RatioCombiner(beam.CombineFn):
    """Accumulates (weighted sum, total weight) over groups; the metric is their ratio (nan if empty)."""

    def __init__(self, key, eval_config, model_name: str, output_name: str):
        self._key, self._eval_config = key, eval_config
        self._model_name, self._output_name = model_name, output_name

    def group_term(self, labels: np.ndarray, scores: np.ndarray) -> tuple[float, float] | None:
        raise NotImplementedError

    def create_accumulator(self) -> list[float]:
        return [0.0, 0.0]

    def add_input(self, accumulator: list[float], element) -> list[float]:
        labels, scores, weights = _arrays(element, self._eval_config, self._model_name, self._output_name, True)
        labelled = weights > 0
        term = self.group_term(labels[labelled], scores[labelled]) if labelled.any() else None
        if term is not None:
            accumulator[0] += term[0] * term[1]
            accumulator[1] += term[0]
        return accumulator

    def merge_accumulators(self, accumulators: Iterable[list[float]]) -> list[float]:
        total = [0.0, 0.0]
        for a in accumulators:
            total[0] += a[0]
            total[1] += a[1]
        return total

    def extract_output(self, accumulator: list[float]) -> dict:
        value = accumulator[0] / accumulator[1] if accumulator[1] > 0 else float("nan")
        return {self._key: value}


class _GaucCombiner(_RatioCombiner):
    def group_term(self, labels, scores):
        # (impressions, AUC) of one user; users with one class only have no AUC and are left out.
        return group_auc_terms(labels, scores)


class _NdcgCombiner(_RatioCombiner):
    def __init__(self, key, eval_config, model_name: str, output_name: str, top_k: int = 10):
        super().__init__(key, eval_config, model_name, output_name)
        self._top_k = top_k

    def group_term(self, labels, scores):
        value = group_ndcg(labels, scores, k=self._top_k)
        # Every user with a positive counts once; users without one have no NDCG.
        return None if value is None else (1.0, value)


# TFMA passes eval_config, model_names, ... to a metric's create function by argument name.
def _gauc(name: str = GAUC_NAME, eval_config=None, model_names=None, output_names=None,
          example_weighted: bool = False, query_key: str = "") -> metric_types.MetricComputations:
    _require_query_key(query_key, name)
    return _computations(_GaucCombiner, name, eval_config, model_names, output_names, example_weighted)


def _ndcg(name: str = NDCG_NAME, top_k: int = 10, eval_config=None, model_names=None, output_names=None,
          example_weighted: bool = False, query_key: str = "") -> metric_types.MetricComputations:
    _require_query_key(query_key, name)
    return _computations(_NdcgCombiner, name, eval_config, model_names, output_names, example_weighted,
                         top_k=top_k)


def _macro_f1(name: str = MACRO_F1_NAME, num_classes: int = 2, eval_config=None, model_names=None,
              output_names=None, example_weighted: bool = False) -> metric_types.MetricComputations:
    return _computations(_ConfusionCombiner, name, eval_config, model_names, output_names, example_weighted,
                         num_classes=num_classes)


class GroupAUC(metric_types.Metric):
    """GAUC: per-user AUC averaged over users, weighted by their labelled impressions."""

    def __init__(self, name: str = GAUC_NAME):
        super().__init__(_gauc, name=name)


class NDCGAtK(metric_types.Metric):
    """NDCG@k per user (gain = label, ranked by the prediction), averaged over users with a positive."""

    def __init__(self, name: str = NDCG_NAME, top_k: int = 10):
        super().__init__(_ndcg, name=name, top_k=top_k)


class _ConfusionCombiner(beam.CombineFn):
    """Accumulates the weighted confusion matrix of argmax predictions."""

    def __init__(self, key, eval_config, model_name: str, output_name: str, num_classes: int = 2):
        self._key, self._eval_config = key, eval_config
        self._model_name, self._output_name, self._num_classes = model_name, output_name, num_classes

    def create_accumulator(self) -> np.ndarray:
        return np.zeros((self._num_classes, self._num_classes))

    def add_input(self, accumulator: np.ndarray, element) -> np.ndarray:
        labels, probabilities, weights = _arrays(element, self._eval_config, self._model_name, self._output_name,
                                                 False)
        predicted = probabilities.reshape(-1, self._num_classes).argmax(axis=-1)
        np.add.at(accumulator, (labels.reshape(-1).astype(int), predicted), weights)
        return accumulator

    def merge_accumulators(self, accumulators: Iterable[np.ndarray]) -> np.ndarray:
        return sum(accumulators, self.create_accumulator())

    def extract_output(self, accumulator: np.ndarray) -> dict:
        return {self._key: macro_f1_from_confusion(accumulator)}


class MacroF1(metric_types.Metric):
    """Macro-averaged F1 of the argmax class (multiclass tasks)."""

    def __init__(self, name: str = MACRO_F1_NAME, num_classes: int = 2):
        super().__init__(_macro_f1, name=name, num_classes=num_classes)


for _metric in (GroupAUC, NDCGAtK, MacroF1):
    metric_types.register_metric(_metric)
