"""Settings of a pipeline run that are not part of the model declaration (paths, Beam)."""
from __future__ import annotations

import dataclasses
from pathlib import Path

DEFAULT_CONFIG = "configs/commerce.yaml"
DEFAULT_WORKDIR = "workdir"
DEFAULT_ROWS = 10000
DEFAULT_SEED = 0

PREPROCESSING_FN = "models.preprocessing.preprocessing_fn"
RUN_FN = "models.model.run_fn"


def default_beam_args(workers: int = 2) -> list[str]:
    if workers <= 1:
        # One worker: run in this process; spares starting (and importing TF in) worker processes.
        return ["--direct_running_mode=in_memory", "--direct_num_workers=1"]
    return [
        "--direct_running_mode=multi_processing",
        f"--direct_num_workers={workers}",
    ]


@dataclasses.dataclass(frozen=True)
class RunPaths:
    """Where one run writes, all under a single work directory."""

    workdir: Path

    @property
    def data(self) -> Path:
        return self.workdir / "data"

    @property
    def generated(self) -> Path:
        return self.data / "generated"

    @property
    def prepared(self) -> Path:
        # The only folder CsvExampleGen reads: every file in it is training data.
        return self.data / "prepared"

    @property
    def pipeline_root(self) -> Path:
        return self.workdir / "pipeline"

    @property
    def metadata(self) -> Path:
        return self.workdir / "metadata.sqlite"

    @property
    def serving_root(self) -> Path:
        return self.workdir / "serving_model"

    @property
    def reports(self) -> Path:
        return self.workdir / "reports"

    def serving_model_dir(self, model_name: str) -> Path:
        return self.serving_root / model_name
