"""Shared fixtures: a tiny-encoder spec, a few generated rows, and a real TF Transform run over them."""
from __future__ import annotations

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from models.spec import ProjectSpec, TaskType, parse_spec

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
ROW_INDEX = "row_index"


def run_pipeline(*args: str, cwd: Path = ROOT, timeout: int = 1200) -> "subprocess.CompletedProcess":
    """`commerce-mtl run ARGS` in a subprocess (as a user runs it); fails the test with its output's tail."""
    proc = subprocess.run([sys.executable, "-m", "pipeline.cli", "run", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout,
                          env={**os.environ, "PYTHONPATH": str(ROOT), "PYTHONWARNINGS": "ignore"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc


def tiny_config(**training) -> dict:
    """configs/commerce.yaml with the random tiny encoder and short sequences, for fast tests, plus quantile
    buckets on one numeric column so that training, export and serving all carry a bucket input."""
    config = yaml.safe_load((ROOT / "configs" / "commerce.yaml").read_text())
    config["features"]["buckets"] = {"user_age": 4}
    config["encoder"] = {"kind": "tiny", "hidden_size": 32, "num_layers": 1, "num_heads": 2}
    config["sequence_length"] = 32
    config["training"].update(training)
    return config


@pytest.fixture(scope="session")
def tiny_spec() -> ProjectSpec:
    return parse_spec(tiny_config(), "tiny test config")


@pytest.fixture(scope="session")
def generated(tmp_path_factory):
    from pipeline.simulation import generate

    return generate(rows=96, seed=3, out_dir=tmp_path_factory.mktemp("generated"))


def _is_int(values: list[str]) -> bool:
    return all(v.lstrip("-").isdigit() for v in values)


def raw_rows_and_spec(spec: ProjectSpec, csv_path: Path):
    """Reads prepared CSV rows into TFT instance dicts, typed the way CSV schema inference types them
    (every feature VarLen, empty cells missing), plus the matching raw feature spec."""
    import tensorflow as tf

    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    columns = spec.input_columns()
    dtypes = {}
    for c in columns:
        present = [r[c] for r in rows if r[c] != ""]
        numeric = c in spec.features.numeric or any(
            t.label == c and t.type != TaskType.MULTICLASS for t in spec.tasks)
        dtypes[c] = (tf.int64 if _is_int(present) else tf.float32) if numeric else tf.string
    feature_spec = {c: tf.io.VarLenFeature(dtypes[c]) for c in columns}

    def cast(c, v):
        if dtypes[c] == tf.string:
            return v.encode()
        return int(v) if dtypes[c] == tf.int64 else float(v)

    instances = [{c: [cast(c, r[c])] if r[c] != "" else [] for c in columns} for r in rows]
    return instances, feature_spec


def serialize(instance: dict, columns: list[str]) -> bytes:
    import tensorflow as tf

    feature = {}
    for c in columns:
        values = instance.get(c) or []
        if not values:
            continue
        if isinstance(values[0], bytes):
            feature[c] = tf.train.Feature(bytes_list=tf.train.BytesList(value=values))
        elif isinstance(values[0], int):
            feature[c] = tf.train.Feature(int64_list=tf.train.Int64List(value=values))
        else:
            feature[c] = tf.train.Feature(float_list=tf.train.FloatList(value=values))
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def analyze_and_transform(spec: ProjectSpec, instances: list[dict], feature_spec: dict, out: Path):
    """tft_beam's AnalyzeAndTransformDataset with our preprocessing over `instances`, in their order.

    Returns (transformed rows as numpy dicts, TFTransformOutput of the transform graph written to out)."""
    import apache_beam as beam
    import tensorflow as tf
    import tensorflow_transform as tft
    import tensorflow_transform.beam as tft_beam
    from tensorflow_transform.tf_metadata import dataset_metadata, metadata_io, schema_utils

    from models.preprocessing import transform

    # A row index rides along so the rows can be put back in order after Beam shuffles them.
    indexed = [{**row, ROW_INDEX: i} for i, row in enumerate(instances)]
    indexed_spec = {**feature_spec, ROW_INDEX: tf.io.FixedLenFeature([], tf.int64)}
    metadata = dataset_metadata.DatasetMetadata(schema_utils.schema_from_feature_spec(indexed_spec))
    with tft_beam.Context(temp_dir=str(out / "tmp"), force_tf_compat_v1=False), beam.Pipeline() as pipeline:
        raw = pipeline | beam.Create(indexed, reshuffle=False)
        (data, _), transform_fn = (raw, metadata) | tft_beam.AnalyzeAndTransformDataset(
            lambda inputs: {**transform(inputs, spec), ROW_INDEX: inputs[ROW_INDEX]},
            output_record_batches=False)
        _ = transform_fn | tft_beam.WriteTransformFn(str(out / "transform_fn"))
        _ = (data | beam.Map(lambda row: json.dumps({k: np.asarray(v).tolist() for k, v in row.items()}))
             | beam.io.WriteToText(str(out / "transformed"), shard_name_template=""))
    # TFX's Transform also stores the raw schema there; serving parses requests with it.
    raw_schema = schema_utils.schema_from_feature_spec(feature_spec)
    metadata_io.write_metadata(dataset_metadata.DatasetMetadata(raw_schema),
                               str(out / "transform_fn" / tft.TFTransformOutput.RAW_METADATA_DIR))
    rows = [json.loads(line) for line in (out / "transformed").read_text().splitlines()]
    data = [{k: np.asarray(v) for k, v in r.items()} for r in sorted(rows, key=lambda r: r[ROW_INDEX])]
    return data, tft.TFTransformOutput(str(out / "transform_fn"))


@pytest.fixture(scope="session")
def transformed(tiny_spec, generated, tmp_path_factory):
    """Runs tft_beam's AnalyzeAndTransformDataset with our preprocessing over the generated rows."""
    from pipeline.data_prep import prepare

    out = tmp_path_factory.mktemp("transform")
    prepared = prepare(tiny_spec, [generated.events_csv], out / "prepared")
    instances, feature_spec = raw_rows_and_spec(tiny_spec, prepared.csv)
    data, output = analyze_and_transform(tiny_spec, instances, feature_spec, out)
    return {
        "raw": instances,
        "data": data,
        "output": output,
        "prepared_csv": prepared.csv,
    }


@pytest.fixture(scope="session")
def trained_export(tiny_spec, transformed, tmp_path_factory):
    """(in-process model, export directory `.../1`) of an untrained tiny model, with a warmup file."""
    from models.export import export_serving_model
    from models.model import build_model, cardinalities

    model = build_model(tiny_spec, cardinalities(tiny_spec, transformed["output"]))
    export_dir = tmp_path_factory.mktemp("export") / "1"
    warmup = [serialize(raw, tiny_spec.input_columns()) for raw in transformed["raw"][:4]]
    export_serving_model(model, transformed["output"], tiny_spec, str(export_dir), warmup_examples=warmup)
    return model, export_dir
