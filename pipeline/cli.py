"""`commerce-mtl`: generate the simulated platform, or run the whole TFX pipeline on a config."""
from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

from models.spec import ConfigError, ProjectSpec, load_spec  # noqa: E402
from pipeline import configs  # noqa: E402


def _generate(args) -> int:
    from pipeline.simulation import generate

    data = generate(rows=args.rows, seed=args.seed, out_dir=args.out)
    print(f"wrote {data.rows} events to {data.events_csv} and Bayes-optimal probabilities to {data.oracle_csv}")
    print("labels per task: " + ", ".join(f"{k}={v}" for k, v in data.label_counts.items()))
    return 0


def source_files(spec: ProjectSpec, config_path: Path, data: Path | None, paths: configs.RunPaths) -> list[Path]:
    """The file behind each source: generated for `simulated`, else resolved against --data."""
    from pipeline.simulation import generate

    files = []
    for i, source in enumerate(spec.sources):
        if source.simulated is not None:
            out = paths.generated if len(spec.sources) == 1 else paths.generated / f"source{i}"
            files.append(generate(source.simulated.rows, source.simulated.seed, out).events_csv)
        elif data is not None and data.is_file():
            if len(spec.sources) != 1:
                raise ConfigError(f"--data {data} is a file but {config_path} declares {len(spec.sources)} sources")
            files.append(data)
        else:
            base = data if data is not None else config_path.parent
            files.append((base / source.path).expanduser().resolve())
    return files


def _run(args) -> int:
    config_path = Path(args.config).resolve()
    spec = load_spec(config_path)
    if args.rows is not None:
        spec = spec.model_copy(update={"sources": [
            s.model_copy(update={"simulated": s.simulated.model_copy(update={"rows": args.rows})})
            if s.simulated else s for s in spec.sources]})
    paths = configs.RunPaths(Path(args.workdir).resolve())
    started = time.monotonic()
    from pipeline.data_prep import prepare

    files = source_files(spec, config_path, Path(args.data).resolve() if args.data else None, paths)
    prepared = prepare(spec, files, paths.prepared)
    written = ", ".join(f"{path} ({prepared.split_rows[split]} rows)" for split, path in prepared.splits.items())
    print(f"prepared {prepared.rows} rows -> {written or prepared.csv}; labels per task: {prepared.label_counts}",
          flush=True)

    from tfx import v1 as tfx

    from pipeline.pipeline import create_pipeline
    from pipeline.report import RunError, copy_transfer_report, write_metrics_report

    beam_args = configs.default_beam_args(args.workers) + list(args.beam_arg or [])
    pipeline = create_pipeline(
        pipeline_name=spec.model_name,
        pipeline_root=str(paths.pipeline_root),
        data_root=str(paths.prepared),
        spec=spec,
        serving_model_dir=str(paths.serving_model_dir(spec.model_name)),
        metadata_path=str(paths.metadata),
        beam_pipeline_args=beam_args,
        baselines=args.baselines,
        oracle_csv=str(oracle_file(spec, files)) if args.baselines and oracle_file(spec, files) else None,
    )
    tfx.orchestration.LocalDagRunner().run(pipeline)
    transfer = copy_transfer_report(paths.metadata, paths.reports) if args.baselines else None
    if transfer is not None:
        _print_transfer(transfer, paths.reports)
    try:
        report = write_metrics_report(paths.metadata, spec, paths.reports, prepared.per_source)
    except RunError as err:
        print(f"commerce-mtl: {err}", file=sys.stderr)
        return 1
    print(f"\npushed {spec.model_name} version {report['version']} to {paths.serving_model_dir(spec.model_name)}")
    for task, metrics in report["tasks"].items():
        print(f"  {task:14s} " + "  ".join(f"{k}={v:.4f}" for k, v in metrics.items()))
    _print_sources(report["sources"])
    print(f"metrics: {paths.reports / 'metrics.json'}  ({time.monotonic() - started:.0f} s)")
    return 0


def oracle_file(spec: ProjectSpec, files: list[Path]) -> Path | None:
    """The Bayes-optimal probabilities of a single generated source (see pipeline/simulation.py)."""
    from pipeline.simulation import ORACLE_FILE

    if len(spec.sources) != 1 or spec.sources[0].simulated is None:
        return None
    path = files[0].parent.parent / ORACLE_FILE
    return path if path.is_file() else None


def _print_transfer(transfer: dict, reports: Path) -> None:
    """One line per task: multi-task vs single-task on the primary metric, with its 95% interval."""
    print("\ntransfer (multi-task minus single-task, 95% bootstrap interval):")
    for task, entry in transfer["tasks"].items():
        diff = entry["difference"]
        print(f"  {task:14s} {diff['metric']:10s} {diff['value']:+.4f} [{diff['low']:+.4f}, {diff['high']:+.4f}]"
              f"  {entry['transfer']}")
    print(f"transfer report: {reports / 'transfer.html'}")


def _print_sources(sources: dict[str, dict]) -> None:
    """Rows and labels per source; with several sources also the train/eval examples after sampling."""
    for name, counts in sources.items():
        splits = "".join(f"  {split}={counts[split]['examples']}" for split in ("train", "eval") if split in counts)
        weight = f"  weight={counts['sampling_weight']:g}" if "sampling_weight" in counts else ""
        labels = ", ".join(f"{task}={n}" for task, n in counts.get("labels", {}).items() if n)
        print(f"  source {name}: rows={counts.get('rows', '?')}{weight}{splits}  labels: {labels or 'none'}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="commerce-mtl", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    gen = sub.add_parser("generate", help="write the simulated e-commerce platform as CSV")
    gen.add_argument("--rows", type=int, default=configs.DEFAULT_ROWS)
    gen.add_argument("--seed", type=int, default=configs.DEFAULT_SEED)
    gen.add_argument("--out", default=str(Path(configs.DEFAULT_WORKDIR) / "data" / "generated"))
    gen.set_defaults(func=_generate)
    run = sub.add_parser("run", help="run the TFX pipeline and push a model for TF Serving")
    run.add_argument("--config", default=configs.DEFAULT_CONFIG)
    run.add_argument("--data", help="data file, or folder the config's relative source paths resolve against")
    run.add_argument("--workdir", default=configs.DEFAULT_WORKDIR)
    run.add_argument("--rows", type=int, help="override the rows of simulated sources")
    run.add_argument("--workers", type=int, default=2, help="Beam DirectRunner worker processes")
    run.add_argument("--beam-arg", action="append", help="extra Beam pipeline argument (repeatable)")
    run.add_argument("--baselines", action="store_true",
                     help="also train one single-task model per task and write reports/transfer.{json,md,html}")
    run.set_defaults(func=_run)
    for name, (_, help_text) in _DELEGATED.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


# Subcommands implemented in serving/, each with its own argparse (so `--help` shows their flags).
_DELEGATED = {
    "serve": ("serving.server", "run a TF Serving-compatible gRPC/REST model server"),
    "predict": ("serving.client", "call a model server (ours or TF Serving) over gRPC"),
    "batch-predict": ("serving.batch_predict", "score files with Beam RunInference on a SavedModel"),
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in _DELEGATED:
        import importlib

        return importlib.import_module(_DELEGATED[argv[0]][0]).main(argv[1:])
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    args = build_parser().parse_args(argv)
    from components.anomalies_gate import DataAnomaliesError
    from models.encoders import EncoderError
    from pipeline.data_prep import DataError

    try:
        return args.func(args)
    except (ConfigError, DataError, EncoderError, DataAnomaliesError) as err:
        print(f"commerce-mtl: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
