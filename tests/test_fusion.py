"""Data fusion: per-source features, tasks and label sentinels in data_prep, FusionExampleGen's splits,
typing and sampling on three tiny sources (a real Beam run), and configs/fusion.yaml end to end."""
from __future__ import annotations

import csv
import json
import os
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest
import tensorflow as tf
import tensorflow_text  # noqa: F401  (the pushed model tokenizes in graph)
import yaml

from components.fusion_example_gen import (
    EVAL, FUSION_STATS_FILE, TRAIN, FusionDataError, FusionExampleGen, _FuseRows, assign_split, read_header,
    sampled_copies)
from models.spec import parse_spec
from pipeline.data_prep import SOURCE_COLUMN, DataError, prepare
from tests.conftest import ROOT, SHARED_DATA, run_pipeline

ROWS = 200  # per tiny source: enough for the sampling rates to show, still a 3-second Beam run

# Three sources in the shapes of the real ones: reviews (text, two tasks, "N/A" meaning unrated),
# support utterances (text, one task), a churn table (numbers; a binary task with "-1" for unknown and
# a regression task).
SPEC_DICT: dict = {
    "model_name": "fusion_test",
    "sources": [
        {"path": "reviews.csv", "name": "reviews", "columns": {"text": "Review Text", "recommended": "Rec", "rating": "Rating"},
         "features": ["text"], "tasks": ["recommended", "rating"], "sampling_weight": 2.0,
         "missing_label_values": ["N/A"]},
        {"path": "support.csv", "name": "support", "columns": {"text": "utterance"}, "features": ["text"],
         "tasks": ["intent"], "sampling_weight": 0.5, "missing_label_values": ["unknown"]},
        {"path": "churn.csv", "name": "churn", "features": ["age", "plan"], "tasks": ["churn", "spend"],
         "missing_label_values": ["-1"]},
    ],
    "features": {"text": ["text"], "numeric": ["age"], "categorical": ["plan"]},
    "tasks": [
        {"name": "recommended", "type": "binary", "label": "recommended", "blessing_threshold": 0.5},
        {"name": "rating", "type": "multiclass", "label": "rating", "classes": ["1", "2", "3", "4", "5"]},
        {"name": "intent", "type": "multiclass", "label": "intent", "classes": ["refund", "track_order"]},
        {"name": "churn", "type": "binary", "label": "churn"},
        {"name": "spend", "type": "regression", "label": "spend"},
    ],
}
SPEC = parse_spec(SPEC_DICT)


def _write(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)
    return path


def _sources(folder: Path, rows: int = ROWS) -> list[Path]:
    """The three tiny files; every text is unique so an example can be traced back to its row."""
    reviews = _write(folder / "reviews.csv", ["Review Text", "Rating", "Rec", "intent"],
                     [[f"review {i}", "N/A" if i % 10 == 0 else str(i % 5 + 1), str(i % 2), "refund"]
                      for i in range(rows)])
    support = _write(folder / "support.csv", ["utterance", "intent"],
                     [[f"help {i}", ["refund", "track_order"][i % 2]] for i in range(rows)])
    churn = _write(folder / "churn.csv", ["age", "plan", "churn", "spend"],
                   [["" if i % 4 == 0 else str(20 + i % 50), ["gold", "basic"][i % 2],
                     "-1" if i % 5 == 0 else str(i % 2), f"{i * 1.5}"] for i in range(rows)])
    return [reviews, support, churn]


def _read(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, dtype=str, keep_default_na=False)


# --- data_prep ---------------------------------------------------------------------------------
def test_sources_get_their_columns_and_labels_only(tmp_path):
    prepared = prepare(SPEC, _sources(tmp_path / "in", rows=10), tmp_path / "out")
    frame = _read(prepared.csv)
    assert list(frame.columns) == [*SPEC.input_columns(), SOURCE_COLUMN]
    by_source = {name: part for name, part in frame.groupby(SOURCE_COLUMN, sort=False)}
    assert list(by_source) == ["reviews", "support", "churn"]
    reviews, support, churn = by_source.values()
    # Features a source does not carry are empty, however the file looks.
    assert (reviews["age"] == "").all() and (reviews["plan"] == "").all()
    assert (churn["text"] == "").all()
    # The reviews file has an `intent` column, but reviews do not label intent: it is ignored.
    assert (reviews["intent"] == "").all()
    assert (reviews[["churn", "spend"]] == "").all().all() and (support[["rating", "recommended"]] == "").all().all()
    assert reviews["rating"].tolist() == [""] + [str(i % 5 + 1) for i in range(1, 10)]
    assert churn["plan"].tolist()[:2] == ["gold", "basic"]


def test_sentinel_label_values_become_missing(tmp_path):
    prepared = prepare(SPEC, _sources(tmp_path / "in", rows=10), tmp_path / "out")
    frame = _read(prepared.csv)
    reviews, churn = frame[frame[SOURCE_COLUMN] == "reviews"], frame[frame[SOURCE_COLUMN] == "churn"]
    assert reviews["rating"].tolist()[:3] == ["", "2", "3"]  # "N/A" in row 0
    assert reviews["recommended"].tolist()[:3] == ["0", "1", "0"]
    assert churn["churn"].tolist()[:2] == ["", "1"]  # "-1" would otherwise fail the 0/1 check
    assert churn["age"].tolist()[:2] == ["", "21"]  # empty feature cells stay empty too


def test_per_source_counts(tmp_path):
    prepared = prepare(SPEC, _sources(tmp_path / "in", rows=10), tmp_path / "out")
    none = {t.name: 0 for t in SPEC.tasks}
    assert prepared.per_source == {
        "reviews": {"rows": 10, "labels": {**none, "recommended": 10, "rating": 9}},
        "support": {"rows": 10, "labels": {**none, "intent": 10}},
        "churn": {"rows": 10, "labels": {**none, "churn": 8, "spend": 10}},
    }
    assert prepared.rows == 30
    assert prepared.label_counts == {"recommended": 10, "rating": 9, "intent": 10, "churn": 8, "spend": 10}


def test_a_single_source_gets_no_source_column(tmp_path):
    spec = parse_spec({**SPEC_DICT, "sources": [SPEC_DICT["sources"][0]]})
    prepared = prepare(spec, _sources(tmp_path / "in", rows=4)[:1], tmp_path / "out")
    assert prepared.csv.read_text().splitlines()[0] == ",".join(spec.input_columns())
    assert prepared.per_source["reviews"]["rows"] == 4


def test_a_declared_column_must_exist(tmp_path):
    files = _sources(tmp_path / "in", rows=4)
    _write(files[2], ["age", "churn", "spend"], [["30", "1", "2.0"]])  # lacks `plan`
    with pytest.raises(DataError) as info:
        prepare(SPEC, files, tmp_path / "out")
    assert str(info.value).startswith(f"{files[2]}: missing columns 'plan';")


def test_a_row_labelling_none_of_its_tasks_names_file_and_row(tmp_path):
    files = _sources(tmp_path / "in", rows=4)
    _write(files[1], ["utterance", "intent"], [["hi", "refund"], ["hello", "unknown"], ["hey", "refund"]])
    with pytest.raises(DataError) as info:
        prepare(SPEC, files, tmp_path / "out")
    message = str(info.value)
    assert message.startswith(f"{files[1]}: rows 3 carry no label for any task (intent)")


def test_a_bad_label_names_file_row_and_column(tmp_path):
    files = _sources(tmp_path / "in", rows=4)
    _write(files[2], ["age", "plan", "churn", "spend"], [["30", "gold", "1", "2"], ["31", "gold", "yes", "1"]])
    with pytest.raises(DataError) as info:
        prepare(SPEC, files, tmp_path / "out")
    message = str(info.value)
    assert message.startswith(f"{files[2]}:") and "column 'churn' expects finite numbers; rows 3 " in message


def test_source_is_a_reserved_column_name_with_several_sources(tmp_path):
    data = {**SPEC_DICT, "features": {**SPEC_DICT["features"], "categorical": ["plan", "source"]}}
    with pytest.raises(DataError, match="column name 'source' is reserved"):
        prepare(parse_spec(data), _sources(tmp_path / "in", rows=4), tmp_path / "out")


# --- split and sampling functions --------------------------------------------------------------
def test_split_and_sampling_are_deterministic_and_proportional():
    keys = [f"row {i}".encode() for i in range(4000)]
    assert [assign_split(k, 20) for k in keys] == [assign_split(k, 20) for k in keys]
    assert 0.17 < sum(assign_split(k, 20) == EVAL for k in keys) / len(keys) < 0.23
    assert {sampled_copies(k, 2.0) for k in keys} == {2}
    assert {sampled_copies(k, 1.0) for k in keys} == {1}
    assert 0.47 < sum(sampled_copies(k, 0.5) for k in keys) / len(keys) < 0.53
    assert 2.2 < sum(sampled_copies(k, 2.25) for k in keys) / len(keys) < 2.3
    # The sampling draw is not the split hash: the eval side would otherwise hold only kept rows.
    kept_eval = sum(sampled_copies(k, 0.5) for k in keys if assign_split(k, 20) == EVAL)
    assert 0.4 < kept_eval / sum(assign_split(k, 20) == EVAL for k in keys) < 0.6


def test_rows_sharing_the_split_column_land_in_one_split():
    spec = parse_spec({**SPEC_DICT, "training": {"eval_split_by": "plan"},
                       "sources": [{**s, "features": None} for s in SPEC_DICT["sources"]]})
    header = [*spec.input_columns(), SOURCE_COLUMN]
    fuse = _FuseRows("data.csv", header, spec)

    def split_of(plan: str, i: int) -> str:
        cells = {c: b"" for c in header} | {"text": f"t{i}".encode(), "plan": plan.encode(), "churn": b"1",
                                            SOURCE_COLUMN: b"churn"}
        return {out.tag for out in fuse.process(([cells[c] for c in header], f"line {i}"))}.pop()

    for plan in ("gold", "basic", "silver"):
        assert len({split_of(plan, i) for i in range(30)}) == 1


def test_the_header_must_match_the_spec(tmp_path):
    path = _write(tmp_path / "data.csv", SPEC.input_columns(), [])
    with pytest.raises(FusionDataError, match=r"missing \['source'\]"):
        read_header(str(path), SPEC)


# --- the component in a real (one-component) TFX pipeline --------------------------------------
def _records(pattern: str) -> list[tf.train.Example]:
    files = tf.io.gfile.glob(pattern)
    assert files, pattern
    dataset = tf.data.TFRecordDataset(files, compression_type="GZIP")
    return [tf.train.Example.FromString(r.numpy()) for r in dataset]


@pytest.fixture(scope="module")
def fused(tmp_path_factory):
    from tfx import v1 as tfx

    from pipeline.report import latest_artifact, open_store

    tmp = tmp_path_factory.mktemp("fusion")
    prepared = prepare(SPEC, _sources(tmp / "in"), tmp / "prepared")
    gen = FusionExampleGen(input_base=str(tmp / "prepared"), spec_json=SPEC.to_json())
    metadata = tmp / "metadata.sqlite"
    tfx.orchestration.LocalDagRunner().run(tfx.dsl.Pipeline(
        pipeline_name="fusion_test", pipeline_root=str(tmp / "root"), components=[gen],
        metadata_connection_config=tfx.orchestration.metadata.sqlite_metadata_connection_config(str(metadata))))
    artifact = latest_artifact(open_store(metadata), "Examples")
    splits = {split: _records(os.path.join(artifact.uri, f"Split-{split}", "*.gz")) for split in (TRAIN, EVAL)}
    return artifact, splits, prepared


def _value(example: tf.train.Example, column: str):
    feature = example.features.feature[column]
    kind = feature.WhichOneof("kind")
    return kind, list(getattr(feature, kind).value)


def _by_source(examples: list[tf.train.Example]) -> dict[str, list[tf.train.Example]]:
    out: dict[str, list] = {}
    for example in examples:
        out.setdefault(_value(example, SOURCE_COLUMN)[1][0].decode(), []).append(example)
    return out


def _rows(examples) -> Counter:
    """How often each source row occurs: rows are told apart by their unique text, or spend (churn)."""
    return Counter(_value(e, "text" if "text" in e.features.feature else "spend")[1][0] for e in examples)


def test_artifact_has_csv_example_gen_layout(fused):
    artifact, _, _ = fused
    assert json.loads(artifact.properties["split_names"].string_value) == [TRAIN, EVAL]
    assert artifact.custom_properties["payload_format"].string_value == "FORMAT_TF_EXAMPLE"
    for split in (TRAIN, EVAL):
        names = os.listdir(os.path.join(artifact.uri, f"Split-{split}"))
        assert names and all(n.startswith("data_tfrecord-") and n.endswith(".gz") for n in names), names


def test_examples_are_typed_from_the_spec(fused):
    _, splits, _ = fused
    sources = _by_source(splits[TRAIN] + splits[EVAL])
    review = next(e for e in sources["reviews"] if "rating" in e.features.feature)
    support = sources["support"][0]
    churn = next(e for e in sources["churn"] if "age" in e.features.feature and "churn" in e.features.feature)
    assert _value(review, "text")[0] == "bytes_list"
    assert _value(review, "rating")[0] == "bytes_list"  # multiclass: the class name
    assert _value(review, "recommended")[0] == "int64_list"  # binary: 0 / 1
    assert _value(support, "intent")[0] == "bytes_list"
    assert _value(churn, "age")[0] == "float_list"
    assert _value(churn, "plan")[0] == "bytes_list"
    assert _value(churn, "churn")[0] == "int64_list"
    assert _value(churn, "spend")[0] == "float_list"
    assert _value(churn, SOURCE_COLUMN) == ("bytes_list", [b"churn"])


def test_missing_cells_are_absent_features(fused):
    _, splits, _ = fused
    sources = _by_source(splits[TRAIN] + splits[EVAL])
    for example in sources["reviews"]:
        assert set(example.features.feature) <= {"text", "rating", "recommended", SOURCE_COLUMN}
    assert 0 < sum("rating" not in e.features.feature for e in sources["reviews"]) < len(sources["reviews"])
    for example in sources["support"]:
        assert set(example.features.feature) == {"text", "intent", SOURCE_COLUMN}
    churn = sources["churn"]
    assert all("text" not in e.features.feature for e in churn)
    assert 0 < sum("age" not in e.features.feature for e in churn) < len(churn)
    assert 0 < sum("churn" not in e.features.feature for e in churn) < len(churn)


def test_every_row_lands_in_exactly_one_split(fused):
    _, splits, _ = fused
    train, evals = _by_source(splits[TRAIN]), _by_source(splits[EVAL])
    for source in ("reviews", "churn"):  # weights 2 and 1 keep every training row
        train_rows, eval_rows = set(_rows(train[source])), set(_rows(evals[source]))
        assert not train_rows & eval_rows, source
        assert len(train_rows | eval_rows) == ROWS, source
    assert not set(_rows(train["support"])) & set(_rows(evals["support"]))
    assert 0.1 < len(splits[EVAL]) / (3 * ROWS) < 0.3  # eval_split_percent 20


def test_sampling_weights_apply_to_training_rows_only(fused):
    _, splits, _ = fused
    train, evals = _by_source(splits[TRAIN]), _by_source(splits[EVAL])
    # weight 2: each training review twice; evaluation holds each of its rows once.
    assert set(_rows(train["reviews"]).values()) == {2}
    assert set(_rows(evals["reviews"]).values()) == {1}
    assert len(train["reviews"]) == 2 * (ROWS - len(evals["reviews"]))
    # weight 1: each row once, all of them.
    assert len(train["churn"]) + len(evals["churn"]) == ROWS
    # weight 0.5: about half the training utterances, each at most once; eval untouched.
    assert set(_rows(train["support"]).values()) == {1}
    support_train_rows = ROWS - len(evals["support"])
    assert 0.35 < len(train["support"]) / support_train_rows < 0.65
    eval_texts = {t.decode() for t in _rows(evals["support"])}
    assert len(eval_texts) == len(evals["support"]) and all(t.startswith("help ") for t in eval_texts)


def test_fusion_stats_count_what_was_written(fused):
    artifact, splits, _ = fused
    stats = json.loads(Path(artifact.uri, FUSION_STATS_FILE).read_text())
    assert stats["sampling_weights"] == {"reviews": 2.0, "support": 0.5, "churn": 1.0}
    for split, examples in splits.items():
        assert stats["splits"][split]["examples"] == len(examples)
        for source, part in _by_source(examples).items():
            counts = stats["splits"][split]["sources"][source]
            assert counts["examples"] == len(part)
            for task in SPEC.tasks:
                assert counts["labels"][task.name] == sum(task.label in e.features.feature for e in part), task
    assert stats["splits"][TRAIN]["sources"]["reviews"]["labels"]["intent"] == 0


# --- configs/fusion.yaml end to end --------------------------------------------------------------
FUSION_FILES = {
    "womens_clothing_reviews/womens_clothing_ecommerce_reviews.csv.gz": {},
    "bitext_customer_support/bitext_20k_utterances_customer_support.csv": {"encoding": "utf-8-sig"},
    "ecommerce_churn/ecommerce_churn_E_Comm.csv": {},
}
SAMPLE_ROWS = 300


@pytest.mark.e2e
@pytest.mark.skipif(not all((SHARED_DATA / f).is_file() for f in FUSION_FILES),
                    reason=f"real data not present under {SHARED_DATA} (see ../shared/data/README.md)")
def test_fusion_config_pushes_a_model_serving_every_task(tmp_path):
    from serving.examples import load_raw_features, to_examples

    for relative, options in FUSION_FILES.items():
        # A random sample, so every intent and rating shows up in a few hundred rows.
        frame = pd.read_csv(SHARED_DATA / relative, dtype=str, keep_default_na=False, **options)
        (tmp_path / "data" / relative).parent.mkdir(parents=True)
        frame.sample(SAMPLE_ROWS, random_state=0).to_csv(tmp_path / "data" / relative, index=False)
    config = yaml.safe_load((ROOT / "configs" / "fusion.yaml").read_text())
    config["encoder"] = {"kind": "tiny", "hidden_size": 32, "num_layers": 1, "num_heads": 2}
    config["sequence_length"] = 32
    config["training"].update(max_steps_per_epoch=8, batch_size=16)
    for task in config["tasks"]:  # plumbing, not quality: one gate that any finite accuracy passes
        task["blessing_threshold"] = 0.0 if task["name"] == "intent" else None
    (tmp_path / "fusion.yaml").write_text(yaml.safe_dump(config))
    proc = run_pipeline("--config", "fusion.yaml", "--data", "data", "--workdir", "wd", "--workers", "1",
                 cwd=tmp_path, timeout=900)
    report = json.loads((tmp_path / "wd" / "reports" / "metrics.json").read_text())
    tasks = {t["name"] for t in config["tasks"]}
    assert set(report["tasks"]) == tasks
    assert set(report["sources"]) == {"reviews", "support", "churn"}
    churn = report["sources"]["churn"]
    assert churn["rows"] == SAMPLE_ROWS and churn["sampling_weight"] == 2.0
    assert churn["train"]["examples"] == 2 * (SAMPLE_ROWS - churn["eval"]["examples"])
    assert "source churn: rows=300  weight=2" in proc.stdout
    # per-source slices: each source's slice has metrics for the tasks it labels
    by_source = report["slices"]["source"]
    assert set(by_source) == {"reviews", "support", "churn"}
    assert "churn" in by_source["churn"] and by_source["churn"]["churn"]["example_count"] > 0
    assert "accuracy" in by_source["support"]["intent"]
    model_dir = tmp_path / "wd" / "serving_model" / "fusion" / str(report["version"])
    with open(tmp_path / "wd" / "data" / "prepared" / "data.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    picked = [next(r for r in rows if r[SOURCE_COLUMN] == name) for name in ("reviews", "support", "churn")]
    examples = to_examples(picked, load_raw_features(str(model_dir)))
    outputs = tf.saved_model.load(str(model_dir)).signatures["serving_default"](examples=tf.constant(examples))
    assert set(outputs) == tasks
    for name, values in outputs.items():
        assert values.shape[0] == 3 and bool(tf.reduce_all(tf.math.is_finite(values))), name
    assert outputs["intent"].shape == (3, 27)
