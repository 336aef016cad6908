"""TF Transform `preprocessing_fn`: in-graph WordPiece, z-scores, quantile buckets, vocabularies, hashed ids,
labels + masks.

The function is traced into the Transform graph, which the exported SavedModel embeds, so serving
preprocesses raw tf.Examples exactly as training did.
"""
from __future__ import annotations

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import tensorflow as tf  # noqa: E402
import tensorflow_text as tf_text  # noqa: E402  (registers the WordPiece ops)
import tensorflow_transform as tft  # noqa: E402

from models import features  # noqa: E402
from models.encoders import resolve_assets  # noqa: E402
from models.spec import ProjectSpec, TaskSpec, TaskType  # noqa: E402

SPEC_KEY = "spec"
MISSING_CATEGORY = "__missing__"


def _dense_1d(x, default) -> tuple[tf.Tensor, tf.Tensor]:
    """Returns (values[batch], present[batch] float32) for a dense or sparse [batch, <=1] feature."""
    if isinstance(x, tf.SparseTensor):
        batch = x.dense_shape[0]
        dense = tf.sparse.to_dense(
            tf.SparseTensor(x.indices, x.values, [batch, 1]), default_value=default
        )
        present = tf.sparse.to_dense(
            tf.SparseTensor(x.indices, tf.ones_like(x.values, tf.float32), [batch, 1])
        )
        return tf.squeeze(dense, 1), tf.squeeze(present, 1)
    if x.shape.rank == 2:
        x = tf.squeeze(x, 1)
    return x, tf.ones(tf.shape(x), tf.float32)


def _as_string(x: tf.Tensor) -> tf.Tensor:
    if x.dtype == tf.string:
        return x
    if x.dtype.is_floating:
        # "3.0" and "3" must name the same class or id.
        as_int = tf.cast(x, tf.int64)
        return tf.where(tf.equal(tf.cast(as_int, x.dtype), x), tf.strings.as_string(as_int), tf.strings.as_string(x))
    return tf.strings.as_string(x)


def _text_features(inputs, spec: ProjectSpec) -> dict[str, tf.Tensor]:
    assets = resolve_assets(spec.encoder)
    tokenizer = tf_text.BertTokenizer(
        str(assets.vocab_file), token_out_type=tf.int64, lower_case=assets.lower_case
    )
    segments = []
    for column in spec.features.text:
        raw = inputs[column]
        text, _ = _dense_1d(raw, default="" if raw.dtype == tf.string else 0)
        segments.append(tokenizer.tokenize(_as_string(text)).merge_dims(-2, -1))
    vocab = tf.constant(_special_token_ids(assets.vocab_file), tf.int64)
    # Reserve [CLS] and one [SEP] per segment, then trim the longest segments first. Not
    # RoundRobinTrimmer: its op (TFText>RoundRobinTrim) is newer than the TF Text that the stock
    # tensorflow/serving 2.16 image links, so the model would not load there.
    trimmer = tf_text.ShrinkLongestTrimmer(max_seq_length=spec.sequence_length - 1 - len(segments))
    ids, segment_ids = tf_text.combine_segments(
        trimmer.trim(segments), start_of_sequence_id=vocab[0], end_of_segment_id=vocab[1]
    )
    ids, mask = tf_text.pad_model_inputs(ids, max_seq_length=spec.sequence_length, pad_value=0)
    segment_ids, _ = tf_text.pad_model_inputs(segment_ids, max_seq_length=spec.sequence_length, pad_value=0)
    # BERT has two token types; later text fields all share the second.
    return {
        features.INPUT_IDS: ids,
        features.ATTENTION_MASK: mask,
        features.SEGMENT_IDS: tf.minimum(segment_ids, 1),
    }


def _special_token_ids(vocab_file) -> list[int]:
    with open(vocab_file, encoding="utf-8") as f:
        index = {line.rstrip("\n"): i for i, line in enumerate(f)}
    missing = [t for t in ("[CLS]", "[SEP]") if t not in index]
    if missing:
        raise ValueError(f"{vocab_file}: vocabulary lacks special tokens {missing}")
    return [index["[CLS]"], index["[SEP]"]]


def _numeric_features(inputs, spec: ProjectSpec) -> dict[str, tf.Tensor]:
    zscores, missing = [], []
    for column in spec.features.numeric:
        raw = _float(inputs[column])
        if column in spec.features.log1p:
            raw = _log1p(raw)
        # Statistics over present values only; missing cells are imputed with the mean (z = 0).
        mean, var = tft.mean(raw), tft.var(raw)
        values, present = _dense_1d(raw, default=float("nan"))
        values = tf.where(present > 0, values, mean)
        zscores.append((values - mean) / tf.sqrt(tf.maximum(var, 1e-12)))
        missing.append(1.0 - present)
    return {features.NUMERIC: tf.stack(zscores + missing, axis=1)}


def _bucket_features(inputs, spec: ProjectSpec) -> dict[str, tf.Tensor]:
    """Quantile bucket of each `features.buckets` column; a missing cell gets bucket `num_buckets`."""
    out = {}
    for column, num_buckets in spec.features.buckets.items():
        values, present = _dense_1d(_float(inputs[column]), default=0.0)
        # Zero weight keeps missing cells out of the quantiles.
        bucket = tft.bucketize(values, num_buckets, weights=present, name=f"bucketize_{column}")
        out[features.bucket_key(column)] = tf.where(present > 0, bucket, tf.constant(num_buckets, tf.int64))
    return out


def _categorical_features(inputs, spec: ProjectSpec) -> dict[str, tf.Tensor]:
    out = {}
    for column in spec.features.categorical:
        values, present = _dense_1d(inputs[column], default="" if inputs[column].dtype == tf.string else 0)
        values = tf.where(present > 0, _as_string(values), MISSING_CATEGORY)
        out[features.categorical_key(column)] = tft.compute_and_apply_vocabulary(
            values,
            num_oov_buckets=spec.features.categorical_oov_buckets,
            vocab_filename=features.categorical_vocab_name(column),
        )
    for column in spec.features.ids:
        values, _ = _dense_1d(inputs[column], default="" if inputs[column].dtype == tf.string else 0)
        out[features.id_key(column)] = tf.strings.to_hash_bucket_fast(
            _as_string(values), spec.features.id_hash_buckets
        )
    return out


def _log1p(x):
    # data_prep refuses negative values in a log1p column; serving requests are the caller's own.
    return x.with_values(tf.math.log1p(x.values)) if isinstance(x, tf.SparseTensor) else tf.math.log1p(x)


def _float(x):
    if isinstance(x, tf.SparseTensor):
        return tf.SparseTensor(x.indices, tf.cast(x.values, tf.float32), x.dense_shape)
    return tf.cast(x, tf.float32)


def _label(task: TaskSpec, raw) -> tuple[tf.Tensor, tf.Tensor]:
    """Returns (label, mask). Label values were checked row by row in data_prep before Transform;
    no in-graph assert here, because serving runs this graph with the labels absent."""
    if task.type == TaskType.MULTICLASS:
        values, present = _dense_1d(raw, default="" if raw.dtype == tf.string else 0)
        table = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(
                tf.constant(task.classes), tf.range(len(task.classes), dtype=tf.int64)
            ),
            default_value=-1,
        )
        index = table.lookup(_as_string(values))
        return tf.maximum(index, 0), present * tf.cast(index >= 0, tf.float32)
    values, present = _dense_1d(_float(raw), default=0.0)
    if task.label_transform == "log1p":
        values = tf.math.log1p(tf.maximum(values, 0.0))
    return values, present


def _funnel_label(child: tuple[tf.Tensor, tf.Tensor], parent: tuple[tf.Tensor, tf.Tensor]):
    """ESMM: the label of `child` over the parent's whole space is parent AND child. A row the parent
    labels 0 is a known 0 even where the child is unlabelled; a parent-positive row without a child
    label stays masked."""
    (label, present), (parent_label, parent_present) = child, parent
    known = tf.maximum(present, 1.0 - parent_label)
    return parent_label * label * present, parent_present * known


def _labels(inputs, spec: ProjectSpec) -> dict[str, tf.Tensor]:
    out: dict[str, tf.Tensor] = {}
    pending = [t for t in spec.tasks if t.label in inputs]  # serving: labels are absent
    while pending:
        # Parents first: a funnel task's label is built from its parent's (itself possibly a funnel).
        ready = [t for t in pending if t.depends_on is None or features.label_key(spec.task(t.depends_on)) in out]
        if not ready:
            break  # a parent's label column is absent: only possible when serving
        for task in ready:
            label, present = _label(task, inputs[task.label])
            if task.depends_on is not None:
                parent = spec.task(task.depends_on)
                label, present = _funnel_label(
                    (label, present), (out[features.label_key(parent)], out[features.mask_key(parent)]))
            out[features.label_key(task)] = label
            out[features.mask_key(task)] = present
            pending.remove(task)
    return out


def transform(inputs, spec: ProjectSpec) -> dict[str, tf.Tensor]:
    """The preprocessing for a given spec; `preprocessing_fn` is its TFX entry point."""
    missing = [c for c in spec.features.all_columns() if c not in inputs]
    if missing:
        raise ValueError(f"the data has no columns {missing} declared as features; it has {sorted(inputs)}")
    out: dict[str, tf.Tensor] = {}
    if spec.features.text:
        out.update(_text_features(inputs, spec))
    if spec.features.numeric:
        out.update(_numeric_features(inputs, spec))
        out.update(_bucket_features(inputs, spec))
    out.update(_categorical_features(inputs, spec))
    out.update(_labels(inputs, spec))
    return out


def preprocessing_fn(inputs, custom_config):
    """TFX Transform entry point; the ProjectSpec arrives as JSON in `custom_config`."""
    return transform(inputs, ProjectSpec.from_json(custom_config[SPEC_KEY]))
