"""Reads the configured sources, checks every row against the spec, and writes the CSV ExampleGen reads.

Bad input fails here, before any TFX work, with the file, row and column named. Text cells lose
their line breaks because CsvExampleGen reads one record per line.

Sources may carry only some feature columns and label only some tasks (`features` / `tasks` of a
SourceSpec): what a source does not carry is written empty, i.e. missing, so the union has one set
of columns. With more than one source every row also names its source in a `source` column, which
FusionExampleGen (components/fusion_example_gen.py) turns into a feature and uses for sampling.

A file without a header line is read with the source's `header` names. Every cell loses its surrounding
whitespace (so "a, b" separated files work); a cell empty after that is missing. Binary labels given as
strings become 0/1 through the task's `positive_values`.

With `training.split_seed` the rows are split here (`seeded_split`) into train/data.csv and
eval/data.csv, which CsvExampleGen reads as its two splits; otherwise ExampleGen hashes data.csv.
"""
from __future__ import annotations

import bz2
import csv
import dataclasses
import gzip
import lzma
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd

from models.spec import ProjectSpec, SourceSpec, TaskSpec, TaskType

PREPARED_FILE = "data.csv"
# With training.split_seed: PREPARED_FILE inside one folder per split, named like ExampleGen's splits.
SPLITS = ("train", "eval")
# Written only for multi-source specs; a single-source data.csv keeps exactly the spec's columns.
SOURCE_COLUMN = "source"
_SHOWN = 5  # offending rows quoted in an error message


class DataError(ValueError):
    """A data file does not match the configuration; the message names the file, row and column."""


@dataclasses.dataclass(frozen=True)
class PreparedData:
    # The file of all rows ExampleGen splits by hashing; None when the rows are split already (`splits`).
    csv: Path | None
    rows: int
    label_counts: dict[str, int]
    # source_name -> {"rows": n, "labels": {task: labelled rows}}, in the spec's source order.
    per_source: dict[str, dict] = dataclasses.field(default_factory=dict)
    # With training.split_seed: {"train": file, "eval": file} and their row counts; else empty.
    splits: dict[str, Path] = dataclasses.field(default_factory=dict)
    split_rows: dict[str, int] = dataclasses.field(default_factory=dict)

    @property
    def files(self) -> list[Path]:
        """Every file written: data.csv, or train/data.csv and eval/data.csv."""
        return [self.csv] if self.csv is not None else list(self.splits.values())


def _rows(mask: pd.Series) -> str:
    # A source's frame is indexed by row number in its file, counted from 1 with the header line as row 1.
    lines = mask.index[mask.to_numpy()][:_SHOWN]
    more = int(mask.sum()) - len(lines)
    return ", ".join(str(x) for x in lines) + (f" and {more} more" if more > 0 else "")


def seeded_split(n_rows: int, eval_percent: int, seed: int) -> np.ndarray:
    """is_eval[n_rows]: exactly round(n_rows * eval_percent / 100) rows (halves round up) are eval, chosen
    by a permutation from numpy's default_rng(seed). Row i is the i-th prepared row (sources in the
    spec's order, rows in file order), so a benchmark can reproduce the pipeline's split exactly."""
    n_eval = int(np.floor(n_rows * eval_percent / 100 + 0.5))
    is_eval = np.zeros(n_rows, dtype=bool)
    is_eval[np.random.default_rng(seed).permutation(n_rows)[:n_eval]] = True
    return is_eval


def _source_tasks(source: SourceSpec, spec: ProjectSpec) -> list[TaskSpec]:
    """The tasks this source labels: its `tasks`, or every task."""
    return [t for t in spec.tasks if source.tasks is None or t.name in source.tasks]


def _carried_columns(source: SourceSpec, spec: ProjectSpec) -> list[str]:
    """Prepared columns this source must have in its file: its features, then its tasks' labels."""
    features = [c for c in spec.features.all_columns() if source.features is None or c in source.features]
    return [*features, *sorted({t.label for t in _source_tasks(source, spec)})]


_OPENERS = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}


def _read_headerless(path: Path, header: list[str]) -> pd.DataFrame:
    """A file without a header line, read with `header`'s names: every row must have that many fields."""
    opener = _OPENERS.get(path.suffix.lower(), open)
    # utf-8-sig: exports from spreadsheets often start with a byte-order mark.
    with opener(path, "rt", encoding="utf-8-sig", newline="") as f:
        # skipinitialspace: "a, b" separators (the stripping in _read also removes trailing blanks).
        records = [r for r in csv.reader(f, skipinitialspace=True) if r]  # blank lines are skipped
    wrong = [(i + 1, len(r)) for i, r in enumerate(records) if len(r) != len(header)]
    if wrong:
        shown = ", ".join(f"row {row} has {n}" for row, n in wrong[:_SHOWN])
        more = f" and {len(wrong) - _SHOWN} more rows differ" if len(wrong) > _SHOWN else ""
        raise DataError(f"{path}: the source's 'header' names {len(header)} columns but {shown} fields{more} "
                        "(rows counted from 1; the file has no header line)")
    return pd.DataFrame(records, columns=header, dtype=object)


def _read(path: Path, source: SourceSpec, spec: ProjectSpec) -> pd.DataFrame:
    """The source's columns under the project's names; columns it does not carry are all missing.
    The frame is indexed by row number in the file (the header line, if any, is row 1)."""
    if not path.is_file():
        raise DataError(f"{path}: data file not found")
    try:
        if source.header is not None:
            frame = _read_headerless(path, source.header)
            frame.index = pd.RangeIndex(1, len(frame) + 1)
        else:
            # utf-8-sig: exports from spreadsheets often start with a byte-order mark, which would
            # otherwise become part of the first column's name.
            frame = pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""], encoding="utf-8-sig",
                                skipinitialspace=True)
            frame.columns = [str(c).strip() for c in frame.columns]
            frame.index = pd.RangeIndex(2, len(frame) + 2)
    except (pd.errors.ParserError, UnicodeDecodeError, csv.Error, OSError, EOFError) as err:
        raise DataError(f"{path}: not a readable CSV file: {err}") from None
    # The row id travels along only for a single source (several are unioned by FusionExampleGen).
    row_id = source.row_id_column if len(spec.sources) == 1 else None
    needed = _carried_columns(source, spec) + ([row_id] if row_id else [])
    mapped = {c: source.columns.get(c, c) for c in needed}
    absent = [f"{src!r}" + (f" (for {c!r})" if src != c else "") for c, src in mapped.items() if src not in frame]
    if absent:
        raise DataError(f"{path}: missing columns {', '.join(absent)}; the file has {list(frame.columns)}")
    carried = {c: _per_value(frame[mapped[c]], _strip) for c in needed}
    # Columns the source does not carry: object dtype, so the string cleaning below treats them like
    # an empty text column. (One DataFrame built at once: assigning columns one by one copies them.)
    empty = pd.Series(np.nan, index=frame.index, dtype=object)
    frame = pd.DataFrame({c: carried.get(c, empty) for c in [*spec.input_columns(), *([row_id] if row_id else [])]},
                         index=frame.index)
    if row_id:
        _check_row_ids(frame[row_id], row_id, path)
    return _blank_label_sentinels(frame, source, spec)


def _check_row_ids(ids: pd.Series, column: str, path: Path) -> None:
    """Row ids join the evaluation rows with other files: each row needs one, and its own."""
    bad = ids.isna() | ids.duplicated(keep=False)
    if bad.any():
        raise DataError(f"{path}: column {column!r} names rows (row_id) and must be filled and unique; rows "
                        f"{_rows(bad)} hold e.g. {ids[bad].iloc[0]!r}")


def _strip(value: str):
    return value.strip() or np.nan


_SPACES = re.compile(r"\s+")


def _collapse_spaces(value: str) -> str:
    return _SPACES.sub(" ", value)


def _per_value(values: pd.Series, fn) -> pd.Series:
    """`fn` of every present cell, computed once per distinct value (categories repeat a few values)."""
    codes, uniques = pd.factorize(values)
    results = np.array([*(fn(v) for v in uniques), np.nan], dtype=object)
    return pd.Series(results[codes], index=values.index, dtype=object)  # code -1 (missing) -> the NaN


def _blank_label_sentinels(frame: pd.DataFrame, source: SourceSpec, spec: ProjectSpec) -> pd.DataFrame:
    """Label cells holding one of `missing_label_values` (e.g. "N/A", "-1") become missing, so the
    label checks below neither refuse them nor train on them."""
    sentinels = {v.strip() for v in source.missing_label_values}
    if not sentinels:
        return frame
    for column in sorted({t.label for t in _source_tasks(source, spec)}):
        frame[column] = frame[column].mask(frame[column].str.strip().isin(sentinels))
    return frame


def _numeric(frame: pd.DataFrame, column: str, path: Path, hint: str = "") -> pd.Series:
    values = pd.to_numeric(frame[column], errors="coerce")
    bad = (values.isna() & frame[column].notna()) | ~np.isfinite(values.fillna(0.0))
    if bad.any():
        example = frame.loc[bad, column].iloc[0]
        raise DataError(f"{path}: column {column!r} expects finite numbers; rows {_rows(bad)} hold e.g. "
                        f"{example!r}{hint}")
    return values


def _label_values(frame: pd.DataFrame, task: TaskSpec, path: Path) -> pd.Series:
    """The label column as `task` reads it: class names, 0/1 or numbers; missing stays missing."""
    column = task.label
    if task.type == TaskType.MULTICLASS:
        values = frame[column].map(_normalise_class)
        bad = values.notna() & ~values.isin(task.classes)
        if bad.any():
            raise DataError(
                f"{path}: column {column!r} (task {task.name!r}) must be one of {task.classes}; "
                f"rows {_rows(bad)} hold e.g. {frame.loc[bad, column].iloc[0]!r}")
        return values
    if task.type == TaskType.BINARY and task.positive_values is not None:
        present = frame[column].notna()
        return frame[column].isin(task.positive_values).astype(float).where(present)
    if task.type == TaskType.BINARY:
        hint = f" (binary task {task.name!r}: for labels given as strings set the task's positive_values)"
        values = _numeric(frame, column, path, hint)
        bad = values.notna() & ~values.isin([0, 1])
        if bad.any():
            raise DataError(f"{path}: column {column!r} (binary task {task.name!r}) must be 0 or 1; "
                            f"rows {_rows(bad)} hold e.g. {frame.loc[bad, column].iloc[0]!r}")
        return values
    return _numeric(frame, column, path)


def _check_labels(frame: pd.DataFrame, spec: ProjectSpec, path: Path, source: SourceSpec) -> pd.DataFrame:
    # Tasks sharing a label column read it the same way (ProjectSpec checks that): it is converted once.
    converted: dict[str, pd.Series] = {}
    for task in spec.tasks:
        column = task.label
        if column not in converted:
            converted[column] = _label_values(frame, task, path)
        values = converted[column]
        if task.label_transform == "log1p" and (values < 0).any():
            bad = values < 0
            raise DataError(f"{path}: column {column!r} (task {task.name!r}, log1p) must be >= 0; "
                            f"rows {_rows(bad)} hold e.g. {frame.loc[bad, column].iloc[0]!r}")
    for column, values in converted.items():
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
    # Cells are stripped already (_read); line breaks and runs of blanks inside become one space.
    cleaned = {c: _per_value(frame[c], _collapse_spaces)
               for c in [*spec.features.text, *spec.features.categorical, *spec.features.ids]}
    cleaned.update({c: _numeric(frame, c, path) for c in spec.features.numeric})
    for column in spec.features.log1p:
        negative = cleaned[column] < 0
        if negative.any():
            raise DataError(f"{path}: column {column!r} is a log1p feature and must be >= 0; rows "
                            f"{_rows(negative)} hold e.g. {frame.loc[negative, column].iloc[0]!r}")
    frame = pd.DataFrame({c: cleaned.get(c, frame[c]) for c in frame.columns}, index=frame.index)
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
    """Validates and unions the sources (one file per SourceSpec, same order) into out_dir/data.csv, or
    with `training.split_seed` into out_dir/train/data.csv and out_dir/eval/data.csv (`seeded_split`).

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
    counts = {t.name: int(frame[t.label].notna().sum()) for t in spec.tasks}
    seed = spec.training.split_seed
    if seed is not None:
        # ProjectSpec allows split_seed only with one source.
        is_eval = seeded_split(len(frame), spec.training.eval_split_percent, seed)
        if is_eval.all() or not is_eval.any():
            raise DataError(f"{source_files[0]}: {len(frame)} rows are too few to hold out "
                            f"{spec.training.eval_split_percent}% for eval and still train on the rest")
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in out_dir.iterdir():
        shutil.rmtree(stale) if stale.is_dir() else stale.unlink()
    if seed is None:
        target = out_dir / PREPARED_FILE
        frame.to_csv(target, index=False)
        return PreparedData(target, len(frame), counts, per_source)
    splits, split_rows = {}, {}
    for split, rows in zip(SPLITS, (~is_eval, is_eval)):
        (out_dir / split).mkdir()
        splits[split] = out_dir / split / PREPARED_FILE
        frame[rows].to_csv(splits[split], index=False)
        split_rows[split] = int(rows.sum())
    return PreparedData(None, len(frame), counts, per_source, splits, split_rows)
