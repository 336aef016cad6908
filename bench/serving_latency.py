"""Benchmark: Predict latency at batch 1 through `commerce-mtl serve` (gRPC, stock client) next to
calling the same SavedModel in-process, on the same machine and rows.

    .venv/bin/python bench/serving_latency.py --model-base-path workdir/serving_model/commerce \
        --data workdir/data/prepared/data.csv [--requests 300]

Writes bench/results/serving_latency.json and .md.
"""
from __future__ import annotations

import argparse
import csv
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

import numpy as np  # noqa: E402
import portpicker  # noqa: E402
import tensorflow as tf  # noqa: E402
import tensorflow_text  # noqa: E402,F401

from serving.client import ModelClient  # noqa: E402
from serving.examples import load_raw_features, to_examples  # noqa: E402
from serving.manager import discover_versions  # noqa: E402


def percentiles(seconds: list[float]) -> dict[str, float]:
    ms = np.array(seconds) * 1000
    return {"p50_ms": round(float(np.percentile(ms, 50)), 2), "p99_ms": round(float(np.percentile(ms, 99)), 2),
            "mean_ms": round(float(ms.mean()), 2)}


def timed(fn, items, warmup: int = 10) -> list[float]:
    for item in items[:warmup]:
        fn(item)
    out = []
    for item in items:
        start = time.perf_counter()
        fn(item)
        out.append(time.perf_counter() - start)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-base-path", required=True, type=Path)
    p.add_argument("--data", required=True, type=Path, help="CSV rows with the model's raw feature columns")
    p.add_argument("--requests", type=int, default=300)
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = p.parse_args(argv)
    base = args.model_base_path.resolve()
    versions = discover_versions(str(base))
    if not versions:
        raise SystemExit(f"{base}: no numbered version directory with a saved_model.pb")
    version_dir = Path(versions[max(versions)])
    with open(args.data, newline="") as f:
        rows = [r for _, r in zip(range(args.requests), csv.DictReader(f))]
    examples = to_examples(rows, load_raw_features(str(version_dir)))

    loaded = tf.saved_model.load(str(version_dir))
    serving_default = loaded.signatures["serving_default"]
    in_process = timed(lambda e: serving_default(examples=tf.constant([e])), examples)

    port = portpicker.pick_unused_port()
    server = subprocess.Popen([sys.executable, "-m", "serving.server", "--port", str(port), "--rest-api-port", "0",
                               "--model-name", base.name, "--model-base-path", str(base)],
                              cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = ModelClient(f"127.0.0.1:{port}")
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            try:
                if any(s.state == 30 for s in client.status(base.name).model_version_status):
                    break
            except Exception:  # noqa: BLE001 - not up yet
                time.sleep(0.5)
        grpc_times = timed(lambda e: client.predict(base.name, {"examples": np.array([e], dtype=object)}), examples)
    finally:
        client.close()
        server.terminate()
        server.wait()

    result = {
        "command": "bench/serving_latency.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "model": str(version_dir), "data": str(args.data), "requests": len(examples),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "in_process_batch1": percentiles(in_process), "grpc_predict_batch1": percentiles(grpc_times),
    }
    result["grpc_over_in_process_p50"] = round(result["grpc_predict_batch1"]["p50_ms"]
                                               / result["in_process_batch1"]["p50_ms"], 2)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "serving_latency.json").write_text(json.dumps(result, indent=2) + "\n")
    md = [f"# Predict latency at batch 1 ({len(examples)} requests, one run)", "",
          f"Model `{version_dir}`, rows from `{args.data}`, {result['machine']}.", "",
          "| path | p50 ms | p99 ms | mean ms |", "|---|---|---|---|"]
    for key, label in (("in_process_batch1", "SavedModel in-process"), ("grpc_predict_batch1", "gRPC Predict, commerce-mtl serve")):
        r = result[key]
        md.append(f"| {label} | {r['p50_ms']} | {r['p99_ms']} | {r['mean_ms']} |")
    md += ["", f"gRPC p50 / in-process p50 = {result['grpc_over_in_process_p50']}"]
    (args.out / "serving_latency.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
