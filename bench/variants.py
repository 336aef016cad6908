"""Benchmark: the multi-task variants side by side on the same generated data and training budget.

    make bench-variants                       # every config below, 10,000 generated events each
    .venv/bin/python bench/variants.py --rows 5000 --configs commerce mmoe_uncertainty

Runs `commerce-mtl run` once per config (configs/<name>.yaml, each into workdir-variants/<name>/) and
writes bench/results/variants.{json,md}: per task the Evaluator's metrics of every variant, and the wall
time of each run (one machine, one after the other).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SECONDS_FILE = "bench_seconds.txt"
DEFAULT_CONFIGS = ["commerce", "mmoe_uncertainty", "ple_gradnorm", "esmm", "pcgrad", "ensemble"]


def reused(name: str, workdir: Path) -> dict | None:
    """The result of an earlier run of this variant in `workdir`, if it left a report."""
    report, seconds = workdir / "reports" / "metrics.json", workdir / SECONDS_FILE
    if not report.is_file():
        return None
    return {"config": name, "seconds": float(seconds.read_text()) if seconds.is_file() else None,
            "report": json.loads(report.read_text()), "reused": True}


def run_variant(name: str, rows: int | None, workdir: Path, workers: int) -> dict:
    command = [sys.executable, "-m", "pipeline.cli", "run", "--config", f"configs/{name}.yaml",
               "--workdir", str(workdir), "--workers", str(workers)]
    if rows:
        command += ["--rows", str(rows)]
    print(f"== {name}: {' '.join(command[1:])}", flush=True)
    started = time.monotonic()
    proc = subprocess.run(command, cwd=ROOT)
    seconds = round(time.monotonic() - started, 1)
    (workdir / SECONDS_FILE).write_text(str(seconds))
    report_path = workdir / "reports" / "metrics.json"
    if not report_path.is_file():
        return {"config": name, "seconds": seconds, "failed": f"exit status {proc.returncode}, no report"}
    # A candidate the Evaluator did not bless still has metrics worth comparing; the table marks it.
    return {"config": name, "seconds": seconds, "report": json.loads(report_path.read_text())}


def markdown(results: list[dict], command: str) -> str:
    tasks = next((list(r["report"]["tasks"]) for r in results if "report" in r), [])
    lines = [f"# Multi-task variants side by side\n", f"`{command}` on {platform.machine()}, {os.cpu_count()} cores.\n",
             "| task | metric | " + " | ".join(r["config"] for r in results) + " |",
             "|---|---|" + "---|" * len(results)]
    metric_names = sorted({m for r in results if "report" in r for t in r["report"]["tasks"].values() for m in t})
    for task in tasks:
        for metric in [m for m in ("auc", "pr_auc", "log_loss", "accuracy", "rmse", "mae") if m in metric_names]:
            cells = []
            for r in results:
                value = r.get("report", {}).get("tasks", {}).get(task, {}).get(metric)
                cells.append("—" if value is None else f"{value:.4f}")
            if any(c != "—" for c in cells):
                lines.append(f"| {task} | {metric} | " + " | ".join(cells) + " |")
    lines.append("| (run) | pushed | " + " | ".join(
        str(r.get("report", {}).get("pushed", "—")).lower() for r in results) + " |")
    lines.append("| (run) | seconds | " + " | ".join(str(r["seconds"] or "—") for r in results) + " |")
    lines.append("| (run) | generated events | " + " | ".join(str(r.get("rows", "config")) for r in results) + " |")
    failed = [f"- {r['config']}: {r['failed']}" for r in results if "failed" in r]
    return "\n".join(lines + ([""] + failed if failed else [])) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", default=DEFAULT_CONFIGS,
                        help="config names; NAME:ROWS runs that one on ROWS generated events")
    parser.add_argument("--rows", type=int, help="generated events per run (default: each config's own)")
    parser.add_argument("--workdir", default="workdir-variants")
    parser.add_argument("--workers", type=int, default=1, help="Beam workers (1: in process, less CPU)")
    parser.add_argument("--reuse", action="store_true", help="take the report of a variant already run in --workdir")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = parser.parse_args(argv)
    base = Path(args.workdir) if Path(args.workdir).is_absolute() else ROOT / args.workdir
    results = []
    for item in args.configs:
        name, _, rows = item.partition(":")
        earlier = reused(name, base / name) if args.reuse else None
        results.append(earlier or run_variant(name, int(rows) if rows else args.rows, base / name, args.workers))
        if rows:
            results[-1]["rows"] = int(rows)
    command = "bench/variants.py " + " ".join(argv if argv is not None else sys.argv[1:])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "variants.json").write_text(json.dumps({"command": command, "results": results}, indent=2) + "\n")
    (out / "variants.md").write_text(markdown(results, command))
    print(markdown(results, command))
    return 0 if all(r.get("report", {}).get("pushed") for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
