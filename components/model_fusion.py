"""ModelFusion: fuses the ensemble members' trained models into one Model artifact.

Inputs are the members' `Model` artifacts as one unioned channel (`tfx.types.channel_utils.union` of
the per-member Trainers' outputs, received as `InputArtifact[List[Model]]`), and the Examples whose
`eval` split the weights are fitted on. A union does not keep order, so each model says which member
it is: the pipeline tags every member Trainer's output with the `ensemble_member` custom property
(`tag_member_output`); the Trainer's node directory (`.../Trainer.<member>/model/<id>`) is the fallback.

The output `Model` has the layout a Trainer writes (the SavedModel under `Format-Serving/`), so the
Evaluator and Pusher take it like any other, plus `fusion.json` (method, members, fitted weights or
band, member and fused eval losses).
"""
# No `from __future__ import annotations`: the TFX component decorator reads the real type hints.
import json
import logging
import os
from typing import List

from tfx import v1 as tfx
from tfx.types import artifact_utils
from tfx.utils import path_utils

MEMBER_PROPERTY = "ensemble_member"
TRAINER_PREFIX = "Trainer."
FUSION_FILE = "fusion.json"
WARMUP_ROWS = 8


def member_trainer_id(member: str) -> str:
    return f"{TRAINER_PREFIX}{member}"


def tag_member_output(model_channel, member: str) -> None:
    """Marks every Model a member's Trainer outputs with the member name (read by ModelFusion)."""
    model_channel.additional_custom_properties = {
        **model_channel.additional_custom_properties, MEMBER_PROPERTY: member}


def member_name(model) -> str:
    """The ensemble member a Model artifact belongs to: its custom property, else its Trainer's node id."""
    if model.has_custom_property(MEMBER_PROPERTY):
        return model.get_string_custom_property(MEMBER_PROPERTY)
    node = os.path.basename(os.path.dirname(os.path.dirname(model.uri.rstrip("/"))))
    if node.startswith(TRAINER_PREFIX):
        return node[len(TRAINER_PREFIX):]
    raise ValueError(f"model {model.uri} carries no {MEMBER_PROPERTY!r} property and was not written by a "
                     f"'{TRAINER_PREFIX}<member>' Trainer: cannot tell which ensemble member it is")


def member_dirs(models: list) -> dict[str, str]:
    """{member: its serving SavedModel directory}; two models claiming one member is an error."""
    dirs: dict[str, str] = {}
    for model in models:
        name = member_name(model)
        if name in dirs:
            raise ValueError(f"two models for ensemble member {name!r}: {dirs[name]} and {model.uri}")
        dirs[name] = path_utils.serving_model_path(model.uri, path_utils.is_old_model_artifact(model))
    return dirs


def check_member_tokenizers(spec) -> None:
    """One Transform (tokenizing with the project's encoder vocabulary) feeds every member, so a member
    may swap the encoder only for one with the same vocabulary: other token ids would be wrong for it."""
    from models.encoders import resolve_assets
    from models.spec import ConfigError

    if not spec.features.text:
        return  # no text, no tokenizer
    project = resolve_assets(spec.encoder)
    for member in spec.ensemble.members if spec.ensemble else []:
        if member.encoder is None:
            continue
        assets = resolve_assets(member.encoder)
        if (assets.vocab_file.read_bytes(), assets.lower_case) != (project.vocab_file.read_bytes(), project.lower_case):
            raise ConfigError(f"ensemble member {member.name!r} uses an encoder whose vocabulary ({assets.vocab_file}) "
                              f"differs from the project encoder's ({project.vocab_file}); the pipeline's one "
                              "Transform tokenizes for every member, so members must share the vocabulary")


def read_split(examples, split: str = "eval") -> list[bytes]:
    """Every serialized tf.Example of one split of an Examples artifact (gzipped TFRecords)."""
    import tensorflow as tf

    files = sorted(tf.io.gfile.glob(os.path.join(artifact_utils.get_split_uri([examples], split), "*")))
    if not files:
        raise ValueError(f"Examples {examples.uri} has no files in split {split!r}")
    return [r.numpy() for r in tf.data.TFRecordDataset(files, compression_type="GZIP")]


def run_fusion(models: list, examples, output_uri: str, spec_json: str) -> dict:
    """The component's work, callable without TFX: fuse, export to Format-Serving, write fusion.json."""
    from models.ensemble import fuse, write_json
    from models.spec import ProjectSpec

    spec = ProjectSpec.from_json(spec_json)
    rows = read_split(examples, "eval")
    export_dir = path_utils.serving_model_dir(output_uri)
    report = fuse(spec, member_dirs(models), rows, export_dir, warmup_examples=rows[:WARMUP_ROWS])
    write_json(os.path.join(output_uri, FUSION_FILE), report)
    logging.info("ModelFusion: %s", json.dumps(report, sort_keys=True))
    return report


@tfx.dsl.components.component
def ModelFusion(
    models: tfx.dsl.components.InputArtifact[List[tfx.types.standard_artifacts.Model]],
    examples: tfx.dsl.components.InputArtifact[tfx.types.standard_artifacts.Examples],
    model: tfx.dsl.components.OutputArtifact[tfx.types.standard_artifacts.Model],
    spec_json: tfx.dsl.components.Parameter[str],
) -> None:
    """K member models of one task set -> one SavedModel with the same signatures (see module doc)."""
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    run_fusion(list(models), examples, model.uri, spec_json)
