"""Model fusion: the fused SavedModel equals the fitted combination of its members, row for row."""
from __future__ import annotations

import json

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_text  # noqa: F401  (the members tokenize in graph)
import yaml

from models import features
from models.ensemble import (
    FUSION_ASSET, FusionError, Member, WeightedFusion, build_fusion, check_members, fit_task_weights, fuse, load_members, write_json,
)
from models.export import WARMUP_FILE, ServableModule, export_module, read_raw_features
from models.spec import TaskSpec, parse_spec
from tests.conftest import serialize, tiny_config, run_pipeline

MMOE = {"type": "mmoe", "num_experts": 2, "expert_units": [16]}


def ensemble_config(method: str = "weighted", **cascade) -> dict:
    config = tiny_config()
    config["ensemble"] = {"method": method, "members": [
        {"name": "base"}, {"name": "mmoe", "architecture": MMOE, "training": {"seed": 1}}]}
    if cascade:
        config["ensemble"]["cascade"] = cascade
    return config


@pytest.fixture(scope="module")
def spec():
    return parse_spec(ensemble_config(), "ensemble test config")


@pytest.fixture(scope="module")
def member_dirs(spec, tiny_spec, trained_export, transformed, tmp_path_factory) -> dict[str, str]:
    """`base` is conftest's tiny model (the spec's own settings); `mmoe` another architecture and seed."""
    from models.export import export_serving_model
    from models.model import build_model, cardinalities

    assert spec.member_spec("base") == tiny_spec
    mmoe_spec = spec.member_spec("mmoe")
    model = build_model(mmoe_spec, cardinalities(mmoe_spec, transformed["output"]))
    mmoe_dir = tmp_path_factory.mktemp("mmoe") / "1"
    export_serving_model(model, transformed["output"], mmoe_spec, str(mmoe_dir))
    return {"base": str(trained_export[1]), "mmoe": str(mmoe_dir)}


@pytest.fixture(scope="module")
def eval_examples(spec, transformed) -> list[bytes]:
    """Rows with their labels, as the eval split holds them."""
    return [serialize(raw, spec.input_columns()) for raw in transformed["raw"]]


@pytest.fixture(scope="module")
def request_examples(spec, transformed) -> tf.Tensor:
    """The same rows as serving requests: features only."""
    return tf.constant([serialize(raw, spec.features.all_columns()) for raw in transformed["raw"]])


@pytest.fixture(scope="module")
def members(member_dirs) -> list[Member]:
    """Each member SavedModel loaded once for the whole module (a load takes seconds)."""
    return load_members(member_dirs)


@pytest.fixture(scope="module")
def member_outputs(members, request_examples) -> dict[str, dict[str, np.ndarray]]:
    """Each member's own serving_default outputs, straight from its SavedModel."""
    return {m.name: {k: v.numpy() for k, v in m.loaded.signatures["serving_default"](examples=request_examples).items()}
            for m in members}


@pytest.fixture(scope="module")
def weighted(spec, members, eval_examples, tmp_path_factory):
    """(fusion report, export dir, loaded fused SavedModel), exported as `fuse` does."""
    export_dir = tmp_path_factory.mktemp("fused") / "1"
    module, report = build_fusion(spec, members, eval_examples)
    export_module(module, spec, str(export_dir), warmup_examples=eval_examples[:4])
    write_json(str(export_dir / FUSION_ASSET), report)
    return report, export_dir, tf.saved_model.load(str(export_dir))


def test_fused_outputs_equal_the_weighted_combination_of_members(spec, weighted, member_outputs, request_examples):
    report, _, fused = weighted
    members = member_outputs
    got = fused.signatures["serving_default"](examples=request_examples)
    assert set(got) == {t.name for t in spec.tasks}
    for task in spec.tasks:
        weights = report["tasks"][task.name]["weights"]
        assert set(weights) == {"base", "mmoe"} and abs(sum(weights.values()) - 1) < 1e-6
        want = sum(w * members[m][task.name] for m, w in weights.items())
        np.testing.assert_allclose(got[task.name].numpy(), want, rtol=1e-5, atol=1e-6)
    # The members really differ, so the equality above tests the combination, not a copy.
    assert not np.allclose(members["base"]["click"], members["mmoe"]["click"])


def test_predict_raw_classify_and_regress_combine_the_same_way(spec, weighted, transformed, request_examples):
    # One task per signature kind: every signature is built by the code test_export.py checks in full.
    _, _, fused = weighted
    default = fused.signatures["serving_default"](examples=request_examples)
    signature = fused.signatures["predict_raw"]
    columns = {name: tf.constant([(r[name] or [b"" if s.dtype == tf.string else 0])[0] for r in transformed["raw"]],
                                 dtype=s.dtype)
               for name, s in signature.structured_input_signature[1].items()}
    raw = signature(**columns)
    for task in spec.tasks:
        np.testing.assert_allclose(raw[task.name].numpy(), default[task.name].numpy(), rtol=1e-4, atol=1e-5)
    click = fused.signatures["classify_click"](inputs=request_examples)["scores"].numpy()[:, 1]
    np.testing.assert_allclose(click, default["click"].numpy(), rtol=1e-5, atol=1e-6)
    intent = fused.signatures["classify_intent"](inputs=request_examples)["scores"].numpy()
    np.testing.assert_allclose(intent, default["intent"].numpy(), rtol=1e-5, atol=1e-6)
    satisfaction = fused.signatures["regress_satisfaction"](inputs=request_examples)["outputs"].numpy()
    np.testing.assert_allclose(satisfaction, default["satisfaction"].numpy(), rtol=1e-5, atol=1e-6)


def test_fitted_weights_are_never_worse_than_a_member_on_eval(spec, weighted):
    report, _, _ = weighted
    assert report["method"] == "weighted" and report["members"] == ["base", "mmoe"]
    for task in spec.tasks:
        entry = report["tasks"][task.name]
        assert entry["labelled_rows"] > 0, task.name
        assert entry["fused_loss"] <= min(entry["member_loss"].values()) + 1e-9, (task.name, entry)


def test_fused_model_keeps_the_signatures_and_method_names_of_a_single_model(weighted, trained_export):
    from tensorflow.core.protobuf import saved_model_pb2

    def signature_defs(model_dir):
        proto = saved_model_pb2.SavedModel.FromString((model_dir / "saved_model.pb").read_bytes())
        return {k: v for k, v in proto.meta_graphs[0].signature_def.items() if not k.startswith("__")}

    single, fused = signature_defs(trained_export[1]), signature_defs(weighted[1])
    assert sorted(fused) == sorted(single)
    for name, sig in single.items():
        assert fused[name].method_name == sig.method_name, name
        assert sorted(fused[name].inputs) == sorted(sig.inputs), name
        assert sorted(fused[name].outputs) == sorted(sig.outputs), name
    assert read_raw_features(str(weighted[1])) == read_raw_features(str(trained_export[1]))
    assert (weighted[1] / WARMUP_FILE).stat().st_size > 0
    assert json.loads((weighted[1] / FUSION_ASSET).read_text()) == weighted[0]


def test_transform_features_gives_the_members_labels_and_masks(spec, weighted, eval_examples, transformed):
    _, _, fused = weighted
    got = fused.signatures["transform_features"](examples=tf.constant(eval_examples[:16]))
    for task in spec.tasks:
        want = np.array([r[features.mask_key(task)] for r in transformed["data"][:16]])
        np.testing.assert_array_equal(got[features.mask_key(task)].numpy(), want)


@pytest.mark.parametrize("kind", ["binary", "multiclass", "regression"])
def test_fitting_recovers_the_better_member(kind):
    rng = np.random.default_rng(0)
    n = 400
    task = TaskSpec(name="t", type=kind, label="t", classes=["a", "b", "c"] if kind == "multiclass" else None)
    if kind == "binary":
        labels = rng.integers(0, 2, n).astype(np.float32)
        good, noise = np.where(labels == 1, 0.95, 0.05), rng.uniform(0.01, 0.99, n)
    elif kind == "multiclass":
        labels = rng.integers(0, 3, n)
        good = np.full((n, 3), 0.025)
        good[np.arange(n), labels] = 0.95
        noise = rng.dirichlet(np.ones(3), n)
    else:
        labels = rng.normal(size=n)
        good, noise = labels + rng.normal(scale=0.01, size=n), rng.normal(scale=3.0, size=n)
    mask = np.ones(n)
    mask[:50] = 0.0  # unlabelled rows: their (garbage) labels must not count
    labels_with_garbage = labels.copy()
    labels_with_garbage[:50] = 0
    fit = fit_task_weights(task, {"noise": noise, "good": good}, labels_with_garbage, mask)
    assert fit.labelled_rows == 350
    assert fit.weights["good"] > 0.95, fit
    assert fit.fused_loss <= fit.member_loss["good"] + 1e-9


def test_fitting_a_task_without_labelled_rows_says_so():
    task = TaskSpec(name="t", type="binary", label="t")
    fit = fit_task_weights(task, {"a": np.full(5, 0.2), "b": np.full(5, 0.7)}, np.zeros(5), np.zeros(5))
    assert fit.labelled_rows == 0 and fit.fused_loss is None
    assert fit.weights == {"a": 0.5, "b": 0.5}


def test_members_answering_different_task_sets_are_rejected(members):
    config = ensemble_config()
    config["tasks"] = [t for t in config["tasks"] if t["name"] != "churn"]
    fewer = parse_spec(config, "fewer tasks")
    with pytest.raises(FusionError, match=r"different task sets: base: .*churn.*; mmoe: .*churn"):
        check_members(members, fewer)


def test_models_for_undeclared_or_missing_members_are_rejected(spec, member_dirs, tmp_path):
    with pytest.raises(FusionError, match=r"missing \['mmoe'\]; not declared \['other'\]"):
        fuse(spec, {"base": member_dirs["base"], "other": member_dirs["mmoe"]}, [b""], str(tmp_path / "x"))


# --- cascade -----------------------------------------------------------------------------------------
# Two tiny stand-in members (a formula of item_price per task): saving and loading them takes a second,
# so the cascade's whole SavedModel round trip is tested fast. They also show that `export_module`
# exports any module, not only a trained network.

class PriceMember(ServableModule):
    """Scores every task from item_price with its own `scale`, and counts the rows it scores."""

    def __init__(self, spec, raw_features: dict, scale: float):
        super().__init__(name="price_member")
        self._tasks = [(t.name, t.type.value, t.num_classes) for t in spec.tasks]
        self._labels = [(features.label_key(t), features.mask_key(t), t.type.value) for t in spec.tasks]
        self._raw = raw_features
        self._price_dtype = tf.as_dtype(raw_features["item_price"]["dtype"])
        self.scale = scale
        self.rows_seen = tf.Variable(0, dtype=tf.int64)

    @property
    def raw_features(self):
        return self._raw

    def _scores(self, price: tf.Tensor) -> dict[str, tf.Tensor]:
        self.rows_seen.assign_add(tf.shape(price, out_type=tf.int64)[0])
        x = self.scale * tf.cast(price, tf.float32) / 100.0
        out = {}
        for name, kind, classes in self._tasks:
            if kind == "binary":
                out[name] = tf.sigmoid(x)
            elif kind == "multiclass":
                out[name] = tf.nn.softmax(tf.stack([x * k for k in range(classes)], axis=1))
            else:
                out[name] = x
        return out

    def _price(self, examples):
        parsed = tf.io.parse_example(examples, {"item_price": tf.io.VarLenFeature(self._price_dtype)})
        return tf.sparse.reduce_sum(parsed["item_price"], axis=1, output_is_sparse=False)

    def predict_examples(self, examples):
        return self._scores(self._price(examples))

    def predict_columns(self, columns):
        return self._scores(columns["item_price"])

    def transform_examples(self, examples):
        batch = tf.shape(examples)[0]
        return {k: tf.zeros([batch], tf.int64 if kind == "multiclass" else tf.float32) if k.startswith("label__")
                else tf.ones([batch]) for label, mask, kind in self._labels for k in (label, mask)}


@pytest.fixture(scope="module")
def price_rows() -> tf.Tensor:
    """Requests carrying only item_price (one without it), all the stand-in members read."""
    def example(price):
        feature = {} if price is None else {"item_price": tf.train.Feature(float_list=tf.train.FloatList(value=[price]))}
        return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()
    return tf.constant([example(None)] + [example(float(p)) for p in np.linspace(-150.0, 150.0, 63)])


@pytest.fixture(scope="module")
def price_members(spec, tmp_path_factory) -> dict[str, str]:
    raw = {c: {"dtype": "float32" if c in spec.features.numeric else "string", "kind": "VarLenFeature"}
           for c in spec.features.all_columns()}
    dirs = {}
    for name, scale in (("cheap", -3.0), ("large", 2.0)):
        dirs[name] = str(tmp_path_factory.mktemp(name) / "1")
        export_module(PriceMember(spec, raw, scale), spec, dirs[name])
    return dirs


def _cascade_spec(band, task="click"):
    config = ensemble_config("cascade", cheap="cheap", large="large", task=task, band=[float(b) for b in band])
    config["ensemble"]["members"] = [{"name": "cheap"}, {"name": "large"}]
    return parse_spec(config, "cascade test config")


@pytest.fixture(scope="module")
def price_outputs(price_members, price_rows) -> dict[str, dict[str, np.ndarray]]:
    return {name: {k: v.numpy() for k, v in tf.saved_model.load(d).signatures["serving_default"](
        examples=price_rows).items()} for name, d in price_members.items()}


def test_cascade_runs_the_large_model_on_in_band_rows_only(price_members, price_outputs, price_rows, tmp_path):
    cheap, large = price_outputs["cheap"], price_outputs["large"]
    low, high = np.quantile(cheap["click"], [0.3, 0.7])
    spec = _cascade_spec((low, high))
    report = fuse(spec, price_members, price_rows.numpy().tolist(), str(tmp_path / "1"))
    in_band = (cheap["click"] >= np.float32(low)) & (cheap["click"] <= np.float32(high))
    assert 0 < in_band.sum() < len(in_band)
    assert report["cascade"]["rows_in_band"] == in_band.sum() and report["cascade"]["band"] == [low, high]
    fused = tf.saved_model.load(str(tmp_path / "1"))
    large_rows, cheap_rows = fused.members[1].rows_seen, fused.members[0].rows_seen
    before = int(large_rows.numpy()), int(cheap_rows.numpy())
    got = fused.signatures["serving_default"](examples=price_rows)
    assert int(large_rows.numpy()) - before[0] == in_band.sum()
    assert int(cheap_rows.numpy()) - before[1] == len(in_band)
    for task in spec.tasks:
        out = got[task.name].numpy()
        np.testing.assert_array_equal(out[~in_band], cheap[task.name][~in_band])
        # The large member scored a smaller batch: equal up to float rounding.
        np.testing.assert_allclose(out[in_band], large[task.name][in_band], rtol=1e-6, atol=1e-7)
    scores = fused.signatures["classify_intent"](inputs=price_rows)["scores"].numpy()
    np.testing.assert_array_equal(scores, got["intent"].numpy())


def test_cascade_skips_the_large_model_when_no_row_is_uncertain(price_members, price_outputs, price_rows):
    cheap = price_outputs["cheap"]
    above = float(cheap["click"].max()) + 1e-3
    spec = _cascade_spec((above, min(1.0, above + 0.1)))
    module, report = build_fusion(spec, load_members(price_members), price_rows.numpy().tolist())
    assert report["cascade"]["rows_in_band"] == 0
    before = int(module.members[1].rows_seen.numpy())
    got = tf.function(module.predict_examples)(price_rows)
    assert int(module.members[1].rows_seen.numpy()) == before
    np.testing.assert_array_equal(got["click"].numpy(), cheap["click"])


def test_a_member_weighted_zero_for_every_task_is_not_run(spec, price_members, price_outputs, price_rows):
    members = load_members(price_members)
    weights = {t.name: {"cheap": 1.0, "large": 0.0} for t in spec.tasks}
    module = WeightedFusion(members, spec, weights)
    before = int(module.members[1].rows_seen.numpy())
    got = tf.function(module.predict_examples)(price_rows)
    assert int(module.members[1].rows_seen.numpy()) == before
    np.testing.assert_array_equal(got["intent"].numpy(), price_outputs["cheap"]["intent"])


def test_cascade_on_a_regression_task_is_rejected(price_members, price_rows):
    spec = _cascade_spec((0.3, 0.7), task="satisfaction")
    with pytest.raises(FusionError, match="regression task"):
        build_fusion(spec, load_members(price_members), price_rows.numpy().tolist()[:8])


# --- the component and the pipeline wiring -------------------------------------------------------------

def _model_artifact(uri: str, member: str | None = None):
    from tfx.types import standard_artifacts

    model = standard_artifacts.Model()
    model.uri = uri
    if member is not None:
        model.set_string_custom_property("ensemble_member", member)
    return model


def test_each_unioned_model_says_which_member_it_is(tmp_path):
    from components.model_fusion import member_dirs

    tagged = _model_artifact(str(tmp_path / "Trainer.x" / "model" / "7"), member="mmoe")
    by_node = _model_artifact(str(tmp_path / "Trainer.base" / "model" / "6"))
    dirs = member_dirs([tagged, by_node])
    assert dirs == {"mmoe": str(tmp_path / "Trainer.x" / "model" / "7" / "Format-Serving"),
                    "base": str(tmp_path / "Trainer.base" / "model" / "6" / "Format-Serving")}
    with pytest.raises(ValueError, match="two models for ensemble member 'base'"):
        member_dirs([by_node, _model_artifact(str(tmp_path / "other"), member="base")])
    with pytest.raises(ValueError, match="cannot tell which ensemble member"):
        member_dirs([_model_artifact(str(tmp_path / "Trainer" / "model" / "5"))])


def test_pipeline_trains_each_member_and_feeds_the_fusion_to_evaluator_and_pusher(spec, tmp_path):
    from models.preprocessing import SPEC_KEY
    from models.spec import ProjectSpec
    from pipeline.pipeline import create_pipeline

    pipeline = create_pipeline("p", str(tmp_path / "root"), str(tmp_path / "data"), spec, str(tmp_path / "serving"),
                               str(tmp_path / "m.sqlite"))
    nodes = {c.id: c for c in pipeline.components}
    assert {"Trainer.base", "Trainer.mmoe", "ModelFusion"} <= set(nodes) and "Trainer" not in nodes
    for member in ("base", "mmoe"):
        trainer = nodes[f"Trainer.{member}"]
        custom_config = json.loads(trainer.exec_properties["custom_config"])
        assert ProjectSpec.from_json(custom_config[SPEC_KEY]) == spec.member_spec(member)
        assert trainer.outputs["model"].additional_custom_properties == {"ensemble_member": member}
    fused = nodes["ModelFusion"].outputs["model"]
    assert nodes["Evaluator"].inputs["model"] is fused and nodes["Pusher"].inputs["model"] is fused
    unioned = nodes["ModelFusion"].inputs["models"]
    assert {c.producer_component_id for c in unioned.channels} == {"Trainer.base", "Trainer.mmoe"}


def test_a_member_encoder_with_another_vocabulary_is_rejected(tmp_path):
    from components.model_fusion import check_member_tokenizers
    from models.spec import ConfigError

    check_member_tokenizers(parse_spec(ensemble_config(), "same vocabulary"))  # tiny tokenizes like MiniLM
    (tmp_path / "vocab.txt").write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\nhello\n")
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "model.safetensors").write_bytes(b"")
    config = ensemble_config()
    config["ensemble"]["members"][1]["encoder"] = {"kind": "path", "path": str(tmp_path)}
    with pytest.raises(ConfigError, match="member 'mmoe' uses an encoder whose vocabulary"):
        check_member_tokenizers(parse_spec(config, "other vocabulary"))


# --- the pipeline ---------------------------------------------------------------------------------------

@pytest.mark.e2e
def test_pipeline_trains_members_fuses_evaluates_pushes_and_serves(tmp_path):
    import csv

    from pipeline.report import executed_components, open_store
    from serving.examples import load_raw_features, to_examples
    from tests.test_serving_contract import predict_request, start_server, stop_server

    config = ensemble_config()
    config["model_name"] = "fused"
    config["sources"] = [{"simulated": {"rows": 1500, "seed": 5}}]
    # Plumbing, not text: tabular members train, export and load in seconds (the unit tests above fuse
    # members with the text encoder).
    config["features"]["text"] = []
    del config["encoder"]
    config["training"].update(epochs=1, max_steps_per_epoch=10, learning_rate=1e-3, head_learning_rate=3e-3)
    for task in config["tasks"]:
        # Any accuracy blesses: this run checks the fused model goes through Evaluator and Pusher,
        # not how well 1,500 rows train (tests/test_pipeline_e2e.py gates on quality).
        task["blessing_threshold"] = 0.0 if task["name"] == "intent" else None
    config_path = tmp_path / "ensemble.yaml"
    config_path.write_text(yaml.safe_dump(config))
    run_pipeline("--config", str(config_path), "--workdir", str(tmp_path), "--workers", "1")

    store = open_store(tmp_path / "metadata.sqlite")
    assert {"Trainer", "ModelFusion", "Evaluator", "Pusher"} <= executed_components(store)
    assert {p.name for p in (tmp_path / "pipeline").iterdir()} >= {"Trainer.base", "Trainer.mmoe", "ModelFusion"}
    report = json.loads((tmp_path / "reports" / "metrics.json").read_text())
    assert report["ensemble"]["method"] == "weighted" and report["ensemble"]["members"] == ["base", "mmoe"]
    assert set(report["tasks"]) == set(report["ensemble"]["tasks"]) == {t["name"] for t in config["tasks"]}
    assert set(report["training"]) == {"base", "mmoe"}  # one training summary per member
    assert all(set(summary["final_task_weights"]) == set(report["tasks"]) for summary in report["training"].values())
    version_dir = tmp_path / "serving_model" / "fused" / str(report["version"])
    assert json.loads((version_dir / FUSION_ASSET).read_text()) == report["ensemble"]

    with open(tmp_path / "data" / "prepared" / "data.csv", newline="") as f:
        rows = to_examples([r for _, r in zip(range(20), csv.DictReader(f))], load_raw_features(str(version_dir)))
    expected = tf.saved_model.load(str(version_dir)).signatures["serving_default"](examples=tf.constant(rows))
    served = start_server(tmp_path / "serving_model" / "fused", "fused")
    try:
        response = served.predict_stub.Predict(predict_request("fused", rows), timeout=60)
    finally:
        stop_server(served)
    assert set(response.outputs) == set(report["tasks"])
    for name, value in expected.items():
        np.testing.assert_allclose(tf.make_ndarray(response.outputs[name]), value.numpy(), rtol=1e-5, atol=1e-6)
