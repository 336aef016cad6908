"""Reads the configured sources, checks every row against the spec, and writes the CSV ExampleGen reads.

Bad input fails here, before any TFX work, with the file, row and column named. Text cells lose
their line breaks because CsvExampleGen reads one record per line.
"""
from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np
import pandas as pd

from models.spec import ProjectSpec, SourceSpec, TaskType

PREPARED_FILE = "data.csv"
_SHOWN = 5  # offending rows quoted in an error message


class DataError(ValueError):
    """A data file does not match the configuration; the message names the file, row and column."""


@dataclasses.dataclass(frozen=True)
class PreparedData:
    csv: Path
    rows: int
    label_counts: dict[str, int]


def _rows(mask: pd.Series) -> str:
    # +2: one for the header line, one because people count rows from 1.
    lines = (np.flatnonzero(mask.to_numpy()) + 2)[:_SHOWN]
    more = int(mask.sum()) - len(lines)
    return ", ".join(str(x) for x in lines) + (f" and {more} more" if more > 0 else "")


def _read(path: Path, source: SourceSpec, spec: ProjectSpec) -> pd.DataFrame:
    if not path.is_file():
        raise DataError(f"{path}: data file not found")
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""])
    except (pd.errors.ParserError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: not a readable CSV file: {err}") from None
    needed = spec.input_columns()
    mapped = {c: source.columns.get(c, c) for c in needed}
    absent = [f"{src!r}" + (f" (for {c!r})" if src != c else "") for c, src in mapped.items() if src not in frame]
    if absent:
        raise DataError(f"{path}: missing columns {', '.join(absent)}; the file has {list(frame.columns)}")
    return frame[[mapped[c] for c in needed]].set_axis(needed, axis=1)


def _numeric(frame: pd.DataFrame, column: str, path: Path) -> pd.Series:
    values = pd.to_numeric(frame[column], errors="coerce")
    bad = (values.isna() & frame[column].notna()) | ~np.isfinite(values.fillna(0.0))
    if bad.any():
        example = frame.loc[bad, column].iloc[0]
        raise DataError(f"{path}: column {column!r} expects finite numbers; rows {_rows(bad)} hold e.g. {example!r}")
    return values


def _check_labels(frame: pd.DataFrame, spec: ProjectSpec, path: Path) -> pd.DataFrame:
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
    unlabelled = frame[spec.label_columns()].isna().all(axis=1)
    if unlabelled.any():
        raise DataError(f"{path}: rows {_rows(unlabelled)} carry no label for any task "
                        f"({', '.join(spec.label_columns())}); remove them or label them")
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


def _clean(frame: pd.DataFrame, spec: ProjectSpec, path: Path) -> pd.DataFrame:
    for column in spec.features.text:
        frame[column] = frame[column].str.replace(r"\s+", " ", regex=True).str.strip()
    for column in spec.features.numeric:
        frame[column] = _numeric(frame, column, path)
    for column in [*spec.features.categorical, *spec.features.ids]:
        frame[column] = frame[column].str.replace(r"\s+", " ", regex=True)
    return _check_labels(frame, spec, path)


def _integral_to_int(frame: pd.DataFrame) -> pd.DataFrame:
    # Keeps 0/1 labels and counts as "1", not "1.0", in the CSV (and as INT in the inferred schema).
    for column in frame.columns:
        values = frame[column]
        present = values.dropna() if pd.api.types.is_float_dtype(values) else None
        # Beyond 2**53 a float no longer holds every integer exactly.
        if present is not None and np.all(np.mod(present, 1) == 0) and (present.abs() < 2**53).all():
            frame[column] = values.astype("Int64")
    return frame


def prepare(spec: ProjectSpec, source_files: list[Path], out_dir: Path) -> PreparedData:
    """Validates and unions the sources (one file per SourceSpec, same order) into out_dir/data.csv."""
    if len(source_files) != len(spec.sources):
        raise DataError(f"{len(source_files)} data files given for {len(spec.sources)} configured sources")
    frames = [_clean(_read(path, src, spec), spec, path) for path, src in zip(source_files, spec.sources)]
    frame = _integral_to_int(pd.concat(frames, ignore_index=True))
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in out_dir.iterdir():
        shutil.rmtree(stale) if stale.is_dir() else stale.unlink()
    target = out_dir / PREPARED_FILE
    frame.to_csv(target, index=False)
    counts = {t.name: int(frame[t.label].notna().sum()) for t in spec.tasks}
    return PreparedData(target, len(frame), counts)
