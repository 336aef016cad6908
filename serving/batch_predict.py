"""`commerce-mtl batch-predict`: offline scoring of CSV or TFRecord files with an exported SavedModel.

A Beam pipeline (DirectRunner unless `--beam-arg` says otherwise):

    MatchFiles(GLOB) -> ReadMatches -> read each file whole (csv module / TFRecord reader)
        -> rows as serialized tf.Examples, keyed by (source, row)   |  unreadable rows -> dead letter
        -> tfx_bsl RunInference(serving_default)                      -> OUTPUT/predictions-*.jsonl
                                                                      -> OUTPUT/dead_letter-*.jsonl

Every row read ends up in exactly one of the two outputs; `run_batch_predict` checks
rows read == predicted + dead-lettered and raises otherwise.

RunInference choice: `tfx_bsl.public.beam.RunInference` with a `SavedModelSpec`. For a signature whose
method is `tensorflow/serving/predict` (our `serving_default`) tfx_bsl picks its predict handler,
which fetches *every* output alias of the signature in one session run and returns a PredictLog
holding all of them per example, so a multi-output (one per task) signature is supported as is;
no custom ModelHandler is needed. It loads the SavedModel once per worker (beam.Shared) and
imports `tensorflow_text` before loading, which registers the WordPiece ops the in-graph Transform
uses. It fails a whole batch on an input `tf.io.parse_example` rejects, so rows are validated
against the model's raw feature description before they reach it (bad ones go to the dead letter).
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import json
import logging
import math
import os
import sys
from typing import Iterable, Iterator, Sequence, Tuple

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import apache_beam as beam  # noqa: E402
import tensorflow as tf  # noqa: E402
from apache_beam.io import fileio  # noqa: E402
from apache_beam.io.filesystem import CompressionTypes  # noqa: E402
from apache_beam.io.filesystems import FileSystems  # noqa: E402
from apache_beam.metrics import Metrics  # noqa: E402
from apache_beam.metrics.metric import MetricsFilter  # noqa: E402
from apache_beam.options.pipeline_options import PipelineOptions  # noqa: E402
from google.protobuf.message import DecodeError  # noqa: E402

from serving.examples import load_raw_features, to_example  # noqa: E402
from serving.manager import discover_versions  # noqa: E402

PROG = "commerce-mtl batch-predict"
SIGNATURE = "serving_default"
PREDICTIONS_PREFIX = "predictions"
DEAD_LETTER_PREFIX = "dead_letter"
SUFFIX = ".jsonl"
FORMATS = ("csv", "tfrecord")
DEFAULT_MAX_BATCH_SIZE = 256
METRICS_NAMESPACE = "commerce_mtl.batch_predict"
ROWS_READ = "rows_read"
_DEAD = "dead"
_RESERVED_KEYS = ("source", "row")
# How each raw dtype is stored in a tf.train.Feature.
_KIND_OF_DTYPE = {"string": "bytes_list", "int64": "int64_list", "float32": "float_list"}
_TFRECORD_EXTENSIONS = (".tfrecord", ".tfrecords", ".tfr")


class BatchPredictError(Exception):
    """A problem with the request: model, input or output directory."""


class RowCountMismatch(BatchPredictError):
    """Rows read != predicted + dead-lettered: some row was lost or duplicated."""


@dataclasses.dataclass(frozen=True)
class BatchPredictResult:
    model_dir: str
    output_dir: str
    rows_read: int
    predicted: int
    dead_lettered: int
    prediction_files: list[str]
    dead_letter_files: list[str]

    def summary(self) -> str:
        return f"read {self.rows_read} rows: {self.predicted} predicted, {self.dead_lettered} dead-lettered"


# ----------------------------------------------------------------------------------------- inputs

def input_format(path: str, forced: str | None = None) -> str:
    """`forced` if given, else "tfrecord" for *.tfrecord[s] / *.tfr (optionally .gz), else "csv"."""
    if forced:
        return forced
    name = path.lower()
    for compressed in (".gz", ".gzip"):
        if name.endswith(compressed):
            name = name[: -len(compressed)]
    return "tfrecord" if name.endswith(_TFRECORD_EXTENSIONS) else "csv"


def _dead(source: str, row: int, error: str):
    return beam.pvalue.TaggedOutput(_DEAD, {"source": source, "row": row, "error": error})


def check_example(serialized: bytes, raw_features: dict[str, str]) -> str | None:
    """Why `serving_default` would reject this record (None if it would not): `tf.io.parse_example`
    fails the whole batch on a non-Example, a feature of the wrong kind, or (for the model's
    one-value features) several values."""
    try:
        example = tf.train.Example.FromString(serialized)
    except DecodeError as err:
        return f"not a serialized tf.Example: {err}"
    features = example.features.feature
    for column, dtype in raw_features.items():
        if column not in features:
            continue
        kind = features[column].WhichOneof("kind")
        if kind is None:
            continue
        want = _KIND_OF_DTYPE.get(dtype)
        if want is not None and kind != want:
            return f"feature {column!r} is a {kind}, the model reads {dtype} ({want})"
        count = len(getattr(features[column], kind).value)
        if count > 1:
            return f"feature {column!r} has {count} values, the model reads at most one"
    return None


def _read_all(readable_file: fileio.ReadableFile, chunk: int = 1 << 20) -> bytes:
    # In chunks: Beam's CompressedFile (.gz) cannot read() to the end in one call.
    parts = []
    with readable_file.open(mime_type="application/octet-stream") as f:
        while True:
            part = f.read(chunk)
            if not part:
                return b"".join(parts)
            parts.append(part)


class ReadRows(beam.DoFn):
    """One matched file -> ((source, row), serialized tf.Example) per row, and a dead-letter record
    for each row that cannot become a valid Example. Rows are numbered from 1 (for CSV: data rows
    after the header; for TFRecord: records); row 0 stands for a file that cannot be read at all."""

    def __init__(self, raw_features: dict[str, str], forced_format: str | None):
        self._raw_features = raw_features
        self._forced = forced_format
        self._rows_read = Metrics.counter(METRICS_NAMESPACE, ROWS_READ)

    def process(self, readable_file: fileio.ReadableFile):
        path = readable_file.metadata.path
        if input_format(path, self._forced) == "tfrecord":
            rows = self._tfrecord_rows(path)
        else:
            rows = self._csv_rows(path, readable_file)
        for out in rows:
            self._rows_read.inc()
            yield out

    # -- CSV: read whole, so quoted cells may span lines.
    def _csv_rows(self, path: str, readable_file: fileio.ReadableFile) -> Iterator:
        try:
            # Decompressed (e.g. .csv.gz) by extension; utf-8-sig drops a BOM.
            text = _read_all(readable_file).decode("utf-8-sig")
            reader = csv.reader(io.StringIO(text, newline=""))
            header = next(reader, None)
        except (OSError, UnicodeDecodeError, csv.Error) as err:
            yield _dead(path, 0, f"cannot read the file as UTF-8 CSV: {err}")
            return
        if header is None:
            logging.warning("%s: empty file, no header and no rows", path)
            return
        header_error = self._header_error(header)
        row = 0
        while True:
            try:
                record = next(reader)
            except StopIteration:
                break
            except csv.Error as err:
                row += 1
                yield _dead(path, row, f"unreadable CSV from line {reader.line_num}, rest of the file skipped: {err}")
                break
            if not record:  # a blank line is not a row
                continue
            row += 1
            where = f"{path} row {row} (line {reader.line_num})"
            if header_error:
                yield _dead(path, row, f"{where}: {header_error}")
            elif len(record) != len(header):
                yield _dead(path, row, f"{where}: {len(record)} cells, the header has {len(header)} columns")
            else:
                try:
                    example = to_example(dict(zip(header, record)), self._raw_features, where)
                except Exception as err:  # noqa: BLE001  (every failure is reported, none is fatal)
                    yield _dead(path, row, str(err) if isinstance(err, ValueError) else f"{where}: {err!r}")
                    continue
                # Yielded outside the try: a downstream failure must not pass for a bad row.
                yield (path, row), example

    def _header_error(self, header: list[str]) -> str | None:
        missing = [c for c in self._raw_features if c not in header]
        if missing:
            return f"the header lacks the model's feature column(s) {missing}"
        repeated = sorted({c for c in self._raw_features if header.count(c) > 1})
        if repeated:
            return f"the header repeats the feature column(s) {repeated}"
        return None

    # -- TFRecord: records that do not parse (or that the model would reject) are dead-lettered.
    def _tfrecord_rows(self, path: str) -> Iterator:
        compression = "GZIP" if path.lower().endswith((".gz", ".gzip")) else ""
        records = iter(tf.data.TFRecordDataset(path, compression_type=compression).as_numpy_iterator())
        row = 0
        while True:
            row += 1
            try:
                record = next(records)
            except StopIteration:
                return
            except tf.errors.OpError as err:  # DataLossError for a corrupt or truncated record
                yield _dead(path, row, f"{path} record {row}: corrupt TFRecord data, rest of the file skipped: "
                                       f"{err.message}")
                return
            problem = check_example(record, self._raw_features)
            if problem:
                yield _dead(path, row, f"{path} record {row}: {problem}")
            else:
                yield (path, row), record


# ------------------------------------------------------------------------------------------ outputs

def _json_value(value):
    """`ndarray.tolist()` output: scalar for binary / regression, list for multiclass; non-finite
    floats become null (JSON has no NaN)."""
    if isinstance(value, list):
        return [_json_value(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def prediction_record(keyed_log) -> dict:
    (source, row), log = keyed_log
    record = {"source": source, "row": row}
    outputs = log.predict_log.response.outputs
    for name in sorted(outputs):
        if name in _RESERVED_KEYS:
            raise ValueError(f"the model has an output named {name!r}, which the prediction record uses itself")
        # tfx_bsl splits each output per example into a tensor of shape [1, ...].
        record[name] = _json_value(tf.make_ndarray(outputs[name])[0].tolist())
    return record


def _glob(pattern: str) -> list[str]:
    return sorted(m.path for r in FileSystems.match([pattern]) for m in r.metadata_list)


def _count_lines(paths: Iterable[str]) -> int:
    total = 0
    for path in paths:
        with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
            total += sum(1 for line in f if line.strip())
    return total


def _rows_read(result) -> int | None:
    metrics = result.metrics().query(MetricsFilter().with_namespace(METRICS_NAMESPACE).with_name(ROWS_READ))
    counters = metrics["counters"]
    if not counters:
        return 0  # a counter never incremented is not reported: nothing was read
    committed = [c.committed for c in counters if c.committed is not None]
    if committed:
        return sum(committed)
    attempted = [c.attempted for c in counters if c.attempted is not None]
    return sum(attempted) if attempted else None


def resolve_model_dir(model_dir: str) -> str:
    """A SavedModel directory, or a Pusher's base directory: then its newest numeric version."""
    if tf.io.gfile.exists(os.path.join(model_dir, "saved_model.pb")):
        return model_dir
    versions = discover_versions(model_dir)
    if versions:
        return versions[max(versions)]
    raise BatchPredictError(f"--model-dir {model_dir}: no saved_model.pb there nor in a numbered version below it")


def run_batch_predict(
    model_dir: str,
    input_pattern: str,
    output_dir: str,
    beam_args: Sequence[str] | None = None,
    input_format_name: str | None = None,
    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
) -> BatchPredictResult:
    """Scores every row of the files matching `input_pattern`; see the module docstring."""
    from tfx_bsl.public.beam import RunInference
    from tfx_bsl.public.proto import model_spec_pb2

    if input_format_name is not None and input_format_name not in FORMATS:
        raise BatchPredictError(f"format {input_format_name!r}: expected one of {FORMATS}")
    model_dir = resolve_model_dir(model_dir)
    try:
        raw_features = load_raw_features(model_dir)
    except FileNotFoundError as err:
        raise BatchPredictError(str(err)) from None
    files = _glob(input_pattern)
    if not files:
        raise BatchPredictError(f"--input {input_pattern}: no file matches")
    stale = _glob(os.path.join(output_dir, f"{PREDICTIONS_PREFIX}-*")) + _glob(
        os.path.join(output_dir, f"{DEAD_LETTER_PREFIX}-*"))
    if stale:
        raise BatchPredictError(f"--output {output_dir} already holds results ({stale[0]}, ...); "
                                "remove them or choose another directory")
    tf.io.gfile.makedirs(output_dir)

    spec = model_spec_pb2.InferenceSpecType(
        saved_model_spec=model_spec_pb2.SavedModelSpec(model_path=model_dir, signature_name=[SIGNATURE]),
        batch_parameters=model_spec_pb2.BatchParameters(max_batch_size=max_batch_size),
    )
    logging.info("batch-predict: %d file(s) matching %s with %s -> %s", len(files), input_pattern, model_dir,
                 output_dir)
    pipeline = beam.Pipeline(options=PipelineOptions(list(beam_args or [])))
    rows = (
        pipeline
        | "Match" >> fileio.MatchFiles(input_pattern)
        | "ReadMatches" >> fileio.ReadMatches()
        | "ReadRows" >> beam.ParDo(ReadRows(raw_features, input_format_name)).with_outputs(_DEAD, main="examples")
    )
    _ = (
        rows.examples
        | "Spread" >> beam.Reshuffle()
        # RunInference derives its output coder from this hint: keyed in, keyed PredictionLogs out.
        | "Keyed" >> beam.Map(lambda kv: kv).with_output_types(Tuple[Tuple[str, int], bytes])
        | "RunInference" >> RunInference(spec)
        | "ToRecord" >> beam.Map(prediction_record)
        | "PredictionJson" >> beam.Map(json.dumps)
        | "WritePredictions" >> beam.io.WriteToText(os.path.join(output_dir, PREDICTIONS_PREFIX),
                                                    file_name_suffix=SUFFIX)
    )
    _ = (
        rows[_DEAD]
        | "DeadLetterJson" >> beam.Map(json.dumps)
        | "WriteDeadLetter" >> beam.io.WriteToText(os.path.join(output_dir, DEAD_LETTER_PREFIX),
                                                   file_name_suffix=SUFFIX)
    )
    result = pipeline.run()
    result.wait_until_finish()

    prediction_files = _glob(os.path.join(output_dir, f"{PREDICTIONS_PREFIX}-*{SUFFIX}"))
    dead_letter_files = _glob(os.path.join(output_dir, f"{DEAD_LETTER_PREFIX}-*{SUFFIX}"))
    predicted, dead = _count_lines(prediction_files), _count_lines(dead_letter_files)
    read = _rows_read(result)
    if read is None:
        raise RowCountMismatch(f"the runner reported no row count, so the {predicted} predicted and {dead} "
                                "dead-lettered rows cannot be checked against the rows read")
    outcome = BatchPredictResult(model_dir, output_dir, read, predicted, dead, prediction_files, dead_letter_files)
    logging.info("batch-predict: %s", outcome.summary())
    if read != predicted + dead:
        raise RowCountMismatch(f"{outcome.summary()}: {read - predicted - dead} row(s) unaccounted for")
    return outcome


# ---------------------------------------------------------------------------------------------- CLI

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Score CSV or TFRecord (tf.Example) files with an exported commerce-mtl SavedModel. "
                    "Writes OUTPUT/predictions-*.jsonl (one object per row: source, row, every task) and "
                    "OUTPUT/dead_letter-*.jsonl (rows that could not be scored, with the reason).",
    )
    parser.add_argument("--model-dir", required=True,
                        help="SavedModel directory, or a pushed model's base directory (newest version is used)")
    parser.add_argument("--input", required=True, help="file glob (local or any Beam filesystem)")
    parser.add_argument("--output", required=True, help="output directory (must not hold earlier results)")
    parser.add_argument("--format", choices=FORMATS,
                        help="input format; default by extension: *.tfrecord[.gz] / *.tfr -> tfrecord, else csv")
    parser.add_argument("--max-batch-size", type=int, default=DEFAULT_MAX_BATCH_SIZE,
                        help="largest batch sent to the model")
    parser.add_argument("--beam-arg", action="append", default=[],
                        help="Beam pipeline argument, e.g. --beam-arg=--runner=DirectRunner (repeatable)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.max_batch_size < 1:
        print(f"{PROG}: error: --max-batch-size must be positive", file=sys.stderr)
        return 2
    try:
        result = run_batch_predict(args.model_dir, args.input, args.output, args.beam_arg, args.format,
                                   args.max_batch_size)
    except RowCountMismatch as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 1
    except BatchPredictError as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 2
    print(result.summary())
    print(f"predictions: {', '.join(result.prediction_files)}")
    if result.dead_lettered:
        print(f"dead letter ({result.dead_lettered} rows, with reasons): {', '.join(result.dead_letter_files)}")
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    sys.exit(main())
