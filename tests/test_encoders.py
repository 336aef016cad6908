"""Encoders: the pretrained MiniLM loads offline with its real weights; local HF BERT dirs load the same way."""
from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
from transformers import BertTokenizer

from models.encoders import EncoderError, TextEncoder, build_bert, minilm_dir, resolve_assets
from models.spec import EncoderSpec


def _embed(model, sentences: list[str], vocab) -> np.ndarray:
    tokenizer = BertTokenizer(str(vocab))
    batch = tokenizer(sentences, padding=True, return_tensors="tf")
    hidden = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    mask = tf.cast(batch["attention_mask"][..., None], tf.float32)
    pooled = tf.reduce_sum(hidden * mask, 1) / tf.reduce_sum(mask, 1)
    return tf.math.l2_normalize(pooled, -1).numpy()


@pytest.fixture(scope="module")
def minilm():
    return build_bert(EncoderSpec(kind="minilm"), 64)


def test_minilm_weights_are_the_pretrained_ones(minilm):
    # A pretrained sentence encoder places paraphrases far closer than unrelated sentences;
    # random weights do not.
    emb = _embed(minilm, ["my parcel has not arrived yet", "where is my package",
                          "this lipstick colour is lovely"], minilm_dir() / "vocab.txt")
    assert emb[0] @ emb[1] > 0.5
    assert emb[0] @ emb[1] > emb[0] @ emb[2] + 0.3


def test_a_local_directory_loads_like_the_packaged_model(minilm, tmp_path):
    for name in ("config.json", "vocab.txt", "model.safetensors", "tokenizer_config.json"):
        (tmp_path / name).symlink_to(minilm_dir() / name)
    local = build_bert(EncoderSpec(kind="path", path=str(tmp_path)), 64)
    ids = tf.constant([[101, 2026, 11690, 2038, 102]])
    np.testing.assert_allclose(local(input_ids=ids).last_hidden_state.numpy(),
                               minilm(input_ids=ids).last_hidden_state.numpy(), atol=1e-5)


def test_a_tf_h5_directory_loads(tmp_path):
    tiny = build_bert(EncoderSpec(kind="tiny", hidden_size=16, num_layers=1, num_heads=2), 32)
    tiny.save_pretrained(str(tmp_path))  # writes config.json + tf_model.h5
    (tmp_path / "vocab.txt").symlink_to(minilm_dir() / "vocab.txt")
    loaded = build_bert(EncoderSpec(kind="path", path=str(tmp_path)), 32)
    ids = tf.constant([[101, 2000, 102]])
    np.testing.assert_allclose(loaded(input_ids=ids).last_hidden_state.numpy(),
                               tiny(input_ids=ids).last_hidden_state.numpy(), atol=1e-6)


def test_vocab_comes_from_the_chosen_encoder(tmp_path):
    (tmp_path / "config.json").symlink_to(minilm_dir() / "config.json")
    (tmp_path / "model.safetensors").symlink_to(minilm_dir() / "model.safetensors")
    (tmp_path / "vocab.txt").write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\n")
    assert resolve_assets(EncoderSpec(kind="path", path=str(tmp_path))).vocab_file == tmp_path / "vocab.txt"


@pytest.mark.parametrize("missing", ["config.json", "vocab.txt", "model.safetensors"])
def test_incomplete_directories_are_named_in_the_error(tmp_path, missing):
    for name in ("config.json", "vocab.txt", "model.safetensors"):
        if name != missing:
            (tmp_path / name).symlink_to(minilm_dir() / name)
    with pytest.raises(EncoderError, match=str(tmp_path)):
        resolve_assets(EncoderSpec(kind="path", path=str(tmp_path)))


def test_sequence_longer_than_positions_is_refused(tmp_path):
    with pytest.raises(EncoderError, match="max_position_embeddings"):
        build_bert(EncoderSpec(kind="minilm"), 1024)


def test_text_encoder_mean_pools_over_real_tokens_only():
    layer = TextEncoder(EncoderSpec(kind="tiny", hidden_size=16, num_layers=1, num_heads=2).model_dump(), 8)
    ids = tf.constant([[101, 2000, 102, 0, 0, 0, 0, 0]])
    short = layer(ids, tf.constant([[1, 1, 1, 0, 0, 0, 0, 0]]))
    padded_differently = layer(tf.constant([[101, 2000, 102, 7, 7, 7, 7, 7]]), tf.constant([[1, 1, 1, 0, 0, 0, 0, 0]]))
    np.testing.assert_allclose(short.numpy(), padded_differently.numpy(), atol=1e-5)
    assert layer.get_config()["encoder"]["kind"] == "tiny"
    assert TextEncoder.from_config(layer.get_config()).output_dim == 16
