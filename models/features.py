"""Names of the transformed features, labels and masks, derived from the ProjectSpec.

Transform writes these keys and the Trainer, exported signatures and Evaluator read them; keeping
the naming in one place is what lets them agree.
"""
from __future__ import annotations

from models.spec import ProjectSpec, TaskSpec

INPUT_IDS = "input_ids"
ATTENTION_MASK = "attention_mask"
SEGMENT_IDS = "token_type_ids"
NUMERIC = "numeric"


def label_key(task: TaskSpec) -> str:
    return f"label__{task.name}"


def mask_key(task: TaskSpec) -> str:
    """1.0 where the example carries a label for `task`, 0.0 where the label is missing."""
    return f"mask__{task.name}"


def categorical_key(column: str) -> str:
    return f"cat__{column}"


def id_key(column: str) -> str:
    return f"id__{column}"


def bucket_key(column: str) -> str:
    return f"bucket__{column}"


def categorical_vocab_name(column: str) -> str:
    return f"vocab__{column}"


def raw_feature_columns(spec: ProjectSpec) -> list[str]:
    """Raw columns a serving request must (or may) carry: the declared features, never labels."""
    return spec.features.all_columns()
