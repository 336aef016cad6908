"""Benchmark: wall time of the main job per pipeline component, with the per-task metrics it reached.

    make bench            # runs configs/commerce.yaml into workdir-bench/
    .venv/bin/python bench/run_time.py --config configs/reviews.yaml --data ../shared/data

Writes bench/results/run_time.json and bench/results/run_time.md (data: the config's sources).
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

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.report import component_name, open_store  # noqa: E402


def component_seconds(metadata: Path) -> dict[str, float]:
    store = open_store(metadata)
    out = {}
    for execution in sorted(store.get_executions(), key=lambda e: e.create_time_since_epoch):
        out[component_name(store, execution)] = (execution.last_update_time_since_epoch - execution.create_time_since_epoch) / 1000.0
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/commerce.yaml")
    parser.add_argument("--data")
    parser.add_argument("--workdir", default="workdir-bench")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = parser.parse_args(argv)
    command = [sys.executable, "-m", "pipeline.cli", "run", "--config", args.config, "--workdir", args.workdir]
    if args.data:
        command += ["--data", args.data]
    started = time.monotonic()
    subprocess.run(command, cwd=ROOT, check=True)
    total = time.monotonic() - started
    workdir = ROOT / args.workdir if not Path(args.workdir).is_absolute() else Path(args.workdir)
    result = {
        "command": " ".join(command[1:]),
        "config": args.config,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "total_seconds": round(total, 1),
        "components_seconds": {k: round(v, 1) for k, v in component_seconds(workdir / "metadata.sqlite").items()},
        "metrics": json.loads((workdir / "reports" / "metrics.json").read_text()),
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = Path(args.config).stem
    (out / f"run_time_{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [f"# Run time: `{result['command']}`", "", f"Machine: {result['machine']}; total {total:.0f} s.", "",
             "| component | seconds | share |", "|---|---|---|"]
    lines += [f"| {k} | {v:.1f} | {v / total:.0%} |" for k, v in result["components_seconds"].items()]
    lines += ["", "| task | metrics |", "|---|---|"]
    lines += [f"| {t} | " + ", ".join(f"{k} {v:.4f}" for k, v in m.items()) + " |"
              for t, m in result["metrics"]["tasks"].items()]
    (out / f"run_time_{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
