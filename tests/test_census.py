"""Tabular multi-task data like UCI Census-Income (KDD), the MMoE paper's benchmark: files without a header
line, string-valued binary labels (`positive_values`), a seeded random train/eval split (`split_seed`)
and models without text features. The last tests read the real census file when ../shared/data holds it.
(A tabular model with a seeded split runs the whole pipeline in tests/test_transfer_pipeline.py.)"""
from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from models.spec import ConfigError, load_spec, parse_spec
from pipeline.data_prep import PREPARED_FILE, DataError, prepare, seeded_split
from tests.conftest import SHARED_DATA

REPO = Path(__file__).resolve().parents[1]
CENSUS_FILE = SHARED_DATA / "census_income_kdd" / "census-income.test.gz"

HEADER = ["rid", "age", "job", "hours", "status", "weight", "income"]
# A small tabular config: no header line in the file, string labels, no text features.
SPEC_DICT: dict = {
    "model_name": "people",
    "sources": [{"path": "people.data", "header": HEADER}],
    "features": {"numeric": ["age", "hours"], "categorical": ["job", "rid"]},
    "tasks": [
        {"name": "income", "type": "binary", "label": "income", "positive_values": ["50000+."],
         "metrics": ["auc", "log_loss"], "blessing_threshold": 0.5},
        {"name": "single", "type": "binary", "label": "status", "positive_values": ["Never married"],
         "metrics": ["auc"]},
    ],
}
# ", " separated like the census file, with a trailing blank inside one cell and '?' for unknown.
ROWS = [
    "1, 38, Private, 40, Married-civilian spouse present, 1032.38, - 50000.",
    "2, 44, Self-employed , 50, Never married, 1462.33, 50000+.",
    "3, 2, ?, 0, Never married, 1601.75, - 50000.",
    "4, 51, Private, 45, , 900.5, 50000+.",
    "5, 30, Private, 38, Divorced, 700.1, ",
]


def _spec(**edits) -> dict:
    data = copy.deepcopy(SPEC_DICT)
    for key, value in edits.items():
        data[key] = value
    return data


def _write(path: Path, lines: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def _read_prepared(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, dtype=str, keep_default_na=False)


def _config_error(data) -> str:
    with pytest.raises(ConfigError) as info:
        parse_spec(data, "bad.yaml")
    return str(info.value)


# --- the configuration -------------------------------------------------------------------------
def test_census_configs_load_without_text_and_with_the_paper_tasks():
    spec = load_spec(REPO / "configs" / "census.yaml")
    source = spec.sources[0]
    assert len(source.header) == 42 and source.header[24] == "instance_weight" and source.header[-1] == "income"
    assert spec.features.text == [] and len(spec.features.numeric) == 7 and len(spec.features.categorical) == 32
    used = set(spec.features.all_columns()) | set(spec.label_columns())
    assert set(source.header) - used == {"instance_weight"}  # every other column is a feature or a label
    assert "marital_stat" not in spec.features.all_columns()  # a label, not an input (as in the paper)
    assert [(t.name, t.label, t.positive_values) for t in spec.tasks] == [
        ("income", "income", ["50000+."]), ("marital", "marital_stat", ["Never married"])]
    assert (spec.training.split_seed, spec.training.eval_split_percent) == (0, 20)
    assert spec.architecture.type == "shared_bottom"
    assert load_spec(REPO / "configs" / "census_mmoe.yaml").architecture.type == "mmoe"
    assert load_spec(REPO / "configs" / "census_ple.yaml").architecture.type == "ple"


@pytest.mark.parametrize("header, fragment", [
    ([], "'header' must list one non-empty name per column"),
    (["a", " ", "b"], "'header' must list one non-empty name per column"),
    (["a", "b", "a"], "'header' names columns more than once: ['a']"),
    (["rid", "age", "job", "hours", "status", "weight"], "its 'header' lacks the columns 'income'"),
])
def test_header_is_checked(header, fragment):
    message = _config_error(_spec(sources=[{"path": "people.data", "header": header}]))
    assert fragment in message, message


def test_header_names_the_mapped_file_columns():
    data = _spec(sources=[{"path": "people.data", "header": [*HEADER[:-1], "inc"], "columns": {"income": "x"}}])
    assert "lacks the columns 'x' (for 'income')" in _config_error(data)
    data["sources"][0]["columns"] = {"income": "inc"}
    assert parse_spec(data).sources[0].columns == {"income": "inc"}


def test_header_needs_a_file():
    message = _config_error(_spec(sources=[{"simulated": {"rows": 10}, "header": HEADER}]))
    assert "'header' names the columns of a CSV file: it needs 'path'" in message


def test_positive_values_only_for_binary_tasks_and_not_empty():
    data = _spec()
    data["tasks"][1] = {"name": "single", "type": "regression", "label": "status", "positive_values": ["x"]}
    assert "positive_values is only allowed for binary tasks, not regression task 'single'" in _config_error(data)
    data["tasks"][1] = {"name": "single", "type": "binary", "label": "status", "positive_values": []}
    assert "positive_values needs at least one non-empty value" in _config_error(data)
    data["tasks"][1]["positive_values"] = [" Never married "]
    assert parse_spec(data).task("single").positive_values == ["Never married"]  # cells are stripped too


def test_split_seed_excludes_eval_split_by_and_several_sources():
    message = _config_error(_spec(training={"split_seed": 1, "eval_split_by": "job"}))
    assert "training.split_seed" in message and "exclude each other" in message
    two = _spec(training={"split_seed": 1})
    two["sources"] = [{"path": "a.data", "header": HEADER}, {"path": "b.data", "header": HEADER}]
    assert "training.split_seed splits the rows of one file; this config has 2 sources" in _config_error(two)


def test_two_tasks_on_one_label_column_must_read_it_alike():
    data = _spec()
    data["tasks"].append({"name": "divorced", "type": "binary", "label": "status", "positive_values": ["Divorced"]})
    message = _config_error(data)
    assert "tasks 'single' and 'divorced' both read label column 'status'" in message
    assert "mapping the same file column twice in the source's 'columns'" in message
    data["tasks"][2]["positive_values"] = ["Never married"]  # the same reading: allowed
    assert parse_spec(data).label_columns() == ["income", "status"]


def test_an_encoder_section_without_text_features_is_refused():
    message = _config_error(_spec(encoder={"kind": "tiny"}))
    assert "encoder: this config declares no text features" in message
    spec = parse_spec(_spec())
    # Derived specs (json round trip for the Trainer, ensemble members) carry the default encoder and pass.
    assert type(spec).from_json(spec.to_json()) == spec


# --- reading the data --------------------------------------------------------------------------
def test_a_headerless_file_is_read_with_the_header_names_and_stripped_cells(tmp_path):
    source = _write(tmp_path / "in" / "people.data", ROWS)
    prepared = prepare(parse_spec(_spec()), [source], tmp_path / "out")
    frame = _read_prepared(prepared.csv)
    assert prepared.rows == 5 and list(frame.columns) == ["age", "hours", "job", "rid", "income", "status"]
    assert frame["job"].tolist() == ["Private", "Self-employed", "?", "Private", "Private"]
    assert frame["age"].tolist() == ["38", "44", "2", "51", "30"]
    # positive_values: 1 / 0 for present cells; empty cells stay missing (masked).
    assert frame["income"].tolist() == ["0", "1", "0", "1", ""]
    assert frame["status"].tolist() == ["0", "1", "1", "", "0"]
    assert prepared.label_counts == {"income": 4, "single": 4}


def test_a_row_with_another_number_of_fields_is_an_error_naming_file_and_row(tmp_path):
    rows = [*ROWS[:2], "3, 2, ?, 0, Never married, - 50000.", *ROWS[3:]]
    source = _write(tmp_path / "in" / "people.data", rows)
    with pytest.raises(DataError) as info:
        prepare(parse_spec(_spec()), [source], tmp_path / "out")
    message = str(info.value)
    assert message.startswith(f"{source}: the source's 'header' names 7 columns but row 3 has 6 fields"), message


def test_rows_of_a_headerless_file_are_counted_from_its_first_line(tmp_path):
    source = _write(tmp_path / "in" / "people.data", [*ROWS[:3], "4, old, Private, 45, , 1.0, 50000+."])
    with pytest.raises(DataError, match=r"column 'age' expects finite numbers; rows 4 hold e.g. 'old'"):
        prepare(parse_spec(_spec()), [source], tmp_path / "out")


def test_string_binary_labels_without_positive_values_are_refused_with_a_hint(tmp_path):
    data = _spec()
    del data["tasks"][0]["positive_values"]
    source = _write(tmp_path / "in" / "people.data", ROWS)
    with pytest.raises(DataError) as info:
        prepare(parse_spec(data), [source], tmp_path / "out")
    message = str(info.value)
    assert "column 'income' expects finite numbers; rows 1, 2, 3, 4 hold e.g. '- 50000.'" in message
    assert "(binary task 'income': for labels given as strings set the task's positive_values)" in message


def test_one_file_column_mapped_twice_feeds_two_differently_read_tasks(tmp_path):
    data = _spec()
    data["sources"][0]["columns"] = {"divorced": "status"}
    data["tasks"].append({"name": "divorced", "type": "binary", "label": "divorced", "positive_values": ["Divorced"]})
    source = _write(tmp_path / "in" / "people.data", ROWS)
    frame = _read_prepared(prepare(parse_spec(data), [source], tmp_path / "out").csv)
    assert frame["status"].tolist() == ["0", "1", "1", "", "0"]
    assert frame["divorced"].tolist() == ["0", "0", "0", "", "1"]


# --- the seeded split --------------------------------------------------------------------------
@pytest.mark.parametrize("rows, percent, expected", [(1000, 20, 200), (99762, 20, 19952), (7, 20, 1), (5, 10, 1),
                                                     (3, 50, 2)])
def test_seeded_split_holds_out_exactly_the_rounded_share(rows, percent, expected):
    assert seeded_split(rows, percent, 0).sum() == expected


def test_seeded_split_is_deterministic_per_seed():
    first = seeded_split(1000, 20, 0)
    assert first.dtype == bool and len(first) == 1000
    assert np.array_equal(first, seeded_split(1000, 20, 0))
    assert not np.array_equal(first, seeded_split(1000, 20, 1))
    # The documented recipe, so a benchmark can reproduce it without this module.
    expected = np.zeros(1000, bool)
    expected[np.random.default_rng(0).permutation(1000)[:200]] = True
    assert np.array_equal(first, expected)


def _people(n: int, seed: int = 0) -> list[str]:
    """n census-like rows with a learnable signal: income from age and hours, never married from age."""
    rng = np.random.default_rng(seed)
    lines = []
    for i in range(n):
        age, job = int(rng.integers(16, 80)), str(rng.choice(["Private", "Government", "Self-employed", "?"]))
        hours = int(rng.integers(0, 60))
        rich = (age > 35) and (hours > 35) and rng.random() < 0.85 or rng.random() < 0.05
        single = age < 28 if rng.random() < 0.9 else age >= 28
        status = "" if rng.random() < 0.05 else ("Never married" if single else str(rng.choice(["Divorced", "Widowed"])))
        lines.append(f"{i}, {age}, {job}, {hours}, {status}, {rng.random() * 2000:.2f}, "
                     f"{'50000+.' if rich else '- 50000.'}")
    return lines


def test_a_seeded_split_writes_train_and_eval_files_with_exactly_its_rows(tmp_path):
    spec = parse_spec(_spec(training={"split_seed": 7, "eval_split_percent": 25}))
    source = _write(tmp_path / "in" / "people.data", _people(200))
    out = tmp_path / "out"
    (out / "stale").mkdir(parents=True)
    prepared = prepare(spec, [source], out)
    assert prepared.csv is None and prepared.rows == 200
    assert prepared.splits == {"train": out / "train" / PREPARED_FILE, "eval": out / "eval" / PREPARED_FILE}
    assert prepared.files == list(prepared.splits.values())
    assert prepared.split_rows == {"train": 150, "eval": 50}
    assert sorted(p.name for p in out.iterdir()) == ["eval", "train"]
    is_eval = seeded_split(200, 25, 7)
    train, evals = (_read_prepared(prepared.splits[s]) for s in ("train", "eval"))
    assert train["rid"].astype(int).tolist() == np.flatnonzero(~is_eval).tolist()  # file order kept
    assert evals["rid"].astype(int).tolist() == np.flatnonzero(is_eval).tolist()
    assert prepared.label_counts == {"income": 200, "single": int((train["status"] != "").sum()
                                                                 + (evals["status"] != "").sum())}


def test_too_few_rows_for_a_seeded_split(tmp_path):
    spec = parse_spec(_spec(training={"split_seed": 0, "eval_split_percent": 20}))
    source = _write(tmp_path / "in" / "people.data", ROWS[:2])
    with pytest.raises(DataError, match="2 rows are too few to hold out 20% for eval"):
        prepare(spec, [source], tmp_path / "out")


def test_a_seeded_split_makes_example_gen_read_the_two_folders(tmp_path):
    from pipeline.pipeline import create_pipeline

    def example_gen(spec):
        pipeline = create_pipeline("p", str(tmp_path / "root"), str(tmp_path / "data"), spec,
                                   str(tmp_path / "serving"), str(tmp_path / "m.sqlite"))
        gen = next(c for c in pipeline.components if c.id == "CsvExampleGen")
        return json.loads(gen.exec_properties["input_config"]), json.loads(gen.exec_properties["output_config"])

    input_config, output_config = example_gen(parse_spec(_spec(training={"split_seed": 3})))
    assert input_config["splits"] == [{"name": "train", "pattern": "train/*"}, {"name": "eval", "pattern": "eval/*"}]
    assert output_config == {}  # the splits come from the input, no hashing
    input_config, output_config = example_gen(parse_spec(_spec()))
    assert [s["name"] for s in input_config["splits"]] == ["single_split"]
    assert [s["hash_buckets"] for s in output_config["split_config"]["splits"]] == [80, 20]


# --- models without text -----------------------------------------------------------------------
@pytest.mark.parametrize("architecture", ["shared_bottom", "mmoe", "ple"])
def test_a_tabular_network_has_no_text_inputs_and_no_encoder(architecture):
    from models import features
    from models.model import build_model

    spec = parse_spec(_spec(architecture={"type": architecture}))
    model = build_model(spec, {features.categorical_key("job"): 5, features.categorical_key("rid"): 9})
    names = set(model.network.input_names)
    assert names == {features.NUMERIC, features.categorical_key("job"), features.categorical_key("rid")}
    assert not any("encoder" in layer.name for layer in model.network.layers)
    batch = {features.NUMERIC: np.zeros((3, 4), np.float32), features.categorical_key("job"): np.array([0, 1, 4]),
             features.categorical_key("rid"): np.array([0, 8, 2])}
    outputs = model(batch, training=False)
    assert {k: tuple(v.shape) for k, v in outputs.items() if k in ("income", "single")} == {
        "income": (3,), "single": (3,)}


# --- the real census file ----------------------------------------------------------------------
@pytest.mark.skipif(not CENSUS_FILE.is_file(), reason=f"Census-Income (KDD) data not present at {CENSUS_FILE}")
def test_the_census_file_prepares_with_the_expected_label_rates(tmp_path):
    spec = load_spec(REPO / "configs" / "census.yaml")
    prepared = prepare(spec, [CENSUS_FILE], tmp_path / "prepared")
    assert prepared.rows == 99762
    assert prepared.label_counts == {"income": 99762, "marital": 99762}
    assert prepared.split_rows == {"train": 79810, "eval": 19952}
    frame = pd.concat([_read_prepared(prepared.splits[s]) for s in ("train", "eval")])
    assert list(frame.columns) == spec.input_columns()
    income, single = frame["income"].astype(int), frame["marital_stat"].astype(int)
    assert (income.sum(), single.sum()) == (6186, 43143)  # 6.2% earn > 50k, 43.2% never married
    assert 0.06 < income.mean() < 0.065 and 0.43 < single.mean() < 0.435
    assert all((frame[c] == frame[c].str.strip()).all() for c in frame.columns)  # every cell stripped
    assert (frame["country_of_birth_self"] == "?").sum() > 0  # unknown stays a category of its own
