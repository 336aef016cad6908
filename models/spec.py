"""The typed project configuration: one YAML file declares data, features, encoder and tasks.

Everything downstream (Transform, model heads, losses, metrics, signatures, reports) is derived
from a `ProjectSpec`, so a task is declared exactly once.
"""
from __future__ import annotations

import difflib
import enum
import os
import re
from pathlib import Path
from typing import Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
SIMULATED_ROW_ID = "event_id"  # pipeline/simulation.py's row names, also the oracle file's key


class ConfigError(ValueError):
    """A configuration file is invalid; the message names the file, the key and what was expected."""


class _Strict(BaseModel):
    # extra="forbid": a misspelt key must fail loudly instead of being ignored.
    model_config = ConfigDict(extra="forbid", frozen=True)


class TaskType(str, enum.Enum):
    BINARY = "binary"
    MULTICLASS = "multiclass"
    REGRESSION = "regression"


_DEFAULT_METRICS = {
    TaskType.BINARY: ["auc", "binary_accuracy"],
    TaskType.MULTICLASS: ["accuracy"],
    TaskType.REGRESSION: ["rmse", "mae"],
}
LOWER_IS_BETTER = {"rmse", "mae", "mse", "log_loss"}
# Per-user metrics: computed over the rows of each `evaluation.group_by` value (e.g. user_id).
GROUP_METRICS = {"gauc", "ndcg_at_10"}
# Metrics only the Evaluator computes (no streaming Keras metric logs them during training).
EVALUATION_ONLY_METRICS = {"calibration", "macro_f1", *GROUP_METRICS}
_ALLOWED_METRICS = {
    TaskType.BINARY: {"auc", "pr_auc", "binary_accuracy", "precision", "recall", "log_loss", "calibration",
                      *GROUP_METRICS},
    TaskType.MULTICLASS: {"accuracy", "top2_accuracy", "log_loss", "macro_f1"},
    TaskType.REGRESSION: {"rmse", "mae", "mse"},
}
# The Evaluator reports these for every task of a type, after the task's own `metrics`.
STANDARD_METRICS = {
    TaskType.BINARY: ["auc", "pr_auc", "log_loss", "calibration"],
    TaskType.MULTICLASS: ["accuracy", "macro_f1", "log_loss"],
    TaskType.REGRESSION: ["rmse", "mae"],
}


class TaskSpec(_Strict):
    name: str
    type: TaskType
    label: str = Field(description="column of the prepared data holding the label")
    classes: list[str] | None = None
    loss_weight: float = Field(1.0, ge=0.0)
    metrics: list[str] = Field(default_factory=list)
    label_transform: Literal["none", "log1p"] = "none"
    # The Evaluator blesses a model only if the task's primary metric is better than this
    # (above it for AUC/accuracy, below it for RMSE/MAE/log loss); None sets no threshold.
    blessing_threshold: float | None = None
    # ESMM funnel: this task's head predicts p(task | parent) and the model outputs the product
    # p(parent) * p(task | parent), trained on the parent's whole (impression) space.
    depends_on: str | None = None
    # The most the primary metric may get worse than in the latest blessed model (absolute, e.g. 0.01
    # AUC) before the candidate is refused; None: `evaluation.max_loss`.
    max_loss: float | None = Field(None, ge=0.0)
    # Binary tasks whose label cells are strings (e.g. "50000+." / "- 50000."): a non-empty cell equal to
    # one of these is 1, any other non-empty cell 0; empty cells stay missing. None: cells must be 0/1.
    positive_values: list[str] | None = None

    @field_validator("positive_values")
    @classmethod
    def _positive_values(cls, v: list[str] | None) -> list[str] | None:
        if v is None:
            return v
        # Cells are compared after stripping surrounding whitespace, so the values are stripped too.
        stripped = [s.strip() for s in v]
        if not stripped or any(not s for s in stripped):
            raise ValueError("positive_values needs at least one non-empty value, e.g. [\"yes\"]")
        if len(set(stripped)) != len(stripped):
            raise ValueError(f"positive_values has duplicates: {v}")
        return stripped

    @field_validator("name")
    @classmethod
    def _name_is_identifier(cls, v: str) -> str:
        if not _NAME.match(v):
            raise ValueError(f"task name {v!r} must match {_NAME.pattern} (it becomes a model output name)")
        return v

    @model_validator(mode="after")
    def _check_classes_and_metrics(self) -> "TaskSpec":
        if self.type == TaskType.MULTICLASS:
            if not self.classes or len(self.classes) < 2:
                raise ValueError(f"multiclass task {self.name!r} needs 'classes' with at least 2 entries")
            if len(set(self.classes)) != len(self.classes):
                raise ValueError(f"task {self.name!r} has duplicate classes: {self.classes}")
        elif self.classes is not None:
            raise ValueError(f"task {self.name!r} of type {self.type.value} must not declare 'classes'")
        if self.label_transform != "none" and self.type != TaskType.REGRESSION:
            raise ValueError(f"label_transform is only allowed for regression tasks, not {self.name!r}")
        if self.positive_values is not None and self.type != TaskType.BINARY:
            raise ValueError(f"positive_values is only allowed for binary tasks, not {self.type.value} task "
                             f"{self.name!r}")
        unknown = set(self.metrics) - _ALLOWED_METRICS[self.type]
        if unknown:
            raise ValueError(
                f"task {self.name!r}: unknown metrics {sorted(unknown)}; "
                f"{self.type.value} tasks allow {sorted(_ALLOWED_METRICS[self.type])}"
            )
        if not self.metrics:
            object.__setattr__(self, "metrics", list(_DEFAULT_METRICS[self.type]))
        if self.primary_metric == "calibration":
            # Its best value is 1, not an end of the scale: no bound or change threshold fits it.
            raise ValueError(f"task {self.name!r}: 'calibration' cannot be the primary (first) metric")
        return self

    @property
    def evaluated_metrics(self) -> list[str]:
        """What the Evaluator reports: the declared metrics, then the type's standard ones."""
        return [*self.metrics, *(m for m in STANDARD_METRICS[self.type] if m not in self.metrics)]

    @property
    def primary_metric(self) -> str:
        return self.metrics[0]

    @property
    def primary_metric_lower_is_better(self) -> bool:
        return self.primary_metric in LOWER_IS_BETTER

    @property
    def num_classes(self) -> int:
        return len(self.classes) if self.classes else 1


class SimulationSpec(_Strict):
    rows: int = Field(6000, gt=0)
    seed: int = 0


class SourceSpec(_Strict):
    """One input: a CSV file (optionally .gz), or the built-in simulated platform.

    Several sources may carry different feature columns and label different tasks; they are unioned
    into one example stream with a `source` feature, and what a source does not carry is missing.
    Cells are read with surrounding whitespace removed (so "a, b" separators work); a cell that is empty
    then is missing.
    """

    path: str | None = Field(None, description="relative paths resolve against --data (or the config's folder)")
    simulated: SimulationSpec | None = None
    # project column name -> column name in the source file; unmapped columns keep their names
    columns: dict[str, str] = Field(default_factory=dict)
    # The file's column names, for a file without a header line (its first line is then data, and
    # every row must have exactly this many fields); None: the first line is the header.
    header: list[str] | None = None
    # A column naming each row (not a feature), carried into the examples so reports can join the
    # evaluation rows with other files; generated data names its rows by `event_id`.
    row_id: str | None = None
    # The value of the `source` feature; defaults to the file's stem, or "simulated".
    name: str | None = None
    # Training examples of this source are repeated (>1) or subsampled (<1) by this factor.
    sampling_weight: float = Field(1.0, gt=0)
    # Feature columns this source carries (None: every declared feature); the rest are missing.
    features: list[str] | None = None
    # Tasks this source labels (None: every task); the other tasks are masked for its rows.
    tasks: list[str] | None = None
    # Label cells holding one of these values count as missing (masked), like empty cells.
    missing_label_values: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _one_origin(self) -> "SourceSpec":
        if (self.path is None) == (self.simulated is None):
            raise ValueError("a source needs exactly one of 'path' (a CSV file) or 'simulated' (generated data)")
        if self.name is not None and not _NAME.match(self.name):
            raise ValueError(f"source name {self.name!r} must match {_NAME.pattern}")
        if self.header is not None:
            if self.path is None:
                raise ValueError("'header' names the columns of a CSV file: it needs 'path', not 'simulated'")
            names = [n.strip() for n in self.header]
            if not names or any(not n for n in names):
                raise ValueError("'header' must list one non-empty name per column of the file")
            dupes = sorted({n for n in names if names.count(n) > 1})
            if dupes:
                raise ValueError(f"'header' names columns more than once: {dupes}")
            object.__setattr__(self, "header", names)
        return self

    @property
    def row_id_column(self) -> str | None:
        return self.row_id or (SIMULATED_ROW_ID if self.simulated is not None else None)

    @property
    def source_name(self) -> str:
        if self.name:
            return self.name
        if self.simulated is not None:
            return "simulated"
        stem = Path(self.path).name.split(".")[0].lower()
        return re.sub(r"[^a-z0-9_]+", "_", stem).strip("_") or "source"


class EncoderSpec(_Strict):
    """Which BERT encoder to use: `tiny` (random, tests), `minilm` (pretrained), or a local HF directory."""

    kind: Literal["tiny", "minilm", "path"] = "minilm"
    path: str | None = None
    trainable: bool = True
    pooling: Literal["mean", "cls"] = "mean"
    # Sizes of the random `tiny` encoder; ignored by pretrained encoders.
    hidden_size: int = Field(32, gt=0)
    num_layers: int = Field(2, gt=0)
    num_heads: int = Field(2, gt=0)

    @model_validator(mode="after")
    def _path_iff_kind_path(self) -> "EncoderSpec":
        if self.kind == "path" and not self.path:
            raise ValueError("encoder kind 'path' needs 'path': a directory with config.json and vocab.txt")
        if self.kind != "path" and self.path:
            raise ValueError(f"encoder kind {self.kind!r} takes no 'path'; use {{path: DIR}} for a local model")
        return self


class FeaturesSpec(_Strict):
    text: list[str] = Field(default_factory=list)
    numeric: list[str] = Field(default_factory=list)
    categorical: list[str] = Field(default_factory=list)
    ids: list[str] = Field(default_factory=list)
    id_hash_buckets: int = Field(1000, gt=0)
    # Categorical vocabularies: values seen fewer times map to an OOV bucket.
    categorical_oov_buckets: int = Field(1, gt=0)
    # Numeric columns (>= 0, heavy-tailed: money, counts) z-scored as log(1 + x) instead of x.
    log1p: list[str] = Field(default_factory=list)
    # Numeric columns also embedded by quantile bucket (column: number of buckets), next to their z-score:
    # a step function of the value, which tree models find at once and an MLP on one z-score does not.
    buckets: dict[str, int] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _numeric_options(self) -> "FeaturesSpec":
        for key, columns in (("log1p", self.log1p), ("buckets", self.buckets)):
            unknown = sorted(set(columns) - set(self.numeric))
            if unknown:
                raise ValueError(f"features.{key} {unknown} must be numeric features; numeric: {self.numeric}")
        few = {c: n for c, n in self.buckets.items() if n < 2}
        if few:
            raise ValueError(f"features.buckets {few}: a column needs at least 2 buckets")
        return self

    def all_columns(self) -> list[str]:
        return [*self.text, *self.numeric, *self.categorical, *self.ids]


class TrainingSpec(_Strict):
    epochs: int = Field(1, gt=0)
    batch_size: int = Field(32, gt=0)
    learning_rate: float = Field(5e-5, gt=0)
    head_learning_rate: float | None = Field(None, gt=0)
    # Optional cap on steps per epoch; None trains on the whole split each epoch.
    max_steps_per_epoch: int | None = Field(None, gt=0)
    eval_batch_size: int = Field(64, gt=0)
    shared_units: list[int] = Field(default_factory=lambda: [128])
    tower_units: list[int] = Field(default_factory=lambda: [64])
    dropout: float = Field(0.1, ge=0.0, lt=1.0)
    seed: int = 0
    eval_split_percent: int = Field(20, gt=0, lt=100)
    # Split train/eval by hashing this column instead of the whole row, so that e.g. every user lands
    # on one side only and user-level labels (churn) cannot be memorised across the split.
    eval_split_by: str | None = None
    # A seeded random split instead of hashing: data_prep puts exactly eval_split_percent% of the rows
    # (a permutation drawn with numpy's default_rng(split_seed), see pipeline.data_prep.seeded_split)
    # into eval and writes train/ and eval/ files, which ExampleGen reads as the two splits.
    # Single-source configs only; excludes eval_split_by.
    split_seed: int | None = None

    @model_validator(mode="after")
    def _one_split_rule(self) -> "TrainingSpec":
        if self.split_seed is not None and self.eval_split_by is not None:
            raise ValueError("training.split_seed (a seeded random split of the rows) and training.eval_split_by "
                             "(a split by hashing a column) exclude each other; set one")
        return self


class ArchitectureSpec(_Strict):
    """How tasks share the joined text + tabular representation."""

    type: Literal["shared_bottom", "mmoe", "ple"] = "shared_bottom"
    num_experts: int = Field(4, gt=0, description="mmoe: shared experts")
    expert_units: list[int] = Field(default_factory=lambda: [64])
    levels: int = Field(2, gt=0, description="ple: CGC extraction levels")
    num_shared_experts: int = Field(2, gt=0, description="ple: shared experts per level")
    num_task_experts: int = Field(1, gt=0, description="ple: experts per task per level")


class LossWeightingSpec(_Strict):
    """How the per-task losses are combined (see models/loss_weighting.py)."""

    method: Literal["fixed", "uncertainty", "gradnorm", "dwa", "pcgrad"] = "fixed"
    gradnorm_alpha: float = Field(1.5, ge=0.0, description="gradnorm: restoring-force asymmetry")
    gradnorm_learning_rate: float = Field(0.025, gt=0.0, description="gradnorm: step size of the task weights")
    dwa_temperature: float = Field(2.0, gt=0.0)
    dwa_window_steps: int = Field(20, gt=0, description="dwa: steps per loss-ratio window")

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value):
        # `loss_weighting: uncertainty` means `loss_weighting: {method: uncertainty}`.
        return {"method": value} if isinstance(value, str) else value


class AugmentationSpec(_Strict):
    """Training-only text augmentation of the token ids; serving never sees it."""

    token_dropout: float = Field(0.0, ge=0.0, lt=1.0, description="share of word pieces removed")
    mask_rate: float = Field(0.0, ge=0.0, lt=1.0, description="share of word pieces replaced by [MASK]")


class AdversarialSpec(_Strict):
    """FGM (Miyato et al. 2017): also train on word embeddings moved by epsilon along the loss gradient."""

    epsilon: float = Field(1.0, gt=0.0)


class EnsembleMember(_Strict):
    """One model of an ensemble: the project's spec with these parts replaced."""

    name: str
    architecture: ArchitectureSpec | None = None
    loss_weighting: LossWeightingSpec | None = None
    encoder: EncoderSpec | None = None
    # Keys of `training` to override, e.g. {seed: 1, epochs: 2}.
    training: dict[str, Any] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _member_name(cls, v: str) -> str:
        if not _NAME.match(v):
            raise ValueError(f"ensemble member name {v!r} must match {_NAME.pattern}")
        return v


class CascadeSpec(_Strict):
    """`cheap` answers; `large` re-scores only rows whose `task` score lies inside `band`."""

    cheap: str
    large: str
    task: str
    band: tuple[float, float] = (0.3, 0.7)

    @model_validator(mode="after")
    def _band(self) -> "CascadeSpec":
        low, high = self.band
        if not 0.0 <= low < high <= 1.0:
            raise ValueError(f"cascade band {list(self.band)} must satisfy 0 <= low < high <= 1")
        return self


class EnsembleSpec(_Strict):
    """K models trained in one pipeline and fused by the ModelFusion component into one SavedModel."""

    method: Literal["weighted", "cascade"] = "weighted"
    members: list[EnsembleMember] = Field(min_length=2)
    cascade: CascadeSpec | None = None

    @model_validator(mode="after")
    def _members(self) -> "EnsembleSpec":
        names = [m.name for m in self.members]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate ensemble member names: {names}")
        if self.method == "cascade":
            if self.cascade is None:
                raise ValueError("ensemble method 'cascade' needs 'cascade: {cheap, large, task, band}'")
            unknown = sorted({self.cascade.cheap, self.cascade.large} - set(names))
            if unknown:
                raise ValueError(f"cascade names members {unknown} that are not in {names}")
        elif self.cascade is not None:
            raise ValueError("'cascade' is only used with method 'cascade'")
        return self


class EvaluationSpec(_Strict):
    """What the Evaluator slices by, how per-user metrics group rows, and how much a task may lose
    against the latest blessed model."""

    # Each value of these categorical features (or `source`, for several sources) gets its own metrics.
    slice_by: list[str] = Field(default_factory=list)
    # The column whose values are users: gauc / ndcg_at_10 are computed per value, then averaged.
    group_by: str | None = None
    # Default of every task's `max_loss` (None: the candidate is not compared with the blessed model).
    max_loss: float | None = Field(None, ge=0.0)
    # Resamples behind the transfer report's 95% intervals.
    bootstrap_samples: int = Field(1000, ge=100)


class ProjectSpec(_Strict):
    model_name: str
    sources: list[SourceSpec] = Field(min_length=1)
    features: FeaturesSpec
    tasks: list[TaskSpec] = Field(min_length=1)
    encoder: EncoderSpec = Field(default_factory=EncoderSpec)
    architecture: ArchitectureSpec = Field(default_factory=ArchitectureSpec)
    sequence_length: int = Field(64, ge=8, le=512)
    training: TrainingSpec = Field(default_factory=TrainingSpec)
    loss_weighting: LossWeightingSpec = Field(default_factory=LossWeightingSpec)
    augmentation: AugmentationSpec = Field(default_factory=AugmentationSpec)
    adversarial: AdversarialSpec | None = None
    ensemble: EnsembleSpec | None = None
    evaluation: EvaluationSpec = Field(default_factory=EvaluationSpec)

    @field_validator("model_name")
    @classmethod
    def _model_name(cls, v: str) -> str:
        if not _NAME.match(v):
            raise ValueError(f"model_name {v!r} must match {_NAME.pattern} (it names the serving directory)")
        return v

    @model_validator(mode="after")
    def _check_columns(self) -> "ProjectSpec":
        names = [t.name for t in self.tasks]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"duplicate task names: {dupes}")
        feature_cols = self.features.all_columns()
        dupes = sorted({c for c in feature_cols if feature_cols.count(c) > 1})
        if dupes:
            raise ValueError(f"columns declared as more than one feature kind: {dupes}")
        if not feature_cols:
            raise ValueError("features: declare at least one text, numeric, categorical or id column")
        split_by = self.training.eval_split_by
        if split_by is not None and split_by not in feature_cols:
            raise ValueError(f"training.eval_split_by {split_by!r} must be one of the feature columns {feature_cols}")
        overlap = sorted(set(feature_cols) & {t.label for t in self.tasks})
        if overlap:
            raise ValueError(f"label columns used as features too (that leaks the label): {overlap}")
        self._check_funnels()
        self._check_sources()
        self._check_shared_labels()
        self._check_ensemble()
        self._check_evaluation()
        return self

    def check_blessable(self) -> None:
        """A spec the pipeline evaluates needs a value threshold: TFX's Evaluator never blesses a model it
        could not validate, and change thresholds (`max_loss`) are skipped while there is no blessed model.
        (Checked on the configs users load, not on derived specs such as single-task baselines.)"""
        if all(t.blessing_threshold is None for t in self.tasks):
            raise ValueError(
                "no task sets a blessing_threshold: TFX's Evaluator never blesses a model it could not "
                "validate against a threshold, so nothing would ever be pushed; set one on at least one task")

    def check_encoder_used(self) -> None:
        """A config without text features builds no text encoder (no tokenizer, no text inputs), so an
        `encoder` section in it is refused rather than silently ignored. (Checked on the configs users
        load: derived specs carry the default encoder.)"""
        if self.features.text:
            return
        given = ["encoder"] if "encoder" in self.model_fields_set else []
        given += [f"ensemble.members[{m.name}].encoder" for m in (self.ensemble.members if self.ensemble else [])
                  if m.encoder is not None]
        if given:
            raise ValueError(f"{', '.join(given)}: this config declares no text features (features.text), so no "
                             "text encoder is built; remove the encoder section or declare text features")

    def _check_evaluation(self) -> None:
        evaluation, feature_cols = self.evaluation, self.features.all_columns()
        sliceable = [*self.features.categorical, *self.features.ids, *(["source"] if len(self.sources) > 1 else [])]
        unknown = sorted(set(evaluation.slice_by) - set(sliceable))
        if unknown:
            raise ValueError(f"evaluation.slice_by {unknown}: slice by categorical or id features"
                             f"{' or source' if len(self.sources) > 1 else ''}, i.e. {sliceable}")
        if evaluation.group_by is not None and evaluation.group_by not in feature_cols:
            raise ValueError(f"evaluation.group_by {evaluation.group_by!r} must be one of the feature columns "
                             f"{feature_cols}")
        needs_group = sorted(t.name for t in self.tasks if GROUP_METRICS & set(t.metrics))
        if needs_group and evaluation.group_by is None:
            raise ValueError(f"tasks {needs_group} ask for per-user metrics {sorted(GROUP_METRICS)}: set "
                             "evaluation.group_by to the column naming the user")

    def max_loss(self, task: TaskSpec) -> float | None:
        return task.max_loss if task.max_loss is not None else self.evaluation.max_loss

    def _check_funnels(self) -> None:
        by_name = {t.name: t for t in self.tasks}
        for task in self.tasks:
            if task.depends_on is None:
                continue
            parent = by_name.get(task.depends_on)
            if parent is None:
                raise ValueError(f"task {task.name!r} depends_on {task.depends_on!r}, which is not a task; "
                                 f"tasks are {sorted(by_name)}")
            if task.type != TaskType.BINARY or parent.type != TaskType.BINARY:
                raise ValueError(f"depends_on links binary tasks only: {task.name!r} -> {parent.name!r}")
            seen, current = {task.name}, parent
            while current is not None:
                if current.name in seen:
                    raise ValueError(f"depends_on forms a cycle through task {task.name!r}")
                seen.add(current.name)
                current = by_name.get(current.depends_on) if current.depends_on else None

    def _check_sources(self) -> None:
        names = [s.source_name for s in self.sources]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"several sources are named {dupes}; give each a distinct 'name'")
        feature_cols, task_names = self.features.all_columns(), [t.name for t in self.tasks]
        for source in self.sources:
            unknown = sorted(set(source.features or []) - set(feature_cols))
            if unknown:
                raise ValueError(f"source {source.source_name!r} lists features {unknown} that are not declared "
                                 f"features {feature_cols}")
            unknown = sorted(set(source.tasks or []) - set(task_names))
            if unknown:
                raise ValueError(f"source {source.source_name!r} lists tasks {unknown}; tasks are {task_names}")
            split_by = self.training.eval_split_by
            if split_by and source.features is not None and split_by not in source.features:
                raise ValueError(f"source {source.source_name!r} lacks training.eval_split_by column {split_by!r}")
            if source.header is not None:
                carried = [c for c in feature_cols if source.features is None or c in source.features]
                carried += sorted({t.label for t in self.tasks if source.tasks is None or t.name in source.tasks})
                absent = [f"{source.columns.get(c, c)!r}" + (f" (for {c!r})" if c in source.columns else "")
                          for c in carried if source.columns.get(c, c) not in source.header]
                if absent:
                    raise ValueError(f"source {source.source_name!r}: its 'header' lacks the columns "
                                     f"{', '.join(absent)}; the header names {source.header}")
        for source in self.sources:
            if source.row_id is not None and len(self.sources) > 1:
                raise ValueError(f"source {source.source_name!r}: 'row_id' is carried for a single source only")
            if source.row_id is not None and source.row_id in {*feature_cols, *(t.label for t in self.tasks)}:
                raise ValueError(f"source {source.source_name!r}: row_id {source.row_id!r} is a feature or label "
                                 "column; it names rows and is never an input")
        if self.training.split_seed is not None and len(self.sources) > 1:
            raise ValueError(f"training.split_seed splits the rows of one file; this config has {len(self.sources)} "
                             "sources, which are split by hashing (training.eval_split_percent / eval_split_by)")

    def _check_shared_labels(self) -> None:
        """Tasks may share a label column only if they read its cells the same way: data_prep writes one
        prepared column per label column."""
        first: dict[str, TaskSpec] = {}
        for task in self.tasks:
            other = first.setdefault(task.label, task)
            reading = (task.type, task.classes, task.positive_values)
            if reading != (other.type, other.classes, other.positive_values):
                raise ValueError(
                    f"tasks {other.name!r} and {task.name!r} both read label column {task.label!r} but differ in "
                    "type, classes or positive_values; give the second its own column by mapping the same file "
                    f"column twice in the source's 'columns' (e.g. {{{task.name}: {task.label}}}) and "
                    f"label: {task.name}")

    def _check_ensemble(self) -> None:
        if self.ensemble is None:
            return
        if self.ensemble.cascade is not None and self.ensemble.cascade.task not in [t.name for t in self.tasks]:
            raise ValueError(f"cascade task {self.ensemble.cascade.task!r} is not a task")
        for member in self.ensemble.members:
            self.member_spec(member.name)

    # --- derived views -------------------------------------------------------------------------
    def label_columns(self) -> list[str]:
        return sorted({t.label for t in self.tasks})

    def input_columns(self) -> list[str]:
        """Every column the prepared data carries: features, then labels."""
        return [*self.features.all_columns(), *self.label_columns()]

    def task(self, name: str) -> TaskSpec:
        for t in self.tasks:
            if t.name == name:
                return t
        raise KeyError(f"no task named {name!r}; tasks are {[t.name for t in self.tasks]}")

    def source(self, name: str) -> SourceSpec:
        for s in self.sources:
            if s.source_name == name:
                return s
        raise KeyError(f"no source named {name!r}; sources are {[s.source_name for s in self.sources]}")

    def member_spec(self, name: str) -> "ProjectSpec":
        """The spec ensemble member `name` is trained with: this one with the member's parts replaced."""
        member = next((m for m in (self.ensemble.members if self.ensemble else []) if m.name == name), None)
        if member is None:
            raise KeyError(f"no ensemble member named {name!r}")
        data = self.model_dump(mode="json")
        data["ensemble"] = None
        for key in ("architecture", "loss_weighting", "encoder"):
            part = getattr(member, key)
            if part is not None:
                data[key] = part.model_dump(mode="json")
        data["training"] = {**data["training"], **member.training}
        try:
            return ProjectSpec.model_validate(data)
        except ValidationError as err:
            raise ValueError(f"ensemble member {name!r} does not give a valid spec:\n{_format_errors(err)}") from None

    def single_task_spec(self, name: str) -> "ProjectSpec":
        """The single-task baseline of task `name`: the same encoder, features and training budget, one
        tower on a shared bottom, the task trained on its own label (a funnel task on its joint label,
        without the parent's head)."""
        task = self.task(name)
        data = self.model_dump(mode="json")
        data.update(model_name=f"{self.model_name}_{name}", ensemble=None, architecture={},
                    loss_weighting={}, tasks=[{**task.model_dump(mode="json"), "depends_on": None,
                                               "loss_weight": 1.0}])
        return ProjectSpec.model_validate(data)

    def to_json(self) -> str:
        return self.model_dump_json()

    @classmethod
    def from_json(cls, text: str) -> "ProjectSpec":
        return cls.model_validate_json(text)


def _nested_model(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model inside an annotation such as `X`, `X | None` or `list[X]`."""
    stack = [annotation]
    while stack:
        current = stack.pop()
        if isinstance(current, type) and issubclass(current, BaseModel):
            return current
        stack.extend(getattr(current, "__args__", ()))
    return None


def _model_at(loc: tuple) -> type[BaseModel] | None:
    """The pydantic model that holds the key at `loc` (list indexes skipped)."""
    model: type[BaseModel] | None = ProjectSpec
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part)
        model = _nested_model(field.annotation) if field else None
        if model is None:
            return None
    return model


def _format_errors(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        where = ".".join(str(p) for p in e["loc"]) or "(top level)"
        message = e["msg"]
        if e["type"] == "extra_forbidden":
            model = _model_at(e["loc"])
            if model is not None:
                allowed = sorted(model.model_fields)
                close = difflib.get_close_matches(str(e["loc"][-1]), allowed, n=1)
                message += (f" (did you mean {close[0]!r}?)" if close else "") + f"; allowed keys: {allowed}"
        lines.append(f"  {where}: {message}")
    return "\n".join(lines)


def parse_spec(data: Any, source: str = "<config>") -> ProjectSpec:
    """Validates a mapping into a ProjectSpec; errors name `source` and every bad key."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level, got {type(data).__name__}")
    try:
        spec = ProjectSpec.model_validate(data)
        spec.check_blessable()
        spec.check_encoder_used()
    except ValidationError as err:
        raise ConfigError(f"{source}: invalid configuration\n{_format_errors(err)}") from None
    except ValueError as err:
        raise ConfigError(f"{source}: invalid configuration\n  {err}") from None
    return spec


EXTENDS_KEY = "extends"


def merge_config(base: Any, override: Any) -> Any:
    """`override` laid over `base`: mappings merge key by key, lists of named mappings (tasks,
    sources, members) merge entry by entry on `name`, anything else is replaced."""
    if isinstance(base, dict) and isinstance(override, dict):
        return {**base, **{k: merge_config(base[k], v) if k in base else v for k, v in override.items()}}
    if _named_list(base) and _named_list(override):
        merged = {entry["name"]: entry for entry in base}
        for entry in override:
            merged[entry["name"]] = merge_config(merged.get(entry["name"], {}), entry)
        return list(merged.values())
    return override


def _named_list(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, dict) and "name" in v for v in value)


def _read_yaml(path: Path, chain: tuple[Path, ...] = ()) -> Any:
    """The YAML at `path`, with any `extends: other.yaml` (relative to this file) merged underneath."""
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found"
                          + (f" (extended by {chain[-1]})" if chain else ""))
    if path in chain:
        raise ConfigError(f"{path}: 'extends' loops: {' -> '.join(map(str, chain + (path,)))}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(data, dict) or EXTENDS_KEY not in data:
        return data
    data = dict(data)
    base = _read_yaml((path.parent / str(data.pop(EXTENDS_KEY))).resolve(), chain + (path,))
    return merge_config(base, data)


def load_spec(path: Union[str, os.PathLike]) -> ProjectSpec:
    path = Path(path).resolve()
    return parse_spec(_read_yaml(path), str(path))
