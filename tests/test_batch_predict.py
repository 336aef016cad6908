"""`commerce-mtl batch-predict`: every row read is either predicted (equal to calling `serving_default`
in-process) or dead-lettered with its file, row and reason."""
from __future__ import annotations

import csv
import glob
import json

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_text  # noqa: F401  (the Transform graph inside the SavedModel tokenizes)

from models.export import EXAMPLES_INPUT
from serving.batch_predict import PROG, main, run_batch_predict
from serving.examples import load_raw_features, to_example
from tests.conftest import serialize

MULTILINE = 'where is my order?\nit says "shipped", but nothing came'


@pytest.fixture(scope="module")
def model_dir(trained_export):
    return trained_export[1]


@pytest.fixture(scope="module")
def serving_default(model_dir):
    return tf.saved_model.load(str(model_dir)).signatures["serving_default"]


def _read_jsonl(pattern: str) -> list[dict]:
    return [json.loads(line) for path in sorted(glob.glob(pattern)) for line in open(path) if line.strip()]


def _assert_same_as_in_process(predictions: list[dict], expected_examples: dict, serving_default, tiny_spec):
    """`expected_examples`: {(source, row): serialized tf.Example} of every row that must be predicted."""
    by_key = {(p["source"], p["row"]): p for p in predictions}
    assert len(by_key) == len(predictions) and set(by_key) == set(expected_examples)
    keys = sorted(expected_examples)
    want = serving_default(**{EXAMPLES_INPUT: tf.constant([expected_examples[k] for k in keys])})
    tasks = [t.name for t in tiny_spec.tasks]
    assert sorted(want) == sorted(tasks)
    for task in tiny_spec.tasks:
        got = np.array([by_key[k][task.name] for k in keys], dtype=np.float64)
        expected = want[task.name].numpy()
        assert got.shape == expected.shape, task.name  # [n] for binary / regression, [n, C] for multiclass
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-6, err_msg=task.name)


@pytest.fixture(scope="module")
def csv_input(transformed, tmp_path_factory):
    """Two CSV files of prepared rows (features and labels) with a multi-line quoted cell, one row
    with a bad number and one with a missing cell. Returns (glob, {(source, row): row dict or None})."""
    with open(transformed["prepared_csv"], newline="") as f:
        reader = csv.DictReader(f)
        header, rows = reader.fieldnames, [dict(r) for r in reader][:19]
    assert "user_age" in header and "cs_message" in header and "click" in header
    rows[2]["cs_message"] = MULTILINE
    bad_value = {**rows[5], "user_age": "old"}
    folder = tmp_path_factory.mktemp("csv_in")
    files = {folder / "part-a.csv": rows[:10] + [bad_value], folder / "part-b.csv": rows[10:]}
    expected = {}
    for path, part in files.items():
        with open(path, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(header)
            for i, row in enumerate(part, start=1):
                writer.writerow([row[c] for c in header])
                expected[(str(path), i)] = None if row is bad_value else row
            if path.name == "part-b.csv":
                writer.writerow([rows[0][c] for c in header[:-2]])  # two cells short
                expected[(str(path), len(part) + 1)] = None
    return str(folder / "*.csv"), expected


def test_csv_rows_are_predicted_or_dead_lettered(tiny_spec, model_dir, serving_default, csv_input, tmp_path):
    pattern, rows = csv_input
    result = run_batch_predict(str(model_dir), pattern, str(tmp_path / "out"))

    assert (result.rows_read, result.predicted, result.dead_lettered) == (21, 19, 2)
    assert result.rows_read == result.predicted + result.dead_lettered
    dead = {(d["source"], d["row"]): d["error"] for d in _read_jsonl(str(tmp_path / "out" / "dead_letter-*.jsonl"))}
    part_a, part_b = sorted({source for source, _ in rows})
    assert set(dead) == {(part_a, 11), (part_b, 10)}
    assert "row 11" in dead[(part_a, 11)] and "'user_age'" in dead[(part_a, 11)] and "'old'" in dead[(part_a, 11)]
    assert "row 10" in dead[(part_b, 10)] and "cells" in dead[(part_b, 10)]

    raw_features = load_raw_features(str(model_dir))
    assert "click" not in raw_features  # label columns in the CSV are ignored
    good = {k: to_example(r, raw_features) for k, r in rows.items() if r is not None}
    predictions = _read_jsonl(str(tmp_path / "out" / "predictions-*.jsonl"))
    assert all(set(p) == {"source", "row", *(t.name for t in tiny_spec.tasks)} for p in predictions)
    _assert_same_as_in_process(predictions, good, serving_default, tiny_spec)
    multiline = next(k for k, r in rows.items() if r is not None and r["cs_message"] == MULTILINE)
    assert tf.train.Example.FromString(good[multiline]).features.feature["cs_message"].bytes_list.value == [
        MULTILINE.encode()]


def test_tfrecord_records_that_do_not_parse_are_dead_lettered(tiny_spec, transformed, model_dir, serving_default,
                                                              tmp_path):
    columns = tiny_spec.input_columns()  # labels too: serving ignores them
    good = [serialize(raw, columns) for raw in transformed["raw"][:6]]
    wrong_kind = tf.train.Example.FromString(good[0])
    wrong_kind.features.feature["user_age"].CopyFrom(tf.train.Feature(bytes_list=tf.train.BytesList(value=[b"x"])))
    records = good[:3] + [b"\xff\xff not a tf.Example", wrong_kind.SerializeToString()] + good[3:]
    gzipped = tmp_path / "in" / "data.tfrecord.gz"
    gzipped.parent.mkdir()
    with tf.io.TFRecordWriter(str(gzipped), options="GZIP") as writer:
        for r in records:
            writer.write(r)
    truncated = tmp_path / "in" / "tail.tfrecord"
    with tf.io.TFRecordWriter(str(truncated)) as writer:
        writer.write(good[0])
    with open(truncated, "ab") as f:
        f.write(b"\x00" * 5 + b"broken frame" * 2)

    result = run_batch_predict(str(model_dir), str(tmp_path / "in" / "*"), str(tmp_path / "out"))

    assert (result.rows_read, result.predicted, result.dead_lettered) == (10, 7, 3)
    dead = {(d["source"], d["row"]): d["error"] for d in _read_jsonl(str(tmp_path / "out" / "dead_letter-*.jsonl"))}
    assert set(dead) == {(str(gzipped), 4), (str(gzipped), 5), (str(truncated), 2)}
    assert "not a serialized tf.Example" in dead[(str(gzipped), 4)]
    assert "'user_age'" in dead[(str(gzipped), 5)]
    assert "corrupt TFRecord" in dead[(str(truncated), 2)]
    expected = {(str(gzipped), i): r for i, r in enumerate(records, start=1) if i not in (4, 5)}
    expected[(str(truncated), 1)] = good[0]
    _assert_same_as_in_process(_read_jsonl(str(tmp_path / "out" / "predictions-*.jsonl")), expected,
                               serving_default, tiny_spec)


def test_cli_prints_counts_and_returns_zero(model_dir, csv_input, tmp_path, capsys):
    pattern, _ = csv_input
    out = tmp_path / "cli_out"
    argv = ["--model-dir", str(model_dir.parent), "--input", pattern, "--output", str(out),
            "--beam-arg=--runner=DirectRunner", "--format", "csv"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "read 21 rows: 19 predicted, 2 dead-lettered" in printed
    assert len(_read_jsonl(str(out / "predictions-*.jsonl"))) == 19

    # Results are never mixed with an earlier run's, and a glob matching nothing is an error.
    assert main(argv) == 2
    assert "already holds results" in capsys.readouterr().err
    assert main(["--model-dir", str(model_dir), "--input", str(tmp_path / "none*.csv"), "--output",
                 str(tmp_path / "o2")]) == 2
    assert "no file matches" in capsys.readouterr().err


def test_cli_usage_names_the_subcommand(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    assert PROG in capsys.readouterr().out
