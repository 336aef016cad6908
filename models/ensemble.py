"""Model fusion: K SavedModels of the same task set served as one SavedModel with the same signatures.

- `weighted`: per task a convex combination of the members' outputs (probabilities for binary and
  multiclass tasks, values for regression), the weights fitted on the evaluation split. The Evaluator
  then scores the fused model on that same split: K-1 fitted numbers per task make its metrics a little
  optimistic, most for tasks with few labelled rows (fusion.json records `labelled_rows`).
- `cascade`: the cheap member answers every row; rows whose `cascade.task` score lies inside the band
  are gathered and only those run through the large member, whose outputs replace the cheap ones for
  those rows (every task).

The fused module exports through `models.export.export_module`, so it has the signatures, output
names, method names and assets.extra files of a single model: the Evaluator, Pusher and server take it
unchanged. It calls the members' own signatures, so each member keeps its Transform graph and network.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
from typing import Any, Callable

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import numpy as np  # noqa: E402
import scipy.optimize  # noqa: E402
import tensorflow as tf  # noqa: E402
import tensorflow_text  # noqa: E402,F401  (the members' Transform graphs tokenize in graph)

from models import features  # noqa: E402
from models.export import (  # noqa: E402
    EXAMPLES_INPUT, PREDICT_RAW_SIGNATURE, TRANSFORM_SIGNATURE, ServableModule, export_module, read_raw_features,
)
from models.spec import CascadeSpec, ProjectSpec, TaskSpec, TaskType  # noqa: E402

SERVING_SIGNATURE = "serving_default"
# Written into the fused SavedModel too, so a pushed version says what it is made of.
FUSION_ASSET = "assets.extra/fusion.json"
_EPS = 1e-7


class FusionError(ValueError):
    """The members cannot be fused (different task sets or inputs, missing members, no eval rows)."""


@dataclasses.dataclass(frozen=True)
class Member:
    """One loaded member SavedModel."""

    name: str
    path: str
    loaded: Any
    raw_features: dict[str, dict[str, str]]


def load_members(member_dirs: dict[str, str]) -> list[Member]:
    """Loads each member's exported SavedModel (in the order given)."""
    return [Member(name, path, tf.saved_model.load(path), read_raw_features(path))
            for name, path in member_dirs.items()]


def _output_names(member: Member) -> set[str]:
    return set(member.loaded.signatures[SERVING_SIGNATURE].structured_outputs)


def check_members(members: list[Member], spec: ProjectSpec) -> None:
    """Fusing is only meaningful if every member answers the spec's tasks from the same raw inputs."""
    if not members:
        raise FusionError("no ensemble members to fuse")
    tasks = {t.name for t in spec.tasks}
    wrong = {m.name: sorted(_output_names(m)) for m in members if _output_names(m) != tasks}
    if wrong:
        described = "; ".join(f"{name}: {outs}" for name, outs in wrong.items())
        raise FusionError(f"ensemble members answer different task sets: {described}; "
                          f"the spec declares {sorted(tasks)}")
    first = members[0]
    for member in members[1:]:
        if member.raw_features != first.raw_features:
            raise FusionError(f"ensemble members {first.name!r} and {member.name!r} read different raw features: "
                              f"{sorted(first.raw_features)} vs {sorted(member.raw_features)}")


class _Fusion(ServableModule):
    """Holds the loaded members (so saving the fused module saves them) and calls their signatures."""

    def __init__(self, members: list[Member], spec: ProjectSpec):
        super().__init__(name="commerce_mtl_fused")
        check_members(members, spec)
        self.member_names = [m.name for m in members]
        self.members = [m.loaded for m in members]
        self._raw = dict(members[0].raw_features)
        self._tasks = [t.name for t in spec.tasks]

    @property
    def raw_features(self) -> dict[str, dict[str, str]]:
        return self._raw

    def _index(self, name: str) -> int:
        if name not in self.member_names:
            raise FusionError(f"no ensemble member named {name!r}; members are {self.member_names}")
        return self.member_names.index(name)

    def _on_examples(self, i: int, inputs: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        return self.members[i].signatures[SERVING_SIGNATURE](**{EXAMPLES_INPUT: inputs[EXAMPLES_INPUT]})

    def _on_columns(self, i: int, inputs: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        return self.members[i].signatures[PREDICT_RAW_SIGNATURE](**inputs)

    def transform_examples(self, examples: tf.Tensor) -> dict[str, tf.Tensor]:
        # Every member was trained on the pipeline's one Transform output: the first member's graph
        # gives the labels and masks the Evaluator scores the fused outputs against.
        return self.members[0].signatures[TRANSFORM_SIGNATURE](**{EXAMPLES_INPUT: examples})

    def predict_examples(self, examples: tf.Tensor) -> dict[str, tf.Tensor]:
        return self._combine(self._on_examples, {EXAMPLES_INPUT: examples})

    def predict_columns(self, columns: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        return self._combine(self._on_columns, columns)

    def _combine(self, run: Callable[[int, dict], dict], inputs: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        raise NotImplementedError


class WeightedFusion(_Fusion):
    """Per task, output = Σ_k w_tk · output_k with w_t on the simplex."""

    def __init__(self, members: list[Member], spec: ProjectSpec, weights: dict[str, dict[str, float]]):
        super().__init__(members, spec)
        _check_weights(weights, self._tasks, self.member_names)
        self.weights = {t: [float(weights[t][m]) for m in self.member_names] for t in self._tasks}

    def _combine(self, run, inputs):
        # A member weighted 0 for every task is not run at all; a 0 weight adds nothing to its task.
        used = [i for i in range(len(self.members)) if any(self.weights[t][i] > 0 for t in self._tasks)]
        outputs = {i: run(i, inputs) for i in used}
        return {t: tf.add_n([self.weights[t][i] * out[t] for i, out in outputs.items() if self.weights[t][i] > 0])
                for t in self._tasks}


def _check_weights(weights: dict[str, dict[str, float]], tasks: list[str], members: list[str]) -> None:
    if set(weights) != set(tasks):
        raise FusionError(f"fusion weights are given for tasks {sorted(weights)}, the members answer {sorted(tasks)}")
    for task, per_member in weights.items():
        if set(per_member) != set(members):
            raise FusionError(f"task {task!r}: weights name members {sorted(per_member)}, members are {members}")
        values = np.array(list(per_member.values()), dtype=float)
        if np.any(values < 0) or abs(values.sum() - 1.0) > 1e-6:
            raise FusionError(f"task {task!r}: weights {per_member} must be non-negative and sum to 1")


def check_cascade_task(task: TaskSpec) -> None:
    if task.type == TaskType.REGRESSION:
        raise FusionError(f"cascade task {task.name!r} is a regression task: its value has no [0, 1] score "
                          "to read a band on; use a binary or multiclass task")


def cascade_score(output: tf.Tensor, task: TaskSpec) -> tf.Tensor:
    """The score the band is read on: a binary task's probability, a multiclass task's top probability."""
    check_cascade_task(task)
    return output if task.type == TaskType.BINARY else tf.reduce_max(output, axis=-1)


class CascadeFusion(_Fusion):
    """The cheap member answers; only rows whose score is inside the band run through the large member."""

    def __init__(self, members: list[Member], spec: ProjectSpec, cascade: CascadeSpec):
        super().__init__(members, spec)
        self._task = spec.task(cascade.task)
        check_cascade_task(self._task)
        self._cheap, self._large = self._index(cascade.cheap), self._index(cascade.large)
        if self._cheap == self._large:
            raise FusionError(f"cascade cheap and large member are both {cascade.cheap!r}")
        self._band = tuple(float(b) for b in cascade.band)

    def in_band(self, cheap_output: tf.Tensor) -> tf.Tensor:
        score = cascade_score(cheap_output, self._task)
        return tf.logical_and(score >= self._band[0], score <= self._band[1])

    def _combine(self, run, inputs):
        cheap = run(self._cheap, inputs)
        rows = tf.where(self.in_band(cheap[self._task.name]))[:, 0]

        def run_large():
            large = run(self._large, {k: tf.gather(v, rows) for k, v in inputs.items()})
            return {t: large[t] for t in self._tasks}

        def skip_large():
            # No row is uncertain: the large member does not run at all (an empty batch is not free).
            return {t: tf.gather(cheap[t], rows) for t in self._tasks}

        large = tf.cond(tf.size(rows) > 0, run_large, skip_large)
        return {t: tf.tensor_scatter_nd_update(cheap[t], rows[:, None], large[t]) for t in self._tasks}


# --- fitting the weights on the evaluation split ------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class TaskFit:
    """Fitted weights of one task and the eval losses they were chosen on (None: no labelled row)."""

    task: str
    loss: str
    labelled_rows: int
    weights: dict[str, float]
    member_loss: dict[str, float | None]
    fused_loss: float | None


def loss_name(task: TaskSpec) -> str:
    return "squared_error" if task.type == TaskType.REGRESSION else "log_loss"


def task_loss(task: TaskSpec, prediction: np.ndarray, labels: np.ndarray, weights: np.ndarray) -> float:
    """The mean (weighted by the label mask) loss a task is fitted and reported on."""
    prediction, labels = np.asarray(prediction, dtype=np.float64), np.asarray(labels, dtype=np.float64)
    if task.type == TaskType.REGRESSION:
        per_row = (prediction - labels) ** 2
    elif task.type == TaskType.BINARY:
        p = np.clip(prediction, _EPS, 1 - _EPS)
        per_row = -(labels * np.log(p) + (1 - labels) * np.log(1 - p))
    else:
        picked = prediction[np.arange(len(labels)), labels.astype(np.int64)]
        per_row = -np.log(np.clip(picked, _EPS, 1.0))
    return float(np.sum(weights * per_row) / np.sum(weights))


def _objective(task: TaskSpec, stacked: np.ndarray, labels: np.ndarray, weights: np.ndarray):
    """(loss(w), gradient(w)) of the task's loss of Σ_k w_k · prediction_k; `stacked` is [rows, ..., K]."""
    total = np.sum(weights)
    if task.type == TaskType.MULTICLASS:
        # Only the labelled class's probability enters the log loss: [rows, K].
        picked = stacked[np.arange(len(labels)), labels.astype(np.int64), :]

        def multiclass_loss(w: np.ndarray) -> float:
            return float(-np.sum(weights * np.log(np.clip(picked @ w, _EPS, 1.0))) / total)

        def multiclass_grad(w: np.ndarray) -> np.ndarray:
            return -(weights / np.clip(picked @ w, _EPS, 1.0)) @ picked / total
        return multiclass_loss, multiclass_grad
    labels = labels.astype(np.float64)

    def loss(w: np.ndarray) -> float:
        return task_loss(task, stacked @ w, labels, weights)

    def grad(w: np.ndarray) -> np.ndarray:
        p = stacked @ w
        if task.type == TaskType.REGRESSION:
            d = 2.0 * (p - labels)
        else:
            p = np.clip(p, _EPS, 1 - _EPS)
            d = -(labels / p - (1 - labels) / (1 - p))
        return (weights * d) @ stacked / total
    return loss, grad


def minimise_on_simplex(loss: Callable, grad: Callable, k: int) -> np.ndarray:
    """argmin of a convex loss over {w >= 0, Σw = 1} by SLSQP; never worse than uniform or any vertex."""
    result = scipy.optimize.minimize(
        loss, np.full(k, 1.0 / k), jac=grad, method="SLSQP", bounds=[(0.0, 1.0)] * k,
        constraints=[{"type": "eq", "fun": lambda w: np.sum(w) - 1.0, "jac": lambda w: np.ones_like(w)}],
        options={"ftol": 1e-12, "maxiter": 500},
    )
    # SLSQP leaves ~1e-16 where a bound is active: snap those to 0 so a member can drop out exactly.
    fitted = np.where(result.x > 1e-9, result.x, 0.0)
    fitted = fitted / fitted.sum() if fitted.sum() > 0 else np.full(k, 1.0 / k)
    candidates = [fitted, np.full(k, 1.0 / k), *np.eye(k)]
    return min(candidates, key=loss)


def fit_task_weights(task: TaskSpec, predictions: dict[str, np.ndarray], labels: np.ndarray,
                     mask: np.ndarray) -> TaskFit:
    """Weights of the members' outputs for `task` minimising its loss on the rows the task labels."""
    names = list(predictions)
    rows = np.asarray(mask, dtype=np.float64).reshape(-1) > 0
    if not rows.any():
        logging.warning("fusion: no eval row labels task %r; its members get uniform weights", task.name)
        uniform = {n: 1.0 / len(names) for n in names}
        return TaskFit(task.name, loss_name(task), 0, uniform, {n: None for n in names}, None)
    weights = np.asarray(mask, dtype=np.float64).reshape(-1)[rows]
    labels = np.asarray(labels).reshape(-1)[rows]
    stacked = np.stack([np.asarray(predictions[n], dtype=np.float64)[rows] for n in names], axis=-1)
    loss, grad = _objective(task, stacked, labels, weights)
    w = minimise_on_simplex(loss, grad, len(names))
    member_loss = {n: task_loss(task, stacked[..., i], labels, weights) for i, n in enumerate(names)}
    return TaskFit(task.name, loss_name(task), int(rows.sum()), {n: float(x) for n, x in zip(names, w)},
                   member_loss, loss(w))


# --- running members on the eval split -----------------------------------------------------------------

def run_signature(loaded: Any, signature: str, examples: list[bytes], keys: list[str] | None = None,
                  batch_size: int = 256) -> dict[str, np.ndarray]:
    """A signature's outputs (only `keys`, if given) over serialized examples, batch by batch."""
    fn = loaded.signatures[signature]
    parts: dict[str, list[np.ndarray]] = {}
    for start in range(0, len(examples), batch_size):
        out = fn(**{EXAMPLES_INPUT: tf.constant(examples[start:start + batch_size])})
        for key in keys if keys is not None else out:
            parts.setdefault(key, []).append(out[key].numpy())
    return {k: np.concatenate(v) for k, v in parts.items()}


def eval_labels(member: Member, spec: ProjectSpec, examples: list[bytes]) -> dict[str, np.ndarray]:
    """Transformed labels and masks of the eval rows, as the Evaluator sees them."""
    keys = [k for t in spec.tasks for k in (features.label_key(t), features.mask_key(t))]
    return run_signature(member.loaded, TRANSFORM_SIGNATURE, examples, keys)


def _loss_report(spec: ProjectSpec, predictions: dict[str, dict[str, np.ndarray]], fused: dict[str, np.ndarray],
                 labels: dict[str, np.ndarray]) -> dict[str, dict]:
    """Per task: each member's and the fused eval loss on the rows the task labels."""
    report = {}
    for task in spec.tasks:
        mask = labels[features.mask_key(task)].reshape(-1)
        rows = mask > 0
        entry = {"loss": loss_name(task), "labelled_rows": int(rows.sum()), "member_loss": {}, "fused_loss": None}
        if rows.any():
            y = labels[features.label_key(task)].reshape(-1)[rows]
            entry["member_loss"] = {m: task_loss(task, p[task.name][rows], y, mask[rows])
                                    for m, p in predictions.items()}
            entry["fused_loss"] = task_loss(task, fused[task.name][rows], y, mask[rows])
        report[task.name] = entry
    return report


def _fit_weighted(spec, members, predictions, labels) -> tuple[dict, dict]:
    weights, tasks = {}, {}
    for task in spec.tasks:
        fit = fit_task_weights(task, {m.name: predictions[m.name][task.name] for m in members},
                               labels[features.label_key(task)], labels[features.mask_key(task)])
        weights[task.name] = fit.weights
        tasks[task.name] = {"loss": fit.loss, "labelled_rows": fit.labelled_rows, "weights": fit.weights,
                            "member_loss": fit.member_loss, "fused_loss": fit.fused_loss}
    return weights, tasks


def _cascade_eval(spec: ProjectSpec, module: CascadeFusion, predictions: dict, labels: dict) -> tuple[dict, dict]:
    """The cascade's eval losses and how many eval rows the large member would see."""
    cascade = spec.ensemble.cascade
    cheap, large = predictions[cascade.cheap], predictions[cascade.large]
    in_band = module.in_band(tf.constant(cheap[cascade.task])).numpy()
    fused = {t: np.where(in_band.reshape((-1,) + (1,) * (cheap[t].ndim - 1)), large[t], cheap[t]) for t in cheap}
    rows = len(in_band)
    stats = {"cheap": cascade.cheap, "large": cascade.large, "task": cascade.task, "band": list(cascade.band),
             "eval_rows": rows, "rows_in_band": int(in_band.sum()),
             "share_in_band": float(in_band.sum() / rows) if rows else 0.0}
    return stats, _loss_report(spec, {cascade.cheap: cheap, cascade.large: large}, fused, labels)


def build_fusion(spec: ProjectSpec, members: list[Member], eval_examples: list[bytes],
                 batch_size: int = 256) -> tuple[_Fusion, dict]:
    """The fused module and its report (method, members, weights or band, member and fused eval losses)."""
    if spec.ensemble is None:
        raise FusionError("the spec declares no ensemble")
    if not eval_examples:
        raise FusionError("no evaluation examples to fit the fusion on")
    check_members(members, spec)
    predictions = {m.name: run_signature(m.loaded, SERVING_SIGNATURE, eval_examples, batch_size=batch_size)
                   for m in members}
    labels = eval_labels(members[0], spec, eval_examples)
    report: dict[str, Any] = {"method": spec.ensemble.method, "members": [m.name for m in members],
                              "eval_rows": len(eval_examples)}
    if spec.ensemble.method == "weighted":
        weights, report["tasks"] = _fit_weighted(spec, members, predictions, labels)
        module: _Fusion = WeightedFusion(members, spec, weights)
    else:
        module = CascadeFusion(members, spec, spec.ensemble.cascade)
        report["cascade"], report["tasks"] = _cascade_eval(spec, module, predictions, labels)
    return module, report


def _ordered_dirs(spec: ProjectSpec, member_dirs: dict[str, str]) -> dict[str, str]:
    declared = [m.name for m in spec.ensemble.members] if spec.ensemble else []
    missing, extra = sorted(set(declared) - set(member_dirs)), sorted(set(member_dirs) - set(declared))
    if missing or extra:
        raise FusionError(f"ensemble members {declared} declared, models given for {sorted(member_dirs)}"
                          + (f"; missing {missing}" if missing else "") + (f"; not declared {extra}" if extra else ""))
    return {name: member_dirs[name] for name in declared}


def fuse(spec: ProjectSpec, member_dirs: dict[str, str], eval_examples: list[bytes], export_dir: str,
         warmup_examples: list[bytes] | None = None, batch_size: int = 256) -> dict:
    """Loads the members, fits / configures the fusion, exports it to `export_dir`; returns the report."""
    members = load_members(_ordered_dirs(spec, member_dirs))
    module, report = build_fusion(spec, members, eval_examples, batch_size)
    export_module(module, spec, export_dir, warmup_examples)
    write_json(os.path.join(export_dir, FUSION_ASSET), report)
    return report


def write_json(path: str, content: dict) -> None:
    tf.io.gfile.makedirs(os.path.dirname(path))
    with tf.io.gfile.GFile(path, "w") as f:
        json.dump(content, f, indent=1, sort_keys=True)
