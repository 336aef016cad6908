"""Tests of the typed project configuration (models/spec.py): shipped configs, derived views, errors."""
from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from models.spec import ConfigError, ProjectSpec, TaskType, load_spec, parse_spec

REPO = Path(__file__).resolve().parents[1]
COMMERCE = REPO / "configs" / "commerce.yaml"
REVIEWS = REPO / "configs" / "reviews.yaml"

# A small valid configuration; every invalid case below is one edit away from it.
BASE: dict = {
    "model_name": "shop",
    "sources": [{"path": "data.csv"}],
    "features": {"text": ["review"], "numeric": ["price"], "categorical": ["color"]},
    "tasks": [
        {"name": "bought", "type": "binary", "label": "bought", "blessing_threshold": 0.5},
        {"name": "stars", "type": "multiclass", "label": "stars", "classes": ["1", "2", "3"]},
        {"name": "spend", "type": "regression", "label": "spend"},
    ],
}


def _base() -> dict:
    return copy.deepcopy(BASE)


def _error(data, source: str = "bad.yaml") -> str:
    with pytest.raises(ConfigError) as info:
        parse_spec(data, source)
    return str(info.value)


# --- the shipped configurations ----------------------------------------------------------------
def test_commerce_config_loads_with_its_seven_tasks():
    spec = load_spec(COMMERCE)
    assert spec.model_name == "commerce"
    assert [t.name for t in spec.tasks] == [
        "click", "purchase", "ad_click", "fraud", "intent", "satisfaction", "churn"]
    assert spec.sources[0].simulated is not None and spec.sources[0].path is None
    assert spec.sources[0].simulated.rows == 10000
    assert spec.features.ids == ["user_id", "item_id"]
    assert spec.features.id_hash_buckets == 2000
    assert spec.sequence_length == 48
    assert spec.encoder.kind == "minilm"
    assert spec.training.head_learning_rate == pytest.approx(1e-3)
    intent = spec.task("intent")
    assert intent.type is TaskType.MULTICLASS
    assert intent.num_classes == 6
    assert intent.classes[0] == "order_status"
    assert spec.task("satisfaction").loss_weight == pytest.approx(0.5)
    assert spec.task("click").blessing_threshold == pytest.approx(0.5)
    assert spec.task("satisfaction").blessing_threshold is None


def test_commerce_config_matches_the_simulated_columns():
    from pipeline import simulation

    spec = load_spec(COMMERCE)
    assert spec.label_columns() == sorted(simulation.LABEL_COLUMNS)
    assert set(spec.input_columns()) <= set(simulation.EVENT_COLUMNS)


def test_commerce_derived_views():
    spec = load_spec(COMMERCE)
    features = ["query", "item_title", "cs_message", "item_price", "user_age", "account_age_days",
                "user_orders_90d", "channel", "device", "item_category", "user_id", "item_id"]
    labels = ["ad_click", "churn", "click", "fraud", "intent", "purchase", "satisfaction"]
    assert spec.features.all_columns() == features
    assert spec.label_columns() == labels
    assert spec.input_columns() == features + labels
    assert spec.task("click").primary_metric == "auc"
    assert spec.task("click").primary_metric_lower_is_better is False
    assert spec.task("satisfaction").primary_metric == "rmse"
    assert spec.task("satisfaction").primary_metric_lower_is_better is True
    assert spec.task("intent").metrics == ["accuracy", "log_loss"]


def test_reviews_config_loads_with_its_column_mapping():
    spec = load_spec(REVIEWS)
    assert spec.model_name == "reviews"
    source = spec.sources[0]
    assert source.simulated is None
    assert source.path == "womens_clothing_reviews/womens_clothing_ecommerce_reviews.csv.gz"
    assert source.columns["review_text"] == "Review Text"
    assert source.columns["recommended"] == "Recommended IND"
    assert set(source.columns) == set(spec.input_columns())
    assert spec.label_columns() == ["positive_feedback", "rating", "recommended"]
    assert spec.input_columns() == ["title", "review_text", "age", "division", "department", "class_name",
                                    "clothing_id", "positive_feedback", "rating", "recommended"]
    rating = spec.task("rating")
    assert rating.classes == ["1", "2", "3", "4", "5"] and rating.num_classes == 5
    feedback = spec.task("positive_feedback")
    assert feedback.label_transform == "log1p"
    assert spec.features.ids == ["clothing_id"] and spec.features.id_hash_buckets == 2000
    assert feedback.primary_metric_lower_is_better is True
    assert spec.task("recommended").loss_weight == pytest.approx(1.0)
    assert spec.task("recommended").num_classes == 1
    assert spec.sequence_length == 96


# --- derived views and defaults on a small spec ------------------------------------------------
def test_default_metrics_are_filled_per_task_type():
    spec = parse_spec(_base())
    assert spec.task("bought").metrics == ["auc", "binary_accuracy"]
    assert spec.task("stars").metrics == ["accuracy"]
    assert spec.task("spend").metrics == ["rmse", "mae"]
    assert spec.task("bought").primary_metric_lower_is_better is False
    assert spec.task("stars").primary_metric_lower_is_better is False
    assert spec.task("spend").primary_metric_lower_is_better is True


def test_declared_metrics_are_kept_and_the_first_is_primary():
    data = _base()
    data["tasks"][0]["metrics"] = ["log_loss", "auc"]
    data["tasks"][1]["metrics"] = ["top2_accuracy"]
    data["tasks"][2]["metrics"] = ["mae"]
    spec = parse_spec(data)
    assert spec.task("bought").metrics == ["log_loss", "auc"]
    assert spec.task("bought").primary_metric_lower_is_better is True  # log loss: lower is better
    assert spec.task("stars").primary_metric == "top2_accuracy"
    assert spec.task("stars").primary_metric_lower_is_better is False
    assert spec.task("spend").primary_metric == "mae"


def test_small_spec_views_and_defaults():
    spec = parse_spec(_base())
    assert spec.label_columns() == ["bought", "spend", "stars"]  # sorted, not in task order
    assert spec.input_columns() == ["review", "price", "color", "bought", "spend", "stars"]
    assert spec.task("stars").num_classes == 3
    assert spec.task("spend").label_transform == "none"
    assert spec.task("bought").loss_weight == 1.0
    assert spec.encoder.kind == "minilm" and spec.encoder.path is None
    assert spec.sequence_length == 64
    assert spec.training.epochs == 1


def test_label_columns_deduplicate_a_label_shared_by_two_tasks():
    data = _base()
    data["tasks"].append({"name": "bought_again", "type": "binary", "label": "bought"})
    spec = parse_spec(data)
    assert spec.label_columns() == ["bought", "spend", "stars"]
    assert spec.input_columns().count("bought") == 1


def test_task_lookup_of_an_unknown_name_lists_the_tasks():
    spec = parse_spec(_base())
    with pytest.raises(KeyError) as info:
        spec.task("clicks")
    assert "clicks" in str(info.value)
    assert "bought" in str(info.value) and "spend" in str(info.value)


def test_json_round_trip():
    # The spec travels to Transform and Trainer as JSON inside TFX's custom_config.
    spec = parse_spec(_base())
    assert ProjectSpec.from_json(spec.to_json()) == spec
    other = _base()
    other["tasks"][2]["loss_weight"] = 0.5
    assert ProjectSpec.from_json(parse_spec(other).to_json()) != spec


def test_spec_is_immutable():
    spec = parse_spec(_base())
    with pytest.raises(ValidationError):
        spec.model_name = "other"


# --- invalid configurations --------------------------------------------------------------------
def _edit(fn):
    data = _base()
    fn(data)
    return data


def _rename_model_name(d):
    d["modle_name"] = d.pop("model_name")


INVALID = {
    # id: (edit, fragments the message must contain)
    "typo_top_level_key": (_rename_model_name, ["modle_name", "not permitted", "model_name", "required"]),
    "unknown_optional_top_level_key": (lambda d: d.update(sequnce_length=32),
                                       ["sequnce_length", "not permitted"]),
    "unknown_task_key": (lambda d: d["tasks"][0].update(lable="x"), ["tasks.0.lable", "not permitted"]),
    "bad_task_type": (lambda d: d["tasks"][2].update(type="regresion"),
                      ["tasks.2.type", "'binary', 'multiclass' or 'regression'"]),
    "negative_loss_weight": (lambda d: d["tasks"][0].update(loss_weight=-1),
                             ["tasks.0.loss_weight", "greater than or equal to 0"]),
    "multiclass_without_classes": (lambda d: d["tasks"][1].pop("classes"),
                                   ["tasks.1", "'stars'", "needs 'classes'", "at least 2"]),
    "multiclass_with_one_class": (lambda d: d["tasks"][1].update(classes=["1"]),
                                  ["tasks.1", "needs 'classes'", "at least 2"]),
    "duplicate_classes": (lambda d: d["tasks"][1].update(classes=["1", "2", "1"]),
                          ["tasks.1", "duplicate classes"]),
    "classes_on_binary_task": (lambda d: d["tasks"][0].update(classes=["no", "yes"]),
                               ["tasks.0", "'bought'", "binary", "must not declare 'classes'"]),
    "label_transform_on_binary_task": (lambda d: d["tasks"][0].update(label_transform="log1p"),
                                       ["tasks.0", "label_transform", "only allowed for regression"]),
    "duplicate_task_names": (lambda d: d["tasks"].append({"name": "bought", "type": "binary", "label": "b2"}),
                             ["duplicate task names", "['bought']"]),
    "label_used_as_feature": (lambda d: d["features"]["numeric"].append("spend"),
                              ["label columns used as features", "['spend']"]),
    "column_in_two_feature_kinds": (lambda d: d["features"]["categorical"].append("price"),
                                    ["more than one feature kind", "['price']"]),
    "no_features": (lambda d: d.update(features={}), ["features", "at least one"]),
    "unknown_metric_for_regression": (lambda d: d["tasks"][2].update(metrics=["auc"]),
                                      ["tasks.2", "unknown metrics ['auc']", "regression tasks allow",
                                       "'rmse'"]),
    "unknown_metric_for_binary": (lambda d: d["tasks"][0].update(metrics=["rmse"]),
                                  ["tasks.0", "unknown metrics ['rmse']", "binary tasks allow", "'auc'"]),
    "bad_model_name": (lambda d: d.update(model_name="My-Model"),
                       ["model_name", "'My-Model'", "must match", "^[a-z][a-z0-9_]*$"]),
    "bad_task_name": (lambda d: d["tasks"][0].update(name="Bought!"), ["tasks.0.name", "'Bought!'", "must match"]),
    "encoder_path_without_path": (lambda d: d.update(encoder={"kind": "path"}),
                                  ["encoder", "kind 'path' needs 'path'"]),
    "encoder_path_on_tiny": (lambda d: d.update(encoder={"kind": "tiny", "path": "/models/x"}),
                             ["encoder", "'tiny' takes no 'path'"]),
    "bad_encoder_kind": (lambda d: d.update(encoder={"kind": "bert"}), ["encoder.kind", "'tiny'", "'minilm'"]),
    "source_with_path_and_simulated": (lambda d: d["sources"][0].update(simulated={"rows": 10}),
                                       ["sources.0", "exactly one of 'path'", "'simulated'"]),
    "source_with_neither": (lambda d: d["sources"][0].pop("path"),
                            ["sources.0", "exactly one of 'path'", "'simulated'"]),
    "no_sources": (lambda d: d.update(sources=[]), ["sources", "at least 1"]),
    "no_tasks": (lambda d: d.update(tasks=[]), ["tasks", "at least 1"]),
    "sequence_length_too_short": (lambda d: d.update(sequence_length=4),
                                  ["sequence_length", "greater than or equal to 8"]),
    "zero_epochs": (lambda d: d.update(training={"epochs": 0}), ["training.epochs", "greater than 0"]),
    "unknown_training_key": (lambda d: d.update(training={"epoch": 3}), ["training.epoch", "not permitted"]),
}


@pytest.mark.parametrize("edit,fragments", list(INVALID.values()), ids=list(INVALID))
def test_invalid_config_names_the_key_and_what_was_expected(edit, fragments):
    message = _error(_edit(edit))
    assert message.startswith("bad.yaml: invalid configuration"), message
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in:\n{message}"


def test_every_error_is_reported_at_once():
    data = _base()
    data["tasks"][0]["loss_weight"] = -1
    data["tasks"][2]["type"] = "regresion"
    message = _error(data)
    assert "tasks.0.loss_weight" in message
    assert "tasks.2.type" in message


@pytest.mark.parametrize("data,kind", [(["model_name", "x"], "list"), ("just text", "str"), (None, "NoneType")])
def test_non_mapping_config_is_rejected(data, kind):
    message = _error(data)
    assert message == f"bad.yaml: expected a mapping at the top level, got {kind}"


def test_the_base_dict_is_valid():
    # Guards the invalid-config tests: each of them must fail only because of its own edit.
    assert parse_spec(_base(), "base.yaml").model_name == "shop"


# --- loading files ----------------------------------------------------------------------------
def test_load_spec_reads_yaml_from_a_file(tmp_path):
    path = tmp_path / "ok.yaml"
    path.write_text(yaml.safe_dump(_base()))
    assert load_spec(path) == parse_spec(_base())
    assert load_spec(str(path)) == parse_spec(_base())


def test_load_spec_error_names_the_file_and_the_key(tmp_path):
    data = _base()
    data["tasks"][1]["clases"] = ["1", "2"]
    path = tmp_path / "typo.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError) as info:
        load_spec(path)
    message = str(info.value)
    assert message.startswith(f"{path}: invalid configuration")
    assert "tasks.1.clases" in message


def test_load_spec_rejects_a_yaml_list(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- model_name: shop\n- tasks: []\n")
    with pytest.raises(ConfigError) as info:
        load_spec(path)
    assert str(info.value) == f"{path}: expected a mapping at the top level, got list"


def test_load_spec_rejects_an_empty_file(tmp_path):
    path = tmp_path / "empty.yaml"
    path.write_text("")
    with pytest.raises(ConfigError) as info:
        load_spec(path)
    assert str(info.value).startswith(f"{path}: expected a mapping")


def test_load_spec_rejects_invalid_yaml_syntax(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("model_name: shop\ntasks: [unclosed\nfeatures: {text: [a]}\n")
    with pytest.raises(ConfigError) as info:
        load_spec(path)
    message = str(info.value)
    assert message.startswith(f"{path}: not valid YAML")
    assert "line" in message  # PyYAML's position, so the user can find the problem


def test_load_spec_of_a_missing_file(tmp_path):
    path = tmp_path / "nowhere.yaml"
    with pytest.raises(ConfigError) as info:
        load_spec(path)
    assert str(info.value) == f"{path}: config file not found"


def test_load_spec_of_a_directory_is_not_found(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_spec(tmp_path)


def test_config_error_is_a_value_error():
    assert issubclass(ConfigError, ValueError)


def test_eval_split_by_must_be_a_feature_column():
    data = _base()
    data.setdefault("training", {})["eval_split_by"] = "no_such_column"
    message = _error(data)
    assert "eval_split_by 'no_such_column' must be one of the feature columns" in message


def test_a_typo_in_a_key_suggests_the_right_one():
    data = _base()
    data["sequnce_length"] = 32
    message = _error(data)
    assert "sequnce_length" in message and "did you mean 'sequence_length'?" in message
    assert "allowed keys:" in message


def test_a_config_without_any_blessing_threshold_is_refused():
    data = _base()
    for task in data["tasks"]:
        task.pop("blessing_threshold", None)
    assert "no task sets a blessing_threshold" in _error(data)


def test_a_config_extends_another_and_merges_tasks_by_name(tmp_path):
    base = _base()
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(base))
    first = base["tasks"][0]["name"]
    (tmp_path / "variant.yaml").write_text(yaml.safe_dump({
        "extends": "base.yaml",
        "model_name": "variant",
        "architecture": {"type": "mmoe"},
        "loss_weighting": "uncertainty",
        "tasks": [{"name": first, "loss_weight": 3.0}],
    }))
    spec = load_spec(tmp_path / "variant.yaml")
    assert spec.model_name == "variant" and spec.architecture.type == "mmoe"
    assert spec.loss_weighting.method == "uncertainty"
    assert [t.name for t in spec.tasks] == [t["name"] for t in base["tasks"]]
    assert spec.task(first).loss_weight == 3.0 and spec.task(first).label == base["tasks"][0]["label"]


def test_extends_errors_name_the_files(tmp_path):
    (tmp_path / "a.yaml").write_text("extends: missing.yaml\n")
    with pytest.raises(ConfigError, match=r"missing\.yaml: config file not found \(extended by .*a\.yaml\)"):
        load_spec(tmp_path / "a.yaml")
    (tmp_path / "b.yaml").write_text("extends: c.yaml\n")
    (tmp_path / "c.yaml").write_text("extends: b.yaml\n")
    with pytest.raises(ConfigError, match="loops"):
        load_spec(tmp_path / "b.yaml")


# --- evaluation: standard metrics, per-user metrics, slices, max_loss, baselines -------------------
def test_every_task_is_evaluated_on_its_type_standard_metrics_after_its_own():
    data = _base()
    data["tasks"][0]["metrics"] = ["log_loss", "auc"]
    spec = parse_spec(data)
    assert spec.task("bought").evaluated_metrics == ["log_loss", "auc", "pr_auc", "calibration"]
    assert spec.task("stars").evaluated_metrics == ["accuracy", "macro_f1", "log_loss"]
    assert spec.task("spend").evaluated_metrics == ["rmse", "mae"]


def test_evaluation_section_is_checked_against_the_features():
    data = _base()
    data["evaluation"] = {"slice_by": ["colour"]}
    assert "slice_by ['colour']" in _error(data) and "['color']" in _error(data)
    data["evaluation"] = {"group_by": "user"}
    assert "evaluation.group_by 'user'" in _error(data)
    data["evaluation"] = {}
    data["tasks"][0]["metrics"] = ["auc", "gauc"]
    assert "set evaluation.group_by" in _error(data)
    data["tasks"][0]["metrics"] = ["calibration"]
    assert "'calibration' cannot be the primary" in _error(data)


def test_max_loss_of_a_task_overrides_the_evaluation_default():
    data = _base()
    data["evaluation"] = {"max_loss": 0.02}
    data["tasks"][2]["max_loss"] = 0.5
    spec = parse_spec(data)
    assert [spec.max_loss(t) for t in spec.tasks] == [0.02, 0.02, 0.5]
    assert parse_spec(_base()).max_loss(parse_spec(_base()).tasks[0]) is None


def test_single_task_spec_keeps_encoder_features_and_budget_and_drops_sharing_and_funnels():
    data = _base()
    data["architecture"] = {"type": "mmoe"}
    data["loss_weighting"] = "uncertainty"
    data["training"] = {"epochs": 3, "batch_size": 16, "seed": 4}
    data["tasks"].append({"name": "repeat", "type": "binary", "label": "repeat", "depends_on": "bought",
                          "loss_weight": 2.0})
    spec = parse_spec(data)
    single = spec.single_task_spec("repeat")
    assert [t.name for t in single.tasks] == ["repeat"]
    assert single.tasks[0].depends_on is None and single.tasks[0].loss_weight == 1.0
    assert single.architecture.type == "shared_bottom" and single.loss_weighting.method == "fixed"
    assert (single.features, single.encoder, single.training) == (spec.features, spec.encoder, spec.training)
    # no blessing threshold of its own: a baseline is compared, never blessed, so that is allowed
    assert single.tasks[0].blessing_threshold is None
    assert ProjectSpec.from_json(single.to_json()) == single


def test_a_loaded_config_still_needs_one_blessing_threshold():
    data = _base()
    data["tasks"][0]["blessing_threshold"] = None
    assert "no task sets a blessing_threshold" in _error(data)


def test_log1p_features_must_be_numeric():
    data = _base()
    data["features"]["log1p"] = ["color"]
    assert "features.log1p ['color'] must be numeric features" in _error(data)


def test_buckets_name_numeric_columns_with_at_least_two_buckets():
    data = _base()
    data["features"]["buckets"] = {"color": 4}
    assert "features.buckets ['color'] must be numeric features; numeric: ['price']" in _error(data)
    data["features"]["buckets"] = {"price": 1}
    assert "features.buckets {'price': 1}: a column needs at least 2 buckets" in _error(data)
    data["features"]["buckets"] = {"price": 8}
    assert parse_spec(data).features.buckets == {"price": 8}


def test_reviews_ple_config_is_the_reviews_config_with_ple_sharing():
    reviews, ple = load_spec(REVIEWS), load_spec(REPO / "configs" / "reviews_ple.yaml")
    assert ple.architecture.type == "ple" and ple.model_name == "reviews_ple"
    assert ple.tasks == reviews.tasks and ple.features == reviews.features and ple.sources == reviews.sources
