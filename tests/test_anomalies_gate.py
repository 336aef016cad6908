"""AnomaliesGate: real TFDV anomalies are turned into one error that names every feature."""
from __future__ import annotations

import pandas as pd
import pytest
import tensorflow_data_validation as tfdv

from components.anomalies_gate import DataAnomaliesError, describe_anomalies, raise_on_anomalies


def _write_anomalies(tmp_path, train: pd.DataFrame, serving: pd.DataFrame) -> str:
    schema = tfdv.infer_schema(tfdv.generate_statistics_from_dataframe(train))
    anomalies = tfdv.validate_statistics(tfdv.generate_statistics_from_dataframe(serving), schema)
    split_dir = tmp_path / "Split-eval"
    split_dir.mkdir()
    (split_dir / "SchemaDiff.pb").write_bytes(anomalies.SerializeToString())
    return str(tmp_path)


def test_a_new_category_and_a_missing_column_are_named(tmp_path):
    train = pd.DataFrame({"channel": ["search", "feed"] * 20, "item_price": [1.5, 2.5] * 20})
    serving = pd.DataFrame({"channel": ["search", "telepathy"] * 20})
    problems = describe_anomalies(_write_anomalies(tmp_path, train, serving), ["eval"])
    text = "\n".join(problems)
    assert "feature 'channel'" in text and "telepathy" in text
    assert "feature 'item_price'" in text
    assert all(p.startswith("split 'eval'") for p in problems)


def test_clean_data_has_no_problems(tmp_path):
    frame = pd.DataFrame({"channel": ["search", "feed"] * 20})
    assert describe_anomalies(_write_anomalies(tmp_path, frame, frame), ["eval"]) == []


def test_splits_without_an_anomalies_file_are_skipped(tmp_path):
    assert describe_anomalies(str(tmp_path), ["train"]) == []


def test_the_gate_raises_with_every_problem(tmp_path):
    train = pd.DataFrame({"channel": ["search", "feed"] * 20})
    serving = pd.DataFrame({"channel": ["search", "telepathy"] * 20})
    with pytest.raises(DataAnomaliesError, match="feature 'channel'"):
        raise_on_anomalies(_write_anomalies(tmp_path, train, serving), ["eval"])
