"""Reads TF Serving's `--model_config_file` (a text-format `ModelServerConfig` with a `model_config_list`)."""
from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2

_TENSORFLOW = "tensorflow"


@dataclasses.dataclass(frozen=True)
class ModelEntry:
    """One served model.

    version_policy is ("latest", n), ("all", None) or ("specific", (v1, v2, ...)); TF Serving's
    default, when the config sets none, is ("latest", 1).
    """

    name: str
    base_path: str
    version_policy: tuple
    version_labels: dict[str, int] = dataclasses.field(default_factory=dict)


def _version_policy(config, fail) -> tuple:
    if not config.HasField("model_version_policy"):
        return ("latest", 1)
    policy = config.model_version_policy
    kind = policy.WhichOneof("policy_choice")
    if kind == "all":
        return ("all", None)
    if kind == "specific":
        versions = tuple(sorted(set(policy.specific.versions)))
        if not versions:
            fail("model_version_policy specific lists no versions")
        return ("specific", versions)
    # latest, or an empty model_version_policy {}: TF Serving serves max(num_versions, 1) versions.
    return ("latest", max(policy.latest.num_versions, 1))


def parse_model_config(text: str, source: str = "<model config>", base_dir: str | Path = ".") -> list[ModelEntry]:
    """Parses the text of a model config file; relative base paths are resolved against base_dir."""
    config = model_server_config_pb2.ModelServerConfig()
    try:
        text_format.Parse(text, config)
    except text_format.ParseError as e:
        line = e.GetLine()
        reason = re.sub(r"^\d+:\d+ : ", "", str(e))
        raise ValueError(f"{source}:{line}: {reason}" if line is not None else f"{source}: {reason}") from None
    if config.HasField("custom_model_config"):
        raise ValueError(f"{source}: custom_model_config is not supported; list the models in model_config_list")
    if not config.model_config_list.config:
        raise ValueError(f"{source}: model_config_list declares no model")

    entries: list[ModelEntry] = []
    seen: set[str] = set()
    for index, model in enumerate(config.model_config_list.config):
        label = f"model {model.name!r}" if model.name else f"model #{index + 1}"

        def fail(problem: str):
            raise ValueError(f"{source}: {label}: {problem}")

        if not model.name.strip():
            fail("name is empty")
        if model.name in seen:
            fail("listed more than once (model names must be unique)")
        seen.add(model.name)
        if not model.base_path.strip():
            fail("base_path is empty")
        # The deprecated `model_type: TENSORFLOW` (without model_platform) means the same as TF Serving's
        # model_platform "tensorflow"; anything else needs a platform this deployment does not run.
        deprecated_tf = model.model_type == model_server_config_pb2.TENSORFLOW and not model.model_platform
        if not deprecated_tf and model.model_platform != _TENSORFLOW:
            fail(f"model_platform must be {_TENSORFLOW!r}, got {model.model_platform!r}")
        policy = _version_policy(model, fail)
        labels = dict(model.version_labels)
        if policy[0] == "specific":
            unknown = {k: v for k, v in labels.items() if v not in policy[1]}
            if unknown:
                fail(f"version_labels {unknown} point at versions the specific policy {list(policy[1])} "
                     "does not load")
        base = Path(model.base_path)
        if not base.is_absolute() and "://" not in model.base_path:
            base = Path(base_dir) / base
        entries.append(ModelEntry(
            name=model.name,
            base_path=model.base_path if "://" in model.base_path else str(base),
            version_policy=policy,
            version_labels=labels,
        ))
    return entries


def load_model_config(path: str | Path) -> list[ModelEntry]:
    """Reads a `--model_config_file`; ValueError names the file and the problem."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise ValueError(f"{path}: cannot read the model config file ({e.strerror})") from None
    return parse_model_config(text, str(path), path.resolve().parent)
