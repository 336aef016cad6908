"""TFX Trainer entry point (`run_fn`): trains the multi-task model and exports it for serving."""
from __future__ import annotations

import json
import logging
import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import tensorflow as tf  # noqa: E402
import tensorflow_text  # noqa: E402,F401  (registers the WordPiece ops the Transform graph uses)
import tensorflow_transform as tft  # noqa: E402
import tf_keras  # noqa: E402
from tfx_bsl.public import tfxio  # noqa: E402

from models import features  # noqa: E402
from models.augmentation import TokenAugmentation, special_token_ids  # noqa: E402
from models.encoders import resolve_assets  # noqa: E402
from models.export import export_serving_model  # noqa: E402
from models.loss_weighting import make_loss_weighting  # noqa: E402
from models.multitask import MultiTaskModel  # noqa: E402
from models.network import build_network  # noqa: E402
from models.preprocessing import SPEC_KEY  # noqa: E402
from models.spec import ProjectSpec  # noqa: E402
from models.tasks import make_task  # noqa: E402

HISTORY_FILE = "history.json"
# Task weights and gate means every few steps: the report draws them as curves.
CURVES_FILE = "training_curves.json"


def cardinalities(spec: ProjectSpec, tf_transform_output: tft.TFTransformOutput) -> dict[str, int]:
    """Number of embedding rows each categorical / id / bucket input needs."""
    sizes = {}
    for column in spec.features.categorical:
        vocab = tf_transform_output.vocabulary_size_by_name(features.categorical_vocab_name(column))
        sizes[features.categorical_key(column)] = vocab + spec.features.categorical_oov_buckets
    for column in spec.features.ids:
        sizes[features.id_key(column)] = spec.features.id_hash_buckets
    for column, num_buckets in spec.features.buckets.items():
        sizes[features.bucket_key(column)] = num_buckets + 1  # the last: missing
    return sizes


def _augmentation(spec: ProjectSpec) -> TokenAugmentation | None:
    rates = spec.augmentation
    if not spec.features.text or (rates.token_dropout == 0.0 and rates.mask_rate == 0.0):
        return None
    ids = special_token_ids(str(resolve_assets(spec.encoder).vocab_file))
    return TokenAugmentation(rates.token_dropout, rates.mask_rate, ids["[MASK]"],
                             [ids["[PAD]"], ids["[CLS]"], ids["[SEP]"]], seed=spec.training.seed,
                             name="token_augmentation")


def _adversarial_epsilon(spec: ProjectSpec) -> float | None:
    if spec.adversarial is None:
        return None
    if not spec.features.text or not spec.encoder.trainable:
        raise ValueError("adversarial (FGM) perturbs the text encoder's word embeddings: it needs text "
                         "features and a trainable encoder")
    return spec.adversarial.epsilon


def build_model(spec: ProjectSpec, sizes: dict[str, int]) -> MultiTaskModel:
    tf_keras.utils.set_random_seed(spec.training.seed)
    tasks = [make_task(t) for t in spec.tasks]
    network = build_network(spec, tasks, sizes)
    head_lr = spec.training.head_learning_rate or spec.training.learning_rate
    model = MultiTaskModel(
        network, tasks,
        weighting=make_loss_weighting(spec.loss_weighting, tasks, seed=spec.training.seed),
        encoder_optimizer=tf_keras.optimizers.Adam(spec.training.learning_rate),
        augmentation=_augmentation(spec),
        adversarial_epsilon=_adversarial_epsilon(spec),
    )
    model.compile(optimizer=tf_keras.optimizers.Adam(head_lr))
    return model


def _dataset(fn_args, files, spec: ProjectSpec, tf_transform_output, batch_size: int, shuffle: bool):
    """Raw examples through the Transform layer: the Trainer reads the same raw rows serving will see,
    and Transform need not materialize a transformed copy."""
    raw = fn_args.data_accessor.tf_dataset_factory(
        files,
        tfxio.TensorFlowDatasetOptions(
            batch_size=batch_size, num_epochs=1, shuffle=shuffle, shuffle_seed=spec.training.seed
        ),
        tf_transform_output.raw_metadata.schema,
    )
    layer = tf_transform_output.transform_features_layer()
    return raw.map(layer, num_parallel_calls=tf.data.AUTOTUNE).prefetch(2)


def _warmup_examples(patterns: list[str], count: int = 8) -> list[bytes]:
    """A few real evaluation rows (the serving parser ignores their labels) for TF Serving's warmup."""
    files = sorted(f for p in patterns for f in tf.io.gfile.glob(p))
    return [r.numpy() for r in tf.data.TFRecordDataset(files, compression_type="GZIP").take(count)]


class ProgressLogger(tf_keras.callbacks.Callback):
    """Logs losses every `every` steps: training runs for minutes and should show it is alive."""

    def __init__(self, every: int = 25):
        super().__init__()
        self.every = every

    def on_train_batch_end(self, batch, logs=None):
        if batch % self.every == 0:
            shown = {k: round(float(v), 4) for k, v in (logs or {}).items() if k.endswith("loss")}
            logging.info("train step %d: %s", batch, shown)


class CurveRecorder(tf_keras.callbacks.Callback):
    """Keeps the losses, task weights and gate means every `every` steps, for the run's reports.
    (Losses are Keras' running means over the epoch so far.)"""

    PREFIXES = ("weight_", "gate_")

    @classmethod
    def kept(cls, key: str) -> bool:
        # `<task>_loss` and `loss`; `<task>_log_loss` is the same number again, as a metric.
        return key.startswith(cls.PREFIXES) or key == "loss" or (key.endswith("_loss") and not key.endswith("_log_loss"))

    def __init__(self, every: int = 10):
        super().__init__()
        self.every = every
        self.steps: list[int] = []
        self.values: dict[str, list[float]] = {}
        self._step = 0

    def on_train_batch_end(self, batch, logs=None):
        self._step += 1
        if self._step % self.every and self._step != 1:
            return
        picked = {k: float(v) for k, v in (logs or {}).items() if self.kept(k)}
        if picked:
            self.steps.append(self._step)
            for k, v in picked.items():
                self.values.setdefault(k, []).append(v)

    def write(self, path: str) -> None:
        with tf.io.gfile.GFile(path, "w") as f:
            json.dump({"step": self.steps, **self.values}, f, indent=1)


def run_fn(fn_args) -> None:
    """TFX Trainer entry point."""
    spec = ProjectSpec.from_json(fn_args.custom_config[SPEC_KEY])
    tf_transform_output = tft.TFTransformOutput(fn_args.transform_output)
    train = _dataset(fn_args, fn_args.train_files, spec, tf_transform_output, spec.training.batch_size, True)
    evals = _dataset(fn_args, fn_args.eval_files, spec, tf_transform_output, spec.training.eval_batch_size, False)
    if spec.training.max_steps_per_epoch:
        train = train.take(spec.training.max_steps_per_epoch)
    model = build_model(spec, cardinalities(spec, tf_transform_output))
    curves = CurveRecorder()
    callbacks = [
        # Batch-level scalars (batch_weight_<task>, batch_gate_<task>_<expert>, losses) every 20 steps.
        tf_keras.callbacks.TensorBoard(log_dir=fn_args.model_run_dir, update_freq=20),
        ProgressLogger(),
        curves,
    ]
    history = model.fit(train, validation_data=evals, epochs=spec.training.epochs, callbacks=callbacks, verbose=2)
    tf.io.gfile.makedirs(fn_args.model_run_dir)
    with tf.io.gfile.GFile(os.path.join(fn_args.model_run_dir, HISTORY_FILE), "w") as f:
        json.dump({k: [float(x) for x in v] for k, v in history.history.items()}, f, indent=1)
    curves.write(os.path.join(fn_args.model_run_dir, CURVES_FILE))
    export_serving_model(model, tf_transform_output, spec, fn_args.serving_model_dir,
                         warmup_examples=_warmup_examples(fn_args.eval_files))
