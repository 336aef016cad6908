"""FusionExampleGen: one `Examples` artifact from several sources with different columns and label sets.

CsvExampleGen infers every column's type from the cells it sees, so a column that one source never
fills, or fills only with integers, gets a type that differs between runs and sources. This
component types every column from the ProjectSpec instead, leaves missing cells out of the
tf.Example (absent = missing to TFDV, Transform and the label masks), adds the row's `source`,
splits train/eval deterministically by hash, and repeats or subsamples each source's TRAINING rows
by its `sampling_weight` (evaluation always sees every row once, so metrics stay unbiased).

The output has exactly CsvExampleGen's layout (`Split-train/*.gz`, `Split-eval/*.gz`, gzipped
TFRecords of tf.Example, written by TFX's own WriteSplit), so StatisticsGen, SchemaGen, Transform,
Trainer and Evaluator read it unchanged. `fusion_stats.json` next to the splits records examples
and labels per split, source and task after sampling.
"""

import csv
import enum
import hashlib
import json
import logging
import math
import os
from typing import Iterable, Optional

import apache_beam as beam
import tensorflow as tf
from tfx import v1 as tfx
from tfx.components.example_gen import write_split
from tfx.components.util import examples_utils
from tfx.proto import example_gen_pb2
from tfx.types import artifact_utils
from tfx_bsl.coders import csv_decoder

from models.spec import ProjectSpec, TaskType
from pipeline.data_prep import PREPARED_FILE, SOURCE_COLUMN

TRAIN, EVAL = "train", "eval"
SPLITS = (TRAIN, EVAL)
FUSION_STATS_FILE = "fusion_stats.json"
_BUCKETS = 100  # eval_split_percent is a whole percentage
_SAMPLING_SALT = b"fusion-sampling\x00"  # keeps the sampling draw independent of the split hash


class FusionDataError(ValueError):
    """The prepared CSV does not match the spec (it was not written by data_prep for this config)."""


class Kind(str, enum.Enum):
    """The tf.Example value list a column is written to."""

    BYTES = "bytes"
    FLOAT = "float"
    INT = "int"


def column_kinds(spec: ProjectSpec) -> dict[str, Kind]:
    """Every prepared column's tf.Example type, from the spec alone (never from the cells, so the
    types are the same whichever sources or rows a run sees)."""
    kinds = {c: Kind.BYTES for c in [*spec.features.text, *spec.features.categorical, *spec.features.ids]}
    kinds.update({c: Kind.FLOAT for c in spec.features.numeric})
    by_type = {TaskType.BINARY: Kind.INT, TaskType.MULTICLASS: Kind.BYTES, TaskType.REGRESSION: Kind.FLOAT}
    for task in spec.tasks:
        kinds[task.label] = by_type[task.type]
    kinds[SOURCE_COLUMN] = Kind.BYTES
    return kinds


def _hash_unit(key: bytes) -> float:
    """A deterministic draw in [0, 1) from a key (the same on every worker and every run)."""
    return int.from_bytes(hashlib.sha256(key).digest()[:8], "big") / 2.0**64


def assign_split(key: bytes, eval_percent: int) -> str:
    """`eval` for eval_percent of the hash buckets, like CsvExampleGen's hash_buckets (train first)."""
    bucket = int(hashlib.sha256(key).hexdigest(), 16) % _BUCKETS
    return EVAL if bucket >= _BUCKETS - eval_percent else TRAIN


def sampled_copies(key: bytes, weight: float) -> int:
    """How often a training row is emitted: floor(w), plus one with probability frac(w)."""
    whole = math.floor(weight)
    return whole + int(_hash_unit(_SAMPLING_SALT + key) < weight - whole)


def _feature(kind: Kind, cell: bytes, column: str) -> tf.train.Feature:
    try:
        if kind == Kind.BYTES:
            return tf.train.Feature(bytes_list=tf.train.BytesList(value=[cell]))
        if kind == Kind.FLOAT:
            return tf.train.Feature(float_list=tf.train.FloatList(value=[float(cell)]))
        number = float(cell)
        if not number.is_integer():
            raise ValueError
        return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(number)]))
    except ValueError:
        raise FusionDataError(f"column {column!r} expects {kind.value} values, got {cell!r}") from None


def to_example(cells: list[bytes], header: list[str], kinds: dict[str, Kind]) -> tf.train.Example:
    """One prepared row as a tf.Example; empty cells are left out (absent = missing)."""
    feature = {column: _feature(kinds[column], cell, column) for column, cell in zip(header, cells) if cell}
    return tf.train.Example(features=tf.train.Features(feature=feature))


# (source name, names of the tasks the row labels, serialized tf.Example): serialized once, so the
# copies of an oversampled row and the hops between Beam workers carry bytes.
FusedRow = tuple[str, tuple[str, ...], bytes]


class _FuseRows(beam.DoFn):
    """Parsed CSV row -> tf.Example, tagged with its split; train rows repeated by their source's weight."""

    def __init__(self, csv_path: str, header: list[str], spec: ProjectSpec):
        self._csv_path = csv_path
        self._header = header
        self._kinds = column_kinds(spec)
        self._tasks = [(t.name, t.label) for t in spec.tasks]
        self._weights = {s.source_name: s.sampling_weight for s in spec.sources}
        split_by = spec.training.eval_split_by
        self._split_by = header.index(split_by) if split_by else None
        self._source = header.index(SOURCE_COLUMN)
        self._eval_percent = spec.training.eval_split_percent

    def _split_key(self, cells: list[bytes], line: str) -> bytes:
        # A row without a value in the split column is split by its whole content instead.
        if self._split_by is not None and cells[self._split_by]:
            return cells[self._split_by]
        return line.encode("utf-8")

    def process(self, parsed: tuple[list[bytes], str]):  # yields TaggedOutput(split, FusedRow)
        cells, line = parsed
        if len(cells) != len(self._header):
            raise FusionDataError(f"{self._csv_path}: a row has {len(cells)} cells, the header "
                                  f"{len(self._header)}: {line[:200]!r}")
        source = cells[self._source].decode("utf-8")
        if source not in self._weights:
            raise FusionDataError(f"{self._csv_path}: {SOURCE_COLUMN!r} {source!r} is not a configured source "
                                  f"{sorted(self._weights)}: {line[:200]!r}")
        try:
            example = to_example(cells, self._header, self._kinds)
        except FusionDataError as err:
            raise FusionDataError(f"{self._csv_path}: {err} in row {line[:200]!r}") from None
        present = example.features.feature
        row = (source, tuple(name for name, label in self._tasks if label in present), example.SerializeToString())
        split = assign_split(self._split_key(cells, line), self._eval_percent)
        copies = sampled_copies(line.encode("utf-8"), self._weights[source]) if split == TRAIN else 1
        for _ in range(copies):
            yield beam.pvalue.TaggedOutput(split, row)


def read_header(csv_path: str, spec: ProjectSpec) -> list[str]:
    """The prepared CSV's columns, checked against the spec: exactly its columns plus `source`."""
    if not tf.io.gfile.exists(csv_path):
        raise FusionDataError(f"{csv_path}: prepared data not found (pipeline.data_prep writes it)")
    with tf.io.gfile.GFile(csv_path) as f:
        header = next(csv.reader([f.readline()]), [])
    expected = [*spec.input_columns(), SOURCE_COLUMN]
    missing, extra = [c for c in expected if c not in header], [c for c in header if c not in expected]
    if missing or extra or len(set(header)) != len(header):
        raise FusionDataError(f"{csv_path}: columns {header} do not match the config's {expected} "
                              f"(missing {missing}, unexpected {extra}); prepare the data with this config")
    return header


def _count_keys(row: FusedRow, split: str) -> Iterable[tuple[str, str, str]]:
    source, labelled_tasks, _ = row
    yield split, source, ""  # "" counts examples
    for task in labelled_tasks:
        yield split, source, task


def _stats(counts: list[tuple[tuple[str, str, str], int]], weights: dict[str, float], tasks: list[str]) -> dict:
    """{"sampling_weights", "splits": {split: {"examples", "sources": {source: {"examples", "labels"}}}}},
    with zeros for every split, source and task that got nothing (so an empty one is visible)."""
    found = dict(counts)
    splits = {}
    for split in SPLITS:
        sources = {
            source: {
                "examples": found.get((split, source, ""), 0),
                "labels": {task: found.get((split, source, task), 0) for task in tasks},
            }
            for source in weights
        }
        splits[split] = {"examples": sum(v["examples"] for v in sources.values()), "sources": sources}
    return {"sampling_weights": dict(weights), "splits": splits}


def fuse_examples(pipeline: beam.Pipeline, csv_path: str, spec: ProjectSpec,
                  split_dirs: dict[str, str], stats_path: str) -> None:
    """Adds the fusion to `pipeline`: reads the prepared CSV, writes each split to split_dirs[split]
    with TFX's WriteSplit, and the counts to stats_path. Runs when the pipeline runs."""
    header = read_header(csv_path, spec)
    weights = {s.source_name: s.sampling_weight for s in spec.sources}
    tasks = [t.name for t in spec.tasks]
    fused = (
        pipeline
        | "ReadPrepared" >> beam.io.ReadFromText(csv_path, skip_header_lines=1)
        | "ParseCSV" >> beam.ParDo(csv_decoder.ParseCSVLine(delimiter=","))
        | "Fuse" >> beam.ParDo(_FuseRows(csv_path, header, spec)).with_outputs(*SPLITS)
    )
    counted = []
    for split in SPLITS:
        rows = fused[split]
        _ = (rows
             | f"Examples[{split}]" >> beam.Map(lambda row: row[2])
             | f"WriteSplit[{split}]" >> write_split.WriteSplit(split_dirs[split], example_gen_pb2.FORMAT_TFRECORDS_GZIP))
        counted.append(rows | f"CountKeys[{split}]" >> beam.FlatMap(_count_keys, split))
    _ = (counted
         | "AllCounts" >> beam.Flatten()
         | "Count" >> beam.combiners.Count.PerElement()
         | "Gather" >> beam.combiners.ToList()
         | "Stats" >> beam.Map(lambda counts: json.dumps(_stats(counts, weights, tasks), indent=2))
         | "WriteStats" >> beam.io.WriteToText(stats_path, shard_name_template=""))


def format_stats(stats: dict) -> str:
    """A fixed-width table: one line per split and source, examples and labels per task."""
    sources = stats["splits"][TRAIN]["sources"]
    tasks = list(next(iter(sources.values()))["labels"]) if sources else []
    width = max(len("source"), *(len(name) for name in sources))
    head = f"{'split':5s}  {'source':{width}s}  {'weight':>6s}  {'examples':>8s}  " + "  ".join(f"{t:>10s}" for t in tasks)
    lines = [head]
    for split in SPLITS:
        for name, counts in stats["splits"][split]["sources"].items():
            weight = stats["sampling_weights"][name] if split == TRAIN else 1.0
            lines.append(f"{split:5s}  {name:{width}s}  {weight:6.2f}  {counts['examples']:8d}  "
                         + "  ".join(f"{counts['labels'][t]:10d}" for t in tasks))
    return "\n".join(lines)


def check_stats(stats: dict, csv_path: str) -> None:
    """An empty split would fail much later (Trainer or Evaluator) with an obscure message."""
    empty = [split for split in SPLITS if stats["splits"][split]["examples"] == 0]
    if empty:
        raise FusionDataError(f"{csv_path}: split(s) {empty} got no examples; add rows, change "
                              f"training.eval_split_percent or raise sampling weights")
    for split in SPLITS:
        for name, counts in stats["splits"][split]["sources"].items():
            if counts["examples"] == 0:
                logging.warning("FusionExampleGen: source %r has no %s examples", name, split)


def read_stats(examples_uri: str) -> Optional[dict]:
    """The fusion stats of an Examples artifact, or None for one CsvExampleGen wrote."""
    path = os.path.join(examples_uri, FUSION_STATS_FILE)
    if not tf.io.gfile.exists(path):
        return None
    with tf.io.gfile.GFile(path) as f:
        return json.load(f)


@tfx.dsl.components.component(use_beam=True)
def FusionExampleGen(
    examples: tfx.dsl.components.OutputArtifact[tfx.types.standard_artifacts.Examples],
    input_base: tfx.dsl.components.Parameter[str],
    spec_json: tfx.dsl.components.Parameter[str],
    beam_pipeline: tfx.dsl.components.BeamComponentParameter[beam.Pipeline] = None,
) -> None:
    """Reads input_base/data.csv (prepared by pipeline.data_prep for a multi-source spec) into
    train/eval tf.Examples typed by the spec, with per-source training sampling weights."""
    spec = ProjectSpec.from_json(spec_json)
    csv_path = os.path.join(input_base, PREPARED_FILE)
    examples.split_names = artifact_utils.encode_split_names(list(SPLITS))
    examples.span = 0
    split_dirs = {split: artifact_utils.get_split_uri([examples], split) for split in SPLITS}
    stats_path = os.path.join(examples.uri, FUSION_STATS_FILE)
    with beam_pipeline as pipeline:
        fuse_examples(pipeline, csv_path, spec, split_dirs, stats_path)
    examples_utils.set_payload_format(examples, example_gen_pb2.PayloadFormat.FORMAT_TF_EXAMPLE)
    examples_utils.set_file_format(examples, write_split.to_file_format_str(example_gen_pb2.FORMAT_TFRECORDS_GZIP))
    stats = read_stats(examples.uri)
    logging.info("FusionExampleGen: examples per split, source and labelled task (train after sampling)\n%s",
                 format_stats(stats))
    check_stats(stats, csv_path)
