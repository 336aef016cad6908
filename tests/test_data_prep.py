"""Tests of pipeline/data_prep.py: the CSV ExampleGen reads, and the errors for bad input."""
from __future__ import annotations

import copy
import csv
import gzip
import re
from pathlib import Path

import pandas as pd
import pytest

from models.spec import load_spec, parse_spec
from pipeline.data_prep import PREPARED_FILE, DataError, prepare
from pipeline.simulation import generate

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
REVIEWS_CSV = SHARED_DATA / "womens_clothing_reviews" / "womens_clothing_ecommerce_reviews.csv.gz"

SPEC_DICT: dict = {
    "model_name": "shop",
    "sources": [{"path": "shop.csv", "columns": {"review": "Review Text", "price": "Price"}}],
    "features": {"text": ["review"], "numeric": ["price"], "categorical": ["color"]},
    "tasks": [
        {"name": "bought", "type": "binary", "label": "bought", "blessing_threshold": 0.5},
        {"name": "stars", "type": "multiclass", "label": "stars", "classes": ["1", "2", "3", "4", "5"]},
        {"name": "spend", "type": "regression", "label": "spend"},
    ],
}
SPEC = parse_spec(SPEC_DICT)
# Prepared columns: features in declaration order, then the labels sorted.
PREPARED_COLUMNS = ["review", "price", "color", "bought", "spend", "stars"]

HEADER = ["id", "stars", "Review Text", "color", "spend", "bought", "Price", "unused"]
GOOD_ROWS = [
    ["a1", "5", "Lovely dress", "red", "12.5", "1", "19.99", "x"],
    ["a2", "3", "Too small", "blue", "0", "0", "25", "y"],
    ["a3", "4", "Fine", "green", "3", "1", "10.0", "z"],
]


def _write_csv(path: Path, rows: list[list[str]], header: list[str] = HEADER) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "wt", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)
    return path


def _read_prepared(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, dtype=str, keep_default_na=False)


def _prepare(tmp_path: Path, rows: list[list[str]], spec=SPEC, name: str = "shop.csv", header=HEADER):
    source = _write_csv(tmp_path / "in" / name, rows, header)
    return prepare(spec, [source], tmp_path / "out"), source


def _data_error(tmp_path: Path, rows: list[list[str]], **kwargs) -> tuple[str, Path]:
    source = _write_csv(tmp_path / "in" / "shop.csv", rows, kwargs.pop("header", HEADER))
    with pytest.raises(DataError) as info:
        prepare(kwargs.pop("spec", SPEC), [source], tmp_path / "out")
    return str(info.value), source


# --- the prepared file -------------------------------------------------------------------------
def test_prepared_csv_has_the_spec_columns_in_order_and_renamed(tmp_path):
    prepared, _ = _prepare(tmp_path, GOOD_ROWS)
    assert SPEC.input_columns() == PREPARED_COLUMNS
    assert prepared.csv == tmp_path / "out" / PREPARED_FILE
    assert prepared.csv.read_text().splitlines()[0] == ",".join(PREPARED_COLUMNS)
    frame = _read_prepared(prepared.csv)
    assert list(frame.columns) == PREPARED_COLUMNS
    assert prepared.rows == 3
    assert frame["review"].tolist() == ["Lovely dress", "Too small", "Fine"]
    assert frame["color"].tolist() == ["red", "blue", "green"]
    assert frame["stars"].tolist() == ["5", "3", "4"]
    assert prepared.label_counts == {"bought": 3, "stars": 3, "spend": 3}


def test_line_breaks_inside_quoted_text_become_spaces(tmp_path):
    rows = [
        ["a1", "5", "Great dress.\nWould buy again", "red", "1", "1", "10", ""],
        ["a2", "4", "  Windows\r\nline  break\n\n  and\ttab  ", "dark\nblue", "2", "0", "11", ""],
        ["a3", "3", "plain", "red", "3", "1", "12", ""],
    ]
    prepared, source = _prepare(tmp_path, rows)
    assert len(source.read_text().splitlines()) > 4  # the input really holds multi-line cells
    lines = prepared.csv.read_text().split("\n")
    assert lines[-1] == "" and len(lines) == 5  # header + one physical line per row
    frame = _read_prepared(prepared.csv)
    assert frame["review"].tolist() == ["Great dress. Would buy again", "Windows line break and tab", "plain"]
    assert frame["color"].tolist()[1] == "dark blue"
    assert "\r" not in prepared.csv.read_text()


def test_gzipped_csv_input(tmp_path):
    prepared, source = _prepare(tmp_path, GOOD_ROWS, name="shop.csv.gz")
    assert source.read_bytes()[:2] == b"\x1f\x8b"  # really gzip
    frame = _read_prepared(prepared.csv)
    assert list(frame.columns) == PREPARED_COLUMNS
    assert frame["review"].tolist() == ["Lovely dress", "Too small", "Fine"]
    assert prepared.rows == 3


def test_empty_label_cells_stay_empty_and_are_not_counted(tmp_path):
    rows = [
        ["a1", "5", "only stars", "red", "", "", "10", ""],
        ["a2", "", "only bought", "red", "", "0", "11", ""],
        ["a3", "", "only spend", "red", "7", "", "12", ""],
        ["a4", "2", "all three", "red", "1.5", "1", "13", ""],
    ]
    prepared, _ = _prepare(tmp_path, rows)
    frame = _read_prepared(prepared.csv)
    assert frame["bought"].tolist() == ["", "0", "", "1"]
    assert frame["stars"].tolist() == ["5", "", "", "2"]
    assert frame["spend"].tolist() == ["", "", "7.0", "1.5"]
    assert prepared.label_counts == {"bought": 2, "stars": 2, "spend": 2}
    assert prepared.rows == 4


def test_empty_feature_cells_stay_empty(tmp_path):
    rows = [["a1", "5", "", "", "1", "1", "", ""], ["a2", "4", "text", "red", "2", "0", "3", ""]]
    prepared, _ = _prepare(tmp_path, rows)
    frame = _read_prepared(prepared.csv)
    assert frame["review"].tolist() == ["", "text"]
    assert frame["color"].tolist() == ["", "red"]
    assert frame["price"].tolist() == ["", "3"]


def test_multiclass_labels_written_as_floats_are_normalised(tmp_path):
    rows = [
        ["a1", "5.0", "x", "red", "1", "1", "10", ""],
        ["a2", "3", "y", "red", "1", "1", "10", ""],
        ["a3", " 2.0", "z", "red", "1", "1", "10", ""],
    ]
    prepared, _ = _prepare(tmp_path, rows)
    assert _read_prepared(prepared.csv)["stars"].tolist() == ["5", "3", "2"]


def test_integer_valued_float_columns_are_written_as_ints(tmp_path):
    rows = [
        ["a1", "5", "x", "red", "3.0", "1.0", "10.0", ""],
        ["a2", "4", "y", "red", "4", "0.0", "12", ""],
    ]
    prepared, _ = _prepare(tmp_path, rows)
    text = prepared.csv.read_text().splitlines()
    assert text[1] == "x,10,red,1,3,5"
    assert text[2] == "y,12,red,0,4,4"


def test_fractional_columns_keep_their_decimals(tmp_path):
    rows = [
        ["a1", "5", "x", "red", "3.25", "1", "10.5", ""],
        ["a2", "4", "y", "red", "4", "0", "12", ""],
    ]
    prepared, _ = _prepare(tmp_path, rows)
    frame = _read_prepared(prepared.csv)
    assert frame["price"].tolist() == ["10.5", "12.0"]
    assert frame["spend"].tolist() == ["3.25", "4.0"]
    assert frame["bought"].tolist() == ["1", "0"]


def test_text_that_looks_like_a_number_or_na_is_kept_verbatim(tmp_path):
    rows = [["a1", "5", "NA", "None", "1", "1", "10", ""], ["a2", "4", "007", "null", "1", "1", "10", ""]]
    prepared, _ = _prepare(tmp_path, rows)
    frame = _read_prepared(prepared.csv)
    assert frame["review"].tolist() == ["NA", "007"]
    assert frame["color"].tolist() == ["None", "null"]


def test_stale_files_in_the_output_folder_are_removed(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "old_events.csv").write_text("a,b\n1,2\n")
    prepared, _ = _prepare(tmp_path, GOOD_ROWS)
    assert sorted(p.name for p in out.iterdir()) == [PREPARED_FILE]
    assert prepared.rows == 3


def test_two_sources_are_unioned_in_order(tmp_path):
    data = copy.deepcopy(SPEC_DICT)
    data["sources"].append({"path": "other.csv"})  # already uses the project's column names
    spec = parse_spec(data)
    first = _write_csv(tmp_path / "in" / "shop.csv", GOOD_ROWS[:2])
    second = _write_csv(tmp_path / "in" / "other.csv", [["1", "4", "blue", "from other", "", "20"]],
                        header=["bought", "stars", "color", "review", "spend", "price"])
    prepared = prepare(spec, [first, second], tmp_path / "out")
    frame = _read_prepared(prepared.csv)
    # Several sources: each row says where it came from.
    assert list(frame.columns) == PREPARED_COLUMNS + ["source"]
    assert frame["source"].tolist() == ["shop", "shop", "other"]
    assert frame["review"].tolist() == ["Lovely dress", "Too small", "from other"]
    assert frame["price"].tolist() == ["19.99", "25.0", "20.0"]
    assert prepared.rows == 3
    assert prepared.label_counts == {"bought": 3, "stars": 3, "spend": 2}


# --- errors: file, column and 1-based line (the header is line 1) ------------------------------
def test_missing_mapped_column_lists_the_file_columns(tmp_path):
    header = ["id", "stars", "Review", "color", "spend", "bought", "Price", "unused"]
    message, source = _data_error(tmp_path, GOOD_ROWS, header=header)
    assert message.startswith(f"{source}: missing columns")
    assert "'Review Text' (for 'review')" in message
    assert str(header) in message  # what the file has, so the user can fix the mapping


def test_missing_unmapped_column(tmp_path):
    header = ["id", "stars", "Review Text", "colour", "spend", "bought", "Price", "unused"]
    message, source = _data_error(tmp_path, GOOD_ROWS, header=header)
    assert message.startswith(f"{source}: missing columns 'color';")
    assert "(for" not in message
    assert "'colour'" in message


def test_non_numeric_value_in_a_numeric_feature(tmp_path):
    rows = [*GOOD_ROWS, ["a4", "4", "ok", "red", "1", "1", "12 EUR", ""]]
    message, source = _data_error(tmp_path, rows)
    assert source.name in message
    assert "column 'price' expects finite numbers" in message
    assert "rows 5 " in message  # header line 1, three good rows, then the bad one
    assert "'12 EUR'" in message


def test_non_numeric_regression_label(tmp_path):
    rows = [["a1", "4", "ok", "red", "lots", "1", "12", ""], *GOOD_ROWS]
    message, source = _data_error(tmp_path, rows)
    assert source.name in message
    assert "column 'spend' expects finite numbers; rows 2 " in message
    assert "'lots'" in message


def test_line_numbers_follow_records_after_a_multi_line_cell(tmp_path):
    # Rows are counted as CSV records (header = 1), not physical lines of the file.
    rows = [["a1", "4", "two\nlines", "red", "1", "1", "12", ""], ["a2", "4", "ok", "red", "1", "1", "oops", ""]]
    message, _ = _data_error(tmp_path, rows)
    assert "rows 3 " in message


def test_binary_label_outside_zero_one(tmp_path):
    rows = [*GOOD_ROWS, ["a4", "4", "ok", "red", "1", "2", "12", ""]]
    message, source = _data_error(tmp_path, rows)
    assert source.name in message
    assert "column 'bought' (binary task 'bought') must be 0 or 1" in message
    assert "rows 5 " in message
    assert "'2'" in message


def test_multiclass_value_not_in_classes(tmp_path):
    rows = [GOOD_ROWS[0], ["a2", "6", "ok", "red", "1", "1", "12", ""], *GOOD_ROWS[1:]]
    message, source = _data_error(tmp_path, rows)
    assert source.name in message
    assert "column 'stars' (task 'stars') must be one of ['1', '2', '3', '4', '5']" in message
    assert "rows 3 " in message
    assert "'6'" in message


def test_many_bad_rows_are_summarised(tmp_path):
    rows = [["a", "4", "ok", "red", "1", "7", "12", ""] for _ in range(8)]
    message, _ = _data_error(tmp_path, rows)
    assert "rows 2, 3, 4, 5, 6 and 3 more" in message


def test_row_without_any_label(tmp_path):
    rows = [*GOOD_ROWS[:2], ["a9", "", "no labels", "red", "", "", "12", ""], GOOD_ROWS[2]]
    message, source = _data_error(tmp_path, rows)
    assert message.startswith(str(source))
    assert re.search(r"rows 4 carry no label for any task", message), message
    for column in ("bought", "spend", "stars"):
        assert column in message


def test_missing_file(tmp_path):
    missing = tmp_path / "in" / "nowhere.csv"
    with pytest.raises(DataError) as info:
        prepare(SPEC, [missing], tmp_path / "out")
    assert str(info.value) == f"{missing}: data file not found"
    assert not (tmp_path / "out").exists()


def test_a_bad_second_source_is_named(tmp_path):
    data = copy.deepcopy(SPEC_DICT)
    data["sources"].append({"path": "other.csv"})
    spec = parse_spec(data)
    first = _write_csv(tmp_path / "in" / "shop.csv", GOOD_ROWS)
    second = _write_csv(tmp_path / "in" / "other.csv", [["1", "4", "blue", "x", "", "20"],
                                                        ["1", "9", "blue", "y", "", "20"]],
                        header=["bought", "stars", "color", "review", "spend", "price"])
    with pytest.raises(DataError) as info:
        prepare(spec, [first, second], tmp_path / "out")
    message = str(info.value)
    assert message.startswith(f"{second}:")
    assert "column 'stars'" in message and "rows 3 " in message


def test_data_error_is_a_value_error():
    assert issubclass(DataError, ValueError)


# --- real inputs -------------------------------------------------------------------------------
def test_simulated_platform_with_the_commerce_config(tmp_path):
    spec = load_spec(REPO / "configs" / "commerce.yaml")
    generated = generate(300, 0, tmp_path / "generated")
    prepared = prepare(spec, [generated.events_csv], tmp_path / "prepared")
    assert prepared.rows == 300
    frame = _read_prepared(prepared.csv)
    assert len(frame) == 300
    # generated rows keep their event_id (the oracle file's key), after the spec's columns
    assert list(frame.columns) == spec.input_columns() + ["event_id"]
    events = pd.read_csv(generated.events_csv, dtype=str, keep_default_na=False)
    assert frame["event_id"].tolist() == events["event_id"].tolist()
    # Tasks are named after their label columns in this config.
    assert prepared.label_counts == {t.name: generated.label_counts[t.label] for t in spec.tasks}
    assert set(frame["click"]) <= {"", "0", "1"}
    assert set(frame["intent"]) - {""} <= set(spec.task("intent").classes)
    assert len(prepared.csv.read_text().splitlines()) == 301


@pytest.mark.skipif(not REVIEWS_CSV.is_file(),
                    reason=f"Women's clothing reviews data not present at {REVIEWS_CSV}")
def test_womens_clothing_reviews(tmp_path):
    spec = load_spec(REPO / "configs" / "reviews.yaml")
    prepared = prepare(spec, [REVIEWS_CSV], tmp_path / "prepared")
    assert prepared.rows == 23486
    assert prepared.label_counts == {"recommended": 23486, "rating": 23486, "positive_feedback": 23486}
    # configs/reviews.yaml splits 80/20 by split_seed: two files, one line per review (plus the header)
    assert prepared.split_rows == {"train": 18789, "eval": 4697}
    assert [len(f.read_text().splitlines()) for f in prepared.files] == [18789 + 1, 4697 + 1]
    frame = pd.concat([_read_prepared(f) for f in prepared.files])
    assert list(frame.columns) == spec.input_columns()
    assert len(frame) == 23486
    for column in spec.features.text:
        assert not frame[column].str.contains(r"[\r\n]").any(), column
    assert (frame["review_text"] == "").sum() > 0  # reviews with a title or rating only are kept
    assert set(frame["rating"]) == {"1", "2", "3", "4", "5"}
    assert set(frame["recommended"]) == {"0", "1"}
    assert frame["positive_feedback"].str.fullmatch(r"\d+").all()
    assert frame["age"].str.fullmatch(r"\d+").all()


def test_infinite_numbers_are_refused(tmp_path):
    rows = [*GOOD_ROWS, ["a4", "4", "ok", "red", "1", "1", "inf", ""]]
    message, source = _data_error(tmp_path, rows)
    assert "column 'price' expects finite numbers; rows 5 " in message and "'inf'" in message


def test_negative_label_for_a_log1p_task_is_refused(tmp_path):
    spec = copy.deepcopy(SPEC_DICT)
    spec["tasks"][2]["label_transform"] = "log1p"
    rows = [*GOOD_ROWS, ["a4", "4", "ok", "red", "-3", "1", "12", ""]]
    message, _ = _data_error(tmp_path, rows, spec=parse_spec(spec))
    assert "column 'spend' (task 'spend', log1p) must be >= 0; rows 5 " in message


def test_huge_whole_numbers_stay_floats(tmp_path):
    rows = [*GOOD_ROWS[:2], ["a3", "4", "Fine", "green", "3", "1", "1e20"]  + [""]]
    prepared, _ = _prepare(tmp_path, rows)
    assert _read_prepared(prepared.csv)["price"].iloc[2] == "1e+20"


def test_fewer_files_than_sources_is_an_error(tmp_path):
    with pytest.raises(DataError, match="0 data files given for 1 configured sources"):
        prepare(SPEC, [], tmp_path / "out")


# --- row ids: carried into the examples so reports can join rows with other files ----------------
def _with_row_id(row_id: str) -> object:
    data = copy.deepcopy(SPEC_DICT)
    data["sources"][0]["row_id"] = row_id
    return parse_spec(data)


def test_a_row_id_column_is_carried_after_the_spec_columns(tmp_path):
    prepared, _ = _prepare(tmp_path, GOOD_ROWS, spec=_with_row_id("id"))
    frame = _read_prepared(prepared.csv)
    assert list(frame.columns) == PREPARED_COLUMNS + ["id"]
    assert frame["id"].tolist() == ["a1", "a2", "a3"]


def test_row_ids_must_be_filled_and_unique(tmp_path):
    rows = copy.deepcopy(GOOD_ROWS)
    rows[2][0] = "a1"
    with pytest.raises(DataError, match=r"column 'id' names rows \(row_id\) and must be filled and unique; "
                                        r"rows 2, 4 hold e.g. 'a1'"):
        _prepare(tmp_path, rows, spec=_with_row_id("id"))



def test_a_negative_value_in_a_log1p_column_is_refused(tmp_path):
    data = copy.deepcopy(SPEC_DICT)
    data["features"]["log1p"] = ["price"]
    rows = copy.deepcopy(GOOD_ROWS)
    rows[1][6] = "-2"
    with pytest.raises(DataError, match=r"column 'price' is a log1p feature and must be >= 0; rows 3 hold e.g. '-2'"):
        _prepare(tmp_path, rows, spec=parse_spec(data))
