"""Reads the configured sources, checks every row against the spec, and writes the CSV ExampleGen reads.

Bad input fails here, before any TFX work, with the file, row and column named. Text cells lose
their line breaks because CsvExampleGen reads one record per line.

Sources may carry only some feature columns and label only some tasks (`features` / `tasks` of a
SourceSpec): what a source does not carry is written empty, i.e. missing, so the union has one set
of columns. With more than one source every row also names its source in a `source` column, which
FusionExampleGen (components/fusion_example_gen.py) turns into a feature and uses for sampling.
"""
from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np
import pandas as pd

from models.spec import ProjectSpec, SourceSpec, TaskSpec, TaskType

PREPARED_FILE = "data.csv"
# Written only for multi-source specs; a single-source data.csv keeps exactly the spec's columns.
SOURCE_COLUMN = "source"
_SHOWN = 5  # offending rows quoted in an error message


class DataError(ValueError):
    """A data file does not match the configuration; the message names the file, row and column."""


@dataclasses.dataclass(frozen=True)
class PreparedData:
    csv: Path
    rows: int
    label_counts: dict[str, int]
    # source_name -> {"rows": n, "labels": {task: labelled rows}}, in the spec's source order.
    per_source: dict[str, dict] = dataclasses.field(default_factory=dict)


def _rows(mask: pd.Series) -> str:
    # +2: one for the header line, one because people count rows from 1.
    lines = (np.flatnonzero(mask.to_numpy()) + 2)[:_SHOWN]
    more = int(mask.sum()) - len(lines)
    return ", ".join(str(x) for x in lines) + (f" and {more} more" if more > 0 else "")


def _source_tasks(source: SourceSpec, spec: ProjectSpec) -> list[TaskSpec]:
    """The tasks this source labels: its `tasks`, or every task."""
    return [t for t in spec.tasks if source.tasks is None or t.name in source.tasks]


def _carried_columns(source: SourceSpec, spec: ProjectSpec) -> list[str]:
    """Prepared columns this source must have in its file: its features, then its tasks' labels."""
    features = [c for c in spec.features.all_columns() if source.features is None or c in source.features]
    return [*features, *sorted({t.label for t in _source_tasks(source, spec)})]


def _read(path: Path, source: SourceSpec, spec: ProjectSpec) -> pd.DataFrame:
    """The source's columns under the project's names; columns it does not carry are all missing."""
    if not path.is_file():
        raise DataError(f"{path}: data file not found")
    try:
        # utf-8-sig: exports from spreadsheets often start with a byte-order mark, which would
        # otherwise become part of the first column's name.
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""], encoding="utf-8-sig")
    except (pd.errors.ParserError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: not a readable CSV file: {err}") from None
    needed = _carried_columns(source, spec)
    mapped = {c: source.columns.get(c, c) for c in needed}
    absent = [f"{src!r}" + (f" (for {c!r})" if src != c else "") for c, src in mapped.items() if src not in frame]
    if absent:
        raise DataError(f"{path}: missing columns {', '.join(absent)}; the file has {list(frame.columns)}")
    frame = frame[[mapped[c] for c in needed]].set_axis(needed, axis=1)
    for column in spec.input_columns():
        if column not in frame:
            # object dtype, so the string cleaning below treats it like an empty text column
            frame[column] = pd.Series(np.nan, index=frame.index, dtype=object)
    return _blank_label_sentinels(frame[spec.input_columns()].copy(), source, spec)


def _blank_label_sentinels(frame: pd.DataFrame, source: SourceSpec, spec: ProjectSpec) -> pd.DataFrame:
    """Label cells holding one of `missing_label_values` (e.g. "N/A", "-1") become missing, so the
    label checks below neither refuse them nor train on them."""
    sentinels = {v.strip() for v in source.missing_label_values}
    if not sentinels:
        return frame
    for column in sorted({t.label for t in _source_tasks(source, spec)}):
        frame[column] = frame[column].mask(frame[column].str.strip().isin(sentinels))
    return frame


def _numeric(frame: pd.DataFrame, column: str, path: Path) -> pd.Series:
    values = pd.to_numeric(frame[column], errors="coerce")
    bad = (values.isna() & frame[column].notna()) | ~np.isfinite(values.fillna(0.0))
    if bad.any():
        example = frame.loc[bad, column].iloc[0]
        raise DataError(f"{path}: column {column!r} expects finite numbers; rows {_rows(bad)} hold e.g. {example!r}")
    return values


def _check_labels(frame: pd.DataFrame, spec: ProjectSpec, path: Path, source: SourceSpec) -> pd.DataFrame:
    for task in spec.tasks:
        column = task.label
        if task.type == TaskType.MULTICLASS:
            values = frame[column].map(_normalise_class)
            bad = values.notna() & ~values.isin(task.classes)
            if bad.any():
                raise DataError(
                    f"{path}: column {column!r} (task {task.name!r}) must be one of {task.classes}; "
                    f"rows {_rows(bad)} hold e.g. {frame.loc[bad, column].iloc[0]!r}")
            frame[column] = values
            continue
        values = _numeric(frame, column, path)
        if task.type == TaskType.BINARY:
            bad = values.notna() & ~values.isin([0, 1])
            if bad.any():
                raise DataError(f"{path}: column {column!r} (binary task {task.name!r}) must be 0 or 1; "
                                f"rows {_rows(bad)} hold e.g. {frame.loc[bad, column].iloc[0]!r}")
        if task.label_transform == "log1p" and (values < 0).any():
            bad = values < 0
            raise DataError(f"{path}: column {column!r} (task {task.name!r}, log1p) must be >= 0; "
                            f"rows {_rows(bad)} hold e.g. {frame.loc[bad, column].iloc[0]!r}")
        frame[column] = values
    labels = sorted({t.label for t in _source_tasks(source, spec)})
    unlabelled = frame[labels].isna().all(axis=1)
    if unlabelled.any():
        raise DataError(f"{path}: rows {_rows(unlabelled)} carry no label for any task "
                        f"({', '.join(labels)}); remove them or label them")
    return frame


def _normalise_class(value):
    # "5", "5.0" and 5 name the same class.
    if not isinstance(value, str):
        return value
    try:
        number = float(value)
    except ValueError:
        return value
    return str(int(number)) if number.is_integer() else value


def _clean(frame: pd.DataFrame, spec: ProjectSpec, path: Path, source: SourceSpec) -> pd.DataFrame:
    for column in spec.features.text:
        frame[column] = frame[column].str.replace(r"\s+", " ", regex=True).str.strip()
    for column in spec.features.numeric:
        frame[column] = _numeric(frame, column, path)
    for column in [*spec.features.categorical, *spec.features.ids]:
        frame[column] = frame[column].str.replace(r"\s+", " ", regex=True)
    return _check_labels(frame, spec, path, source)


def _integral_to_int(frame: pd.DataFrame) -> pd.DataFrame:
    # Keeps 0/1 labels and counts as "1", not "1.0", in the CSV (and as INT in the inferred schema).
    for column in frame.columns:
        values = frame[column]
        present = values.dropna() if pd.api.types.is_float_dtype(values) else None
        # Beyond 2**53 a float no longer holds every integer exactly.
        if present is not None and np.all(np.mod(present, 1) == 0) and (present.abs() < 2**53).all():
            frame[column] = values.astype("Int64")
    return frame


def _source_counts(frame: pd.DataFrame, spec: ProjectSpec) -> dict:
    return {"rows": len(frame), "labels": {t.name: int(frame[t.label].notna().sum()) for t in spec.tasks}}


def prepare(spec: ProjectSpec, source_files: list[Path], out_dir: Path) -> PreparedData:
    """Validates and unions the sources (one file per SourceSpec, same order) into out_dir/data.csv.

    With several sources each row is tagged with its source's name in a `source` column.
    """
    if len(source_files) != len(spec.sources):
        raise DataError(f"{len(source_files)} data files given for {len(spec.sources)} configured sources")
    multi = len(spec.sources) > 1
    if multi and SOURCE_COLUMN in spec.input_columns():
        raise DataError(f"column name {SOURCE_COLUMN!r} is reserved for the source of each row when a config "
                        f"has several sources; rename that feature or label")
    frames, per_source = [], {}
    for path, source in zip(source_files, spec.sources):
        frame = _clean(_read(path, source, spec), spec, path, source)
        per_source[source.source_name] = _source_counts(frame, spec)
        if multi:
            frame[SOURCE_COLUMN] = source.source_name
        frames.append(frame)
    frame = _integral_to_int(pd.concat(frames, ignore_index=True))
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in out_dir.iterdir():
        shutil.rmtree(stale) if stale.is_dir() else stale.unlink()
    target = out_dir / PREPARED_FILE
    frame.to_csv(target, index=False)
    counts = {t.name: int(frame[t.label].notna().sum()) for t in spec.tasks}
    return PreparedData(target, len(frame), counts, per_source)
