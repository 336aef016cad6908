"""preprocessing_fn run by tft_beam on generated rows: tokens, numerics, buckets, vocabularies, labels, masks."""
from __future__ import annotations

import numpy as np
from transformers import BertTokenizer

from models import features
from models.encoders import resolve_assets
from models.spec import parse_spec
from tests.conftest import analyze_and_transform


def _expected_ids(spec, raw) -> list[int]:
    tokenizer = BertTokenizer(str(resolve_assets(spec.encoder).vocab_file), do_lower_case=True)
    ids = [tokenizer.cls_token_id]
    for column in spec.features.text:
        text = raw[column][0].decode() if raw[column] else ""
        ids += tokenizer.convert_tokens_to_ids(tokenizer.tokenize(text)) + [tokenizer.sep_token_id]
    return ids


def test_token_ids_match_the_encoder_vocabulary(tiny_spec, transformed):
    checked = 0
    for raw, row in zip(transformed["raw"], transformed["data"]):
        expected = _expected_ids(tiny_spec, raw)
        if len(expected) > tiny_spec.sequence_length:
            continue  # truncated rows are checked by the length test below
        length = len(expected)
        assert list(row[features.INPUT_IDS][:length]) == expected
        assert not np.any(row[features.INPUT_IDS][length:])
        assert list(row[features.ATTENTION_MASK]) == [1] * length + [0] * (tiny_spec.sequence_length - length)
        checked += 1
    assert checked >= 10


def test_long_text_is_trimmed_to_the_sequence_length(tiny_spec, transformed):
    lengths = [int(np.sum(r[features.ATTENTION_MASK])) for r in transformed["data"]]
    assert max(lengths) == tiny_spec.sequence_length
    for row in transformed["data"]:
        ids = list(row[features.INPUT_IDS][: int(np.sum(row[features.ATTENTION_MASK]))])
        assert ids[0] == 101 and ids[-1] == 102  # [CLS] ... [SEP] even when trimmed
        assert ids.count(102) == len(tiny_spec.features.text)


def test_segment_ids_mark_the_first_text_field_zero(tiny_spec, transformed):
    for raw, row in zip(transformed["raw"], transformed["data"]):
        seg = row[features.SEGMENT_IDS]
        first_sep = list(row[features.INPUT_IDS]).index(102)
        assert not np.any(seg[: first_sep + 1])
        assert set(np.unique(seg)) <= {0, 1}


def test_numerics_are_z_scored_with_missing_indicators(tiny_spec, transformed):
    numeric = np.stack([r[features.NUMERIC] for r in transformed["data"]])
    n = len(tiny_spec.features.numeric)
    assert numeric.shape == (len(transformed["data"]), 2 * n)
    np.testing.assert_allclose(numeric[:, :n].mean(axis=0), 0.0, atol=1e-4)
    np.testing.assert_allclose(numeric[:, :n].std(axis=0), 1.0, atol=1e-3)
    assert not np.any(numeric[:, n:])  # the generated numerics are never missing


def test_log1p_numerics_are_z_scored_on_the_log_scale(tiny_spec, transformed):
    numeric = np.stack([r[features.NUMERIC] for r in transformed["data"]])
    assert tiny_spec.features.log1p  # configs/commerce.yaml logs the price and the order count
    for column in tiny_spec.features.log1p:
        i = tiny_spec.features.numeric.index(column)
        logged = np.log1p(np.asarray([float(raw[column][0]) for raw in transformed["raw"]]))
        np.testing.assert_allclose(numeric[:, i], (logged - logged.mean()) / logged.std(), rtol=1e-3, atol=1e-3)


def _assert_buckets_follow_values(values: np.ndarray, buckets: np.ndarray) -> None:
    """Equal values share a bucket, and a larger value never lands in a lower bucket."""
    mapping: dict[float, int] = {}
    for value, bucket in zip(values, buckets):
        assert mapping.setdefault(value, bucket) == bucket, f"value {value} in buckets {mapping[value]} and {bucket}"
    ordered = [mapping[v] for v in sorted(mapping)]
    assert ordered == sorted(ordered), ordered


def test_numeric_buckets_are_quantiles_ordered_by_value(tiny_spec, transformed):
    assert tiny_spec.features.buckets == {"user_age": 4}  # tests/conftest.py's tiny_config
    values = np.asarray([float(raw["user_age"][0]) for raw in transformed["raw"]])
    buckets = np.asarray([int(r[features.bucket_key("user_age")]) for r in transformed["data"]])
    _assert_buckets_follow_values(values, buckets)
    counts = np.bincount(buckets, minlength=4)
    assert len(counts) == 4 and counts.min() > 0, counts
    assert counts.max() <= 0.5 * len(values), counts  # quantiles, not equal widths of a skewed range


def test_a_missing_numeric_cell_gets_the_bucket_after_the_last(tmp_path):
    import tensorflow as tf

    spec = parse_spec({
        "model_name": "buckets", "sources": [{"path": "rows.csv"}],
        "features": {"numeric": ["spend"], "buckets": {"spend": 4}},
        "tasks": [{"name": "buy", "type": "binary", "label": "buy", "blessing_threshold": 0.5}],
    })
    # Heavy-tailed values: three quarters of them below 1, the rest up to 10,000.
    spend = [0.01 * i for i in range(30)] + [10.0 ** (i % 5) for i in range(10)]
    instances = [{"spend": [v], "buy": [i % 2]} for i, v in enumerate(spend)] + [{"spend": [], "buy": [1]}]
    feature_spec = {"spend": tf.io.VarLenFeature(tf.float32), "buy": tf.io.VarLenFeature(tf.int64)}
    data, _ = analyze_and_transform(spec, instances, feature_spec, tmp_path)
    buckets = np.asarray([int(r[features.bucket_key("spend")]) for r in data])
    assert buckets[-1] == 4  # the missing cell
    present = buckets[:-1]
    assert set(present) == {0, 1, 2, 3}
    assert [int(b) for b in np.bincount(present)] == [10, 10, 10, 10]  # equal counts, not equal widths
    _assert_buckets_follow_values(np.asarray(spend, np.float32), present)


def test_categoricals_get_vocabulary_indices(tiny_spec, transformed):
    output = transformed["output"]
    for column in tiny_spec.features.categorical:
        size = output.vocabulary_size_by_name(features.categorical_vocab_name(column))
        seen = {raw[column][0] for raw in transformed["raw"]}
        assert size == len(seen)
        values = [int(r[features.categorical_key(column)]) for r in transformed["data"]]
        # Same raw value -> same index, distinct values -> distinct indices.
        mapping = {}
        for raw, idx in zip(transformed["raw"], values):
            mapping.setdefault(raw[column][0], idx)
            assert mapping[raw[column][0]] == idx
        assert len(set(mapping.values())) == len(mapping)


def test_ids_are_hashed_into_buckets(tiny_spec, transformed):
    for column in tiny_spec.features.ids:
        values = np.array([int(r[features.id_key(column)]) for r in transformed["data"]])
        assert values.min() >= 0 and values.max() < tiny_spec.features.id_hash_buckets


def test_labels_and_masks_follow_missing_cells(tiny_spec, transformed):
    for task in tiny_spec.tasks:
        for raw, row in zip(transformed["raw"], transformed["data"]):
            present = bool(raw[task.label])
            assert row[features.mask_key(task)] == float(present), (task.name, raw[task.label])
            if not present:
                continue
            value = raw[task.label][0]
            if task.classes:
                assert task.classes[int(row[features.label_key(task)])] == value.decode()
            else:
                assert abs(float(row[features.label_key(task)]) - float(value)) < 1e-5
