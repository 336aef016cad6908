"""The command line fails fast and readably on bad input, before any TFX work starts."""
from __future__ import annotations

import csv
import re
import time
from pathlib import Path

import pytest
import yaml

from pipeline import cli
from pipeline.simulation import LABEL_COLUMNS, generate

CONFIG: dict = {
    "model_name": "shop",
    "sources": [{"path": "shop.csv", "columns": {"review": "Review Text"}}],
    "features": {"text": ["review"], "numeric": ["price"], "categorical": ["color"]},
    "tasks": [
        {"name": "bought", "type": "binary", "label": "bought", "blessing_threshold": 0.5},
        {"name": "spend", "type": "regression", "label": "spend"},
    ],
    "encoder": {"kind": "tiny"},
}
FAST_S = 20  # generous; a TFX run would take minutes


def _write_config(path: Path, data: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _main(argv: list[str]) -> tuple[int, float]:
    started = time.monotonic()
    code = cli.main(argv)
    return code, time.monotonic() - started


def _assert_no_tfx_output(workdir: Path) -> None:
    assert not (workdir / "pipeline").exists()
    assert not (workdir / "metadata.sqlite").exists()
    assert not (workdir / "serving_model").exists()


def test_run_with_a_typo_in_the_config(tmp_path, capsys):
    data = dict(CONFIG)
    data["sequnce_length"] = 32
    config = _write_config(tmp_path / "typo.yaml", data)
    workdir = tmp_path / "work"
    code, seconds = _main(["run", "--config", str(config), "--workdir", str(workdir)])
    captured = capsys.readouterr()
    assert code == 2
    assert seconds < FAST_S
    assert captured.err.startswith("commerce-mtl: error: ")
    assert str(config) in captured.err
    assert "sequnce_length" in captured.err
    assert "prepared" not in captured.out
    _assert_no_tfx_output(workdir)


def test_run_with_a_missing_config_file(tmp_path, capsys):
    config = tmp_path / "nowhere.yaml"
    code, _ = _main(["run", "--config", str(config), "--workdir", str(tmp_path / "work")])
    captured = capsys.readouterr()
    assert code == 2
    assert captured.err.strip() == f"commerce-mtl: error: {config}: config file not found"


def test_run_with_a_source_lacking_a_column(tmp_path, capsys):
    config = _write_config(tmp_path / "configs" / "shop.yaml", CONFIG)
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    csv_file = data_dir / "shop.csv"
    with csv_file.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["Review Text", "color", "bought", "spend"])  # no price
        writer.writerow(["nice", "red", "1", "3.5"])
    workdir = tmp_path / "work"
    code, seconds = _main(["run", "--config", str(config), "--data", str(data_dir), "--workdir", str(workdir)])
    captured = capsys.readouterr()
    assert code == 2
    assert seconds < FAST_S
    assert captured.err.startswith("commerce-mtl: error: ")
    assert str(csv_file) in captured.err
    assert "missing columns 'price'" in captured.err
    assert "prepared" not in captured.out
    _assert_no_tfx_output(workdir)


def test_run_resolves_relative_sources_against_the_config_folder(tmp_path, capsys):
    # Without --data, `path: shop.csv` is looked for next to the config; it is missing there.
    config = _write_config(tmp_path / "configs" / "shop.yaml", CONFIG)
    code, _ = _main(["run", "--config", str(config), "--workdir", str(tmp_path / "work")])
    captured = capsys.readouterr()
    assert code == 2
    assert f"{tmp_path / 'configs' / 'shop.csv'}: data file not found" in captured.err


def test_generate_writes_events_and_prints_label_counts(tmp_path, capsys):
    out = tmp_path / "gen"
    code, seconds = _main(["generate", "--rows", "50", "--seed", "1", "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 0
    assert seconds < FAST_S
    events = out / "events" / "events.csv"
    assert len(events.read_text().splitlines()) == 51
    assert f"wrote 50 events to {events}" in captured.out
    printed = dict(re.findall(r"(\w+)=(\d+)", captured.out.split("labels per task:")[1]))
    assert list(printed) == list(LABEL_COLUMNS)
    # The same (rows, seed) is deterministic, so the printed counts can be checked independently.
    expected = generate(50, 1, tmp_path / "again").label_counts
    assert {k: int(v) for k, v in printed.items()} == expected


def test_unknown_subcommand_is_an_argparse_error(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["train"])
    assert info.value.code == 2
    assert "invalid choice: 'train'" in capsys.readouterr().err
