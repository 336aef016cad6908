"""Builds serialized tf.Examples from plain rows (CSV / JSON) using a model's raw feature description."""
from __future__ import annotations

import json
import os
from typing import Any, Iterable, Mapping

import tensorflow as tf

from models.export import RAW_FEATURES_FILE


def load_raw_features(model_dir: str) -> dict[str, str]:
    """{column: dtype name} of the features the model's `serving_default` parses."""
    path = os.path.join(model_dir, RAW_FEATURES_FILE)
    if not tf.io.gfile.exists(path):
        raise FileNotFoundError(f"{path}: no raw feature description; was this model exported by commerce-mtl?")
    with tf.io.gfile.GFile(path) as f:
        return {name: d["dtype"] for name, d in json.load(f).items()}


def _feature(column: str, dtype: str, value: Any, where: str) -> tf.train.Feature:
    try:
        if dtype == "string":
            data = value if isinstance(value, bytes) else str(value).encode()
            return tf.train.Feature(bytes_list=tf.train.BytesList(value=[data]))
        if dtype == "int64":
            return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(float(value))]))
        return tf.train.Feature(float_list=tf.train.FloatList(value=[float(value)]))
    except (TypeError, ValueError):
        raise ValueError(f"{where}: column {column!r} expects {dtype}, got {value!r}") from None


def to_example(row: Mapping[str, Any], raw_features: Mapping[str, str], where: str = "row") -> bytes:
    """Serializes one row; empty or missing cells are left out (the model treats them as missing)."""
    feature = {}
    for column, dtype in raw_features.items():
        value = row.get(column)
        if value is None or value == "":
            continue
        feature[column] = _feature(column, dtype, value, where)
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def to_examples(rows: Iterable[Mapping[str, Any]], raw_features: Mapping[str, str], source: str = "input") -> list[bytes]:
    return [to_example(row, raw_features, f"{source} row {i + 1}") for i, row in enumerate(rows)]
