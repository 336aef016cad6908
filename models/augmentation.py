"""Training-only text augmentation on token ids: word-piece dropout and random [MASK] replacement.

It runs inside `train_step` on the transformed batch, so neither the Transform graph nor any exported
signature contains it: serving sees the text as it is.
"""
from __future__ import annotations

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import tensorflow as tf  # noqa: E402
import tf_keras  # noqa: E402


def special_token_ids(vocab_file: str) -> dict[str, int]:
    """Ids of [PAD], [CLS], [SEP] and [MASK] in a BERT vocabulary."""
    with open(vocab_file, encoding="utf-8") as f:
        index = {line.rstrip("\n"): i for i, line in enumerate(f)}
    wanted = ("[PAD]", "[CLS]", "[SEP]", "[MASK]")
    missing = [t for t in wanted if t not in index]
    if missing:
        raise ValueError(f"{vocab_file}: vocabulary lacks special tokens {missing}")
    return {t: index[t] for t in wanted}


class TokenAugmentation(tf_keras.layers.Layer):
    """Drops word pieces (their attention mask becomes 0, so BERT and the mean pooling skip them) and
    replaces others by [MASK]; [CLS], [SEP] and padding are never touched."""

    def __init__(self, token_dropout: float, mask_rate: float, mask_id: int, protected_ids: list[int],
                 seed: int = 0, **kwargs):
        super().__init__(**kwargs)
        self.token_dropout = float(token_dropout)
        self.mask_rate = float(mask_rate)
        self.mask_id = int(mask_id)
        self.protected_ids = [int(i) for i in protected_ids]
        self.seed = int(seed)
        self._rng = tf.random.Generator.from_seed(self.seed)

    def call(self, input_ids: tf.Tensor, attention_mask: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        eligible = tf.cast(attention_mask, tf.bool)
        for token in self.protected_ids:
            eligible &= tf.not_equal(input_ids, token)
        draw = self._rng.uniform(tf.shape(input_ids))
        dropped = eligible & (draw < self.token_dropout)
        masked = eligible & ~dropped & (draw < self.token_dropout + self.mask_rate)
        ids = tf.where(masked, tf.cast(self.mask_id, input_ids.dtype), input_ids)
        return ids, tf.where(dropped, tf.zeros_like(attention_mask), attention_mask)

    def get_config(self) -> dict:
        return {**super().get_config(), "token_dropout": self.token_dropout, "mask_rate": self.mask_rate,
                "mask_id": self.mask_id, "protected_ids": self.protected_ids, "seed": self.seed}
