"""The transfer report: does the multi-task model beat one single-task model per task?

For every task, both models are scored on the task's labelled evaluation rows (models/metrics.py),
and the difference on the task's primary metric gets a paired bootstrap interval: each resample
draws the rows (or, for per-user metrics, the users) with replacement and scores BOTH models on it,
so the interval is that of the difference itself, not of two independent noisy values. The verdict
is "positive" (multi-task better: the whole interval above 0), "negative" (below 0) or "neutral".
For generated data, the Bayes-optimal probabilities say how much each model leaves on the table.

Pure numpy/matplotlib: components/transfer_report.py loads the models, runs them on the eval split
and hands the arrays over; this module computes, and writes transfer.{json,md,html}.
"""
from __future__ import annotations

import base64
import html
import io
import itertools
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from models.metrics import (TASK_TYPES, WeightedMetric, group_metric_terms, is_group_metric, metric_improvement,
                            metric_names, ndcg_k, task_metrics, weighted_metric)

MULTI_TASK = "multi_task"
SINGLE_TASK = "single_task"
CONFIDENCE = 0.95
VERDICTS = ("positive", "negative", "neutral")
# Bootstrap weights are built in batches of about this many cells (resamples x units): ~16 MB each.
_BATCH_CELLS = 2_000_000
_VERDICT_COLOURS = {"positive": "#2e7d32", "negative": "#c62828", "neutral": "#757575"}


@dataclass
class TaskData:
    """One task's evaluation rows: labels, label mask, and each model's predictions for every row.

    predictions: model name -> binary scores (n,), multiclass probabilities (n, C) or regression
    values (n,); a (n, 1) column is accepted for one value per row. groups: user ids (binary tasks:
    enables gauc / ndcg_at_10). bayes: Bayes-optimal probabilities (binary tasks of generated data),
    nan where unknown."""

    name: str
    type: str
    labels: np.ndarray
    mask: np.ndarray
    predictions: dict[str, np.ndarray]
    primary_metric: str
    groups: np.ndarray | None = None
    bayes: np.ndarray | None = None
    # The metrics to report (e.g. the spec's evaluated metrics); None: every metric of the type.
    metrics: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.type not in TASK_TYPES:
            raise ValueError(f"task {self.name!r}: unknown type {self.type!r}; expected one of {list(TASK_TYPES)}")
        self.labels = self._column(self.labels, "labels")
        self.mask = self._column(self.mask, "mask")
        if not np.isfinite(self.mask).all() or (self.mask < 0).any():
            raise ValueError(f"task {self.name!r}: the mask must be finite and >= 0 (1 = labelled)")
        if not self.predictions:
            raise ValueError(f"task {self.name!r}: no model predictions")
        self.predictions = {model: self._prediction(model, p) for model, p in self.predictions.items()}
        if self.groups is not None:
            self.groups = np.asarray(self.groups, dtype=object).reshape(-1)
            self._check_rows(self.groups, "groups")
        if self.bayes is not None:
            if self.type != "binary":
                raise ValueError(f"task {self.name!r}: Bayes probabilities are for binary tasks, not {self.type}")
            self.bayes = self._column(self.bayes, "bayes")
        self._check_primary_metric()

    @property
    def labelled(self) -> np.ndarray:
        """Which rows the task labels (mask > 0)."""
        return self.mask > 0

    def _check_rows(self, array: np.ndarray, what: str) -> None:
        if len(array) != len(self.labels):
            raise ValueError(f"task {self.name!r}: {len(array)} {what} for {len(self.labels)} rows")

    def _column(self, values, what: str) -> np.ndarray:
        array = np.asarray(values, dtype=np.float64)
        if array.ndim == 2 and array.shape[1] == 1:
            array = array[:, 0]
        if array.ndim != 1:
            raise ValueError(f"task {self.name!r}: {what} must have one value per row, got shape {array.shape}")
        if what != "labels":
            self._check_rows(array, what)
        return array

    def _prediction(self, model: str, values) -> np.ndarray:
        if self.type != "multiclass":
            return self._column(values, f"predictions of {model!r}")
        array = np.asarray(values, dtype=np.float64)
        if array.ndim != 2 or array.shape[1] < 2:
            raise ValueError(f"task {self.name!r}: model {model!r} must give class probabilities (n, C >= 2), "
                             f"got shape {array.shape}")
        self._check_rows(array, f"predictions of {model!r}")
        return array

    def _check_primary_metric(self) -> None:
        k = ndcg_k(self.primary_metric) or 10
        allowed = metric_names(self.type, grouped=self.groups is not None, k=k)
        if self.primary_metric not in allowed:
            needs_groups = " (per-user metrics need groups)" if is_group_metric(self.primary_metric) else ""
            raise ValueError(f"task {self.name!r}: primary metric {self.primary_metric!r} cannot be computed for "
                             f"this {self.type} task{needs_groups}; expected one of {list(allowed)}")


# ----------------------------------------------------------------------------------------------
# Paired bootstrap


def _statistic(task: TaskData, metric: str, model: str) -> tuple[Callable[[np.ndarray], np.ndarray], int]:
    """`metric` of `model` as a function of resampling multiplicities (resamples, units), and the
    number of units: labelled rows, or for per-user metrics the users with a labelled row."""
    if model not in task.predictions:
        raise ValueError(f"task {task.name!r}: no predictions of model {model!r}; have {sorted(task.predictions)}")
    labelled = task.labelled
    labels, predictions, weights = task.labels[labelled], task.predictions[model][labelled], task.mask[labelled]
    if is_group_metric(metric):
        if task.groups is None:
            raise ValueError(f"task {task.name!r}: {metric!r} is per user, but the task has no groups")
        sizes, values = group_metric_terms(metric, labels, predictions, task.groups[labelled], weights)
        # A whole user is drawn: its terms are fixed, a resample only counts it 0, 1, 2... times.
        defined = ~np.isnan(values)
        numerator, denominator = np.where(defined, sizes * values, 0.0), np.where(defined, sizes, 0.0)
        return (lambda counts: _ratio(counts @ numerator, counts @ denominator)), len(sizes)
    row_metric: WeightedMetric = weighted_metric(task.type, metric, labels, predictions)
    return (lambda counts: row_metric(counts * weights)), len(labels)


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(denominator > 0, numerator / np.where(denominator > 0, denominator, 1.0), np.nan)


def _multiplicities(rng: np.random.Generator, units: int, resamples: int) -> np.ndarray:
    """(resamples, units): how often each unit is drawn when `units` units are drawn with replacement."""
    draws = rng.integers(0, units, size=(resamples, units))
    flat = (draws + np.arange(resamples)[:, None] * units).ravel()
    return np.bincount(flat, minlength=resamples * units).reshape(resamples, units).astype(np.float64)


def _resampled_improvements(stat_a, stat_b, metric: str, units: int, samples: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    batch = max(1, _BATCH_CELLS // max(units, 1))
    improvements = []
    for start in range(0, samples, batch):
        counts = _multiplicities(rng, units, min(batch, samples - start))
        improvements.append(metric_improvement(metric, stat_a(counts), stat_b(counts)))
    return np.concatenate(improvements)


def paired_bootstrap(task: TaskData, metric: str, a: str, b: str, samples: int = 1000, seed: int = 0,
                     confidence: float = CONFIDENCE) -> dict:
    """Improvement of model `a` over model `b` on `metric` (positive: a better) and its percentile
    interval over `samples` paired resamples of the labelled rows (of whole users for gauc / ndcg,
    whose rows are not independent). Resamples where the metric is undefined for either model (e.g.
    one class only) are skipped; "used" says how many remained."""
    if samples < 1 or not 0 < confidence < 1:
        raise ValueError(f"task {task.name!r}: need samples >= 1 and 0 < confidence < 1, got {samples}, {confidence}")
    stat_a, units = _statistic(task, metric, a)
    stat_b, _ = _statistic(task, metric, b)
    if units == 0:
        raise ValueError(f"task {task.name!r}: no labelled rows to bootstrap {metric!r} on")
    full = np.ones((1, units))
    value = metric_improvement(metric, stat_a(full)[0], stat_b(full)[0])
    improvements = _resampled_improvements(stat_a, stat_b, metric, units, samples, seed)
    used = improvements[np.isfinite(improvements)]
    tail = 100.0 * (1.0 - confidence) / 2.0
    low, high = np.percentile(used, [tail, 100.0 - tail]) if len(used) else (np.nan, np.nan)
    return {"metric": metric, "value": float(value), "low": float(low), "high": float(high),
            "samples": samples, "used": int(len(used)), "seed": seed, "confidence": confidence,
            "resampled": "users" if is_group_metric(metric) else "rows", "units": int(units)}


def transfer_verdict(interval: dict) -> str:
    """"positive" if the whole interval is above 0, "negative" if below, else "neutral" (also when
    the interval is undefined)."""
    if interval["low"] > 0:
        return "positive"
    if interval["high"] < 0:
        return "negative"
    return "neutral"


# ----------------------------------------------------------------------------------------------
# Per task and whole report


def _metrics_by_model(task: TaskData, rows: np.ndarray, scores: dict[str, np.ndarray]) -> dict[str, dict]:
    groups = task.groups[rows] if task.groups is not None else None
    k = ndcg_k(task.primary_metric) or 10  # so that a primary ndcg_at_<k> is among the metrics
    result = {}
    for model, predictions in scores.items():
        try:
            values = task_metrics(task.type, task.labels[rows], predictions[rows], task.mask[rows], groups, k)
        except ValueError as error:
            raise ValueError(f"task {task.name!r}, model {model!r}: {error}") from error
        result[model] = {m: v for m, v in values.items() if task.metrics is None or m in task.metrics}
    return result



def _bayes_comparison(task: TaskData) -> dict:
    """Metrics of the Bayes-optimal scores, and each model's gap to them, on the labelled rows whose
    Bayes probability is known (the models are re-scored on those same rows)."""
    known = task.labelled & np.isfinite(task.bayes)
    bayes = _metrics_by_model(task, known, {"Bayes optimum": task.bayes})["Bayes optimum"]
    models = _metrics_by_model(task, known, task.predictions)
    # metric_improvement(bayes over model): positive = the Bayes optimum is better (room left);
    # for auc it is bayes_auc - model_auc.
    gap = {model: {m: metric_improvement(m, bayes[m], values[m]) for m in bayes} for model, values in models.items()}
    return {"bayes": bayes, "bayes_rows": int(known.sum()), "bayes_gap": gap}


def compare_task(task: TaskData, multi: str = MULTI_TASK, single: str = SINGLE_TASK, samples: int = 1000,
                 seed: int = 0) -> dict:
    """Metrics of every model on the task's labelled rows, the bootstrap interval of multi over single
    on the primary metric, the verdict, and (binary tasks with `bayes`) the gap to the Bayes optimum."""
    labelled = task.labelled
    if not labelled.any():
        raise ValueError(f"task {task.name!r}: no labelled evaluation rows (the mask is 0 everywhere)")
    difference = paired_bootstrap(task, task.primary_metric, multi, single, samples=samples, seed=seed)
    result = {"type": task.type, "primary_metric": task.primary_metric, "labelled_rows": int(labelled.sum()),
              "models": {"multi": multi, "single": single},
              "metrics": _metrics_by_model(task, labelled, task.predictions),
              "difference": difference, "transfer": transfer_verdict(difference)}
    if task.bayes is not None:
        result.update(_bayes_comparison(task))
    return result


def build_report(tasks: list[TaskData], model_name: str, curves: dict | None = None, samples: int = 1000,
                 seed: int = 0) -> dict:
    """The whole report: every task compared (same bootstrap seed), the tasks grouped by verdict, and
    the training curves ({model: {"step": [...], "<task>_loss": [...], "weight_<task>": [...]}})."""
    names = [task.name for task in tasks]
    if not names:
        raise ValueError("build_report: no tasks")
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"build_report: tasks {duplicates} appear more than once")
    results = {task.name: compare_task(task, samples=samples, seed=seed) for task in tasks}
    summary = {verdict: [n for n, r in results.items() if r["transfer"] == verdict] for verdict in VERDICTS}
    return {"model": model_name, "bootstrap": {"samples": samples, "seed": seed, "confidence": CONFIDENCE},
            "tasks": results, "summary": summary, "curves": curves or {}}


# ----------------------------------------------------------------------------------------------
# Rendering: text


def _fmt(value, signed: bool = False) -> str:
    """A number for a table: 4 decimals; "n/a" when undefined."""
    if value is None or not math.isfinite(value):
        return "n/a"
    return f"{value:+.4f}" if signed else f"{value:.4f}"


def _interval_text(difference: dict) -> str:
    return (f"{_fmt(difference['value'], True)} [{_fmt(difference['low'], True)}, "
            f"{_fmt(difference['high'], True)}]")


def _bayes_gap_text(result: dict) -> str:
    """The primary metric's gap to the Bayes optimum (auc when the primary has none), multi / single."""
    gap = result.get("bayes_gap")
    if not gap:
        return "—"
    models = result["models"]
    metric = result["primary_metric"] if result["primary_metric"] in result["bayes"] else "auc"
    return f"{metric}: {_fmt(gap[models['multi']][metric])} / {_fmt(gap[models['single']][metric])}"


def _summary_rows(report: dict) -> list[list[str]]:
    """One row per task: task, metric, multi, single, difference [CI], transfer, Bayes gap."""
    rows = []
    for name, result in report["tasks"].items():
        models, metric = result["models"], result["primary_metric"]
        rows.append([name, metric, _fmt(result["metrics"][models["multi"]][metric]),
                     _fmt(result["metrics"][models["single"]][metric]), _interval_text(result["difference"]),
                     result["transfer"], _bayes_gap_text(result)])
    return rows


def _metric_rows(report: dict) -> list[list[str]]:
    """One row per (task, metric): both models' values and the improvement of multi over single."""
    rows = []
    for name, result in report["tasks"].items():
        multi, single = (result["metrics"][result["models"][k]] for k in ("multi", "single"))
        for metric, value in multi.items():
            rows.append([name, metric, _fmt(value), _fmt(single.get(metric)),
                         _fmt(metric_improvement(metric, value, single.get(metric, math.nan)), True)])
    return rows


SUMMARY_HEADER = ["task", "metric", "multi-task", "single-task", "difference [95% CI]", "transfer", "Bayes gap"]
METRICS_HEADER = ["task", "metric", "multi-task", "single-task", "improvement"]


def _markdown_table(header: list[str], rows: list[list[str]]) -> list[str]:
    def line(cells: list[str]) -> str:
        # A "|" inside a cell would end it.
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    return [line(header), "|" + "---|" * len(header), *(line(r) for r in rows)]


def _explanation(report: dict) -> str:
    boot = report["bootstrap"]
    return (f"Multi-task model against one single-task model per task, on each task's labelled evaluation "
            f"rows. Difference: improvement of the multi-task model on the task's primary metric (positive = "
            f"multi-task better; for calibration, closer to 1), with a {boot['confidence']:.0%} paired "
            f"bootstrap interval ({boot['samples']} resamples, seed {boot['seed']}; gauc / ndcg resample "
            f"whole users). Transfer: positive / negative when the interval excludes 0. Bayes gap: how much "
            f"better the Bayes-optimal probabilities score than the multi-task / single-task model.")


def _summary_line(report: dict) -> str:
    return "; ".join(f"{v}: {', '.join(report['summary'][v]) or '—'}" for v in VERDICTS)


def render_markdown(report: dict) -> str:
    """transfer.md: the summary table (one row per task), the verdicts, and every metric."""
    lines = [f"# Transfer report: {report['model']}", "", _explanation(report), "",
             *_markdown_table(SUMMARY_HEADER, _summary_rows(report)), "", f"Transfer: {_summary_line(report)}.",
             "", "## All metrics", "", *_markdown_table(METRICS_HEADER, _metric_rows(report)), ""]
    return "\n".join(lines)


def _html_table(header: list[str], rows: list[list[str]], verdict_column: int | None = None) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = []
    for row in rows:
        cells = []
        for i, cell in enumerate(row):
            style = f' style="color:{_VERDICT_COLOURS[cell]};font-weight:bold"' if i == verdict_column else ""
            cells.append(f"<td{style}>{html.escape(cell)}</td>")
        body.append(f"<tr>{''.join(cells)}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


_CSS = ("body{font-family:sans-serif;margin:2em;max-width:1200px}table{border-collapse:collapse;margin:1em 0}"
        "td,th{border:1px solid #ccc;padding:4px 8px;text-align:left}th{background:#f3f3f3}img{max-width:100%}")


def render_html(report: dict, plots: dict[str, str | None], notes: list[str] | None = None) -> str:
    """transfer.html: the tables, and the plots as embedded PNGs. plots: title -> base64 PNG, or None
    with nothing to draw (said so in the page). notes: problems met while reading the curves."""
    sections = []
    for title, png in plots.items():
        body = (f'<img src="data:image/png;base64,{png}" alt="{html.escape(title)}">' if png
                else "<p>Nothing to plot: no such series in the training curves.</p>")
        sections.append(f"<h2>{html.escape(title)}</h2>{body}")
    note_list = "".join(f"<li>{html.escape(n)}</li>" for n in notes or [])
    title = html.escape(f"Transfer report: {report['model']}")
    return "".join([
        f'<!DOCTYPE html><html><head><meta charset="utf-8"><title>{title}</title><style>{_CSS}</style></head><body>',
        f"<h1>{title}</h1><p>{html.escape(_explanation(report))}</p>",
        _html_table(SUMMARY_HEADER, _summary_rows(report), verdict_column=5),
        f"<p>Transfer: {html.escape(_summary_line(report))}.</p>", *sections,
        f"<h2>Curve notes</h2><ul>{note_list}</ul>" if note_list else "",
        "<h2>All metrics</h2>", _html_table(METRICS_HEADER, _metric_rows(report)), "</body></html>"])


# ----------------------------------------------------------------------------------------------
# Rendering: plots


def _pyplot():
    """matplotlib.pyplot on the Agg backend (files only: the pipeline has no display)."""
    try:
        import matplotlib
    except ImportError as error:
        raise ImportError("write_report draws transfer.html's plots with matplotlib, which is not installed "
                          "(add it to requirements.txt)") from error
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _grid(plt, count: int, width: float = 3.6, height: float = 2.6):
    """A figure with `count` subplots, at most 4 a row; returns (figure, the axes used)."""
    columns = min(max(count, 1), 4)
    rows = math.ceil(max(count, 1) / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(width * columns, height * rows), squeeze=False)
    flat = list(axes.ravel())
    for unused in flat[count:]:
        unused.set_visible(False)
    return figure, flat[:count]


def _png(plt, figure) -> str:
    buffer = io.BytesIO()
    figure.tight_layout()
    figure.savefig(buffer, format="png", dpi=90)
    plt.close(figure)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _difference_plot(plt, report: dict) -> str:
    """Per task: the improvement of multi over single as a bar, its interval as a line, coloured by
    verdict (one subplot per task: the metrics have different scales)."""
    figure, axes = _grid(plt, len(report["tasks"]))
    for ax, (name, result) in zip(axes, report["tasks"].items()):
        diff, colour = result["difference"], _VERDICT_COLOURS[result["transfer"]]
        if math.isfinite(diff["value"]):
            ax.barh([0], [diff["value"]], color=colour, height=0.5)
        if math.isfinite(diff["low"]) and math.isfinite(diff["high"]):
            ax.plot([diff["low"], diff["high"]], [0, 0], color="black", marker="|", markersize=14)
        ax.axvline(0.0, color="black", linewidth=0.8)
        ax.set_yticks([])
        ax.xaxis.set_major_locator(plt.MaxNLocator(4))  # small differences have long tick labels
        ax.set_title(f"{name}: {diff['metric']} ({result['transfer']})", fontsize=9)
    return _png(plt, figure)


def _series(curves: dict, model: str, key: str, notes: list[str]) -> tuple[np.ndarray, np.ndarray] | None:
    """(steps, values) of one training-curve series; None if absent. Problems go to `notes`."""
    curve = curves.get(model)
    if not isinstance(curve, dict) or key not in curve:
        return None
    try:
        values = np.asarray(curve[key], dtype=np.float64).reshape(-1)
        steps = np.asarray(curve.get("step", np.arange(len(values))), dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        notes.append(f"{model}: {key} is not a list of numbers; not plotted")
        return None
    if "step" not in curve:
        notes.append(f"{model}: no 'step' series; {key} is plotted against its index")
    if len(steps) != len(values):
        notes.append(f"{model}: {key} has {len(values)} values for {len(steps)} steps; "
                     f"plotted up to the shorter ({min(len(steps), len(values))})")
        length = min(len(steps), len(values))
        steps, values = steps[:length], values[:length]
    return steps, values


def _loss_plot(plt, report: dict, notes: list[str]) -> str | None:
    """One subplot per task: its training loss `<task>_loss` under every model that logged it."""
    curves, tasks = report["curves"], list(report["tasks"])
    figure, axes = _grid(plt, len(tasks))
    drawn = 0
    for ax, task in zip(axes, tasks):
        for model in curves:
            series = _series(curves, model, f"{task}_loss", notes)
            if series is not None:
                ax.plot(*series, label=model, linewidth=1)
                drawn += 1
        if ax.lines:
            ax.legend(fontsize=7)
        else:
            ax.text(0.5, 0.5, "no curve", ha="center", va="center", transform=ax.transAxes)
        ax.set_title(f"{task}_loss", fontsize=9)
        ax.set_xlabel("step", fontsize=8)
    if not drawn:
        plt.close(figure)
        return None
    return _png(plt, figure)


def _weight_plot(plt, report: dict, notes: list[str]) -> str | None:
    """The loss weights `weight_<task>` of every model but the single-task baselines."""
    curves = report["curves"]
    singles = {r["models"]["single"] for r in report["tasks"].values()}
    models = [m for m in curves if m not in singles and isinstance(curves[m], dict)]
    figure, ax = plt.subplots(figsize=(7, 3.2))
    styles = itertools.cycle(["-", "--", ":", "-."])  # fixed weights coincide: keep every line visible
    for model in models:
        for key in sorted(k for k in curves[model] if k.startswith("weight_")):
            series = _series(curves, model, key, notes)
            if series is not None:
                label = key[len("weight_"):] if len(models) == 1 else f"{model}: {key[len('weight_'):]}"
                ax.plot(*series, label=label, linewidth=1.2, linestyle=next(styles))
    if not ax.lines:
        plt.close(figure)
        return None
    ax.set_xlabel("step")
    ax.set_ylabel("loss weight")
    ax.legend(fontsize=7)
    return _png(plt, figure)


def _plots(report: dict) -> tuple[dict[str, str | None], list[str]]:
    plt, notes = _pyplot(), []
    plots = {
        "Improvement of multi-task over single-task (95% interval)": _difference_plot(plt, report),
        "Training loss per task": _loss_plot(plt, report, notes),
        "Loss weights of the multi-task model": _weight_plot(plt, report, notes),
    }
    return plots, notes


# ----------------------------------------------------------------------------------------------
# Files


def _jsonable(value):
    """Plain JSON values: numpy scalars/arrays as Python ones, nan/inf as null (strict JSON)."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_jsonable(v) for v in (value.tolist() if isinstance(value, np.ndarray) else value)]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_report(report: dict, out_dir) -> dict[str, Path]:
    """Writes transfer.json (undefined values as null), transfer.md and transfer.html into `out_dir`
    (created if needed); returns their paths by kind: "json", "md", "html"."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plots, notes = _plots(report)  # first: without matplotlib nothing half-written is left behind
    paths = {"json": out / "transfer.json", "md": out / "transfer.md", "html": out / "transfer.html"}
    paths["json"].write_text(json.dumps(_jsonable(report), indent=2, allow_nan=False) + "\n")
    paths["md"].write_text(render_markdown(report))
    paths["html"].write_text(render_html(report, plots, notes))
    return paths
