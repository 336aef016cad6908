"""The TF Serving deployment files in serving/deploy/, their loaders, and the custom-op listing."""
from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from serving import model_ops
from serving.batching_config import BatchingParameters, load_batching_parameters
from serving.model_config import ModelEntry, load_model_config

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "serving" / "deploy"
FLAGS = [
    "--model_config_file=/config/models.config",
    "--model_config_file_poll_wait_seconds=60",
    "--enable_batching=true",
    "--batching_parameters_file=/config/batching.config",
    "--enable_model_warmup=true",
    "--file_system_poll_wait_seconds=5",
    "--port=8500",
    "--rest_api_port=8501",
]


def _write(tmp_path: Path, text: str, name: str = "x.config") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# --- the shipped files -------------------------------------------------------------------------------


def test_shipped_models_config():
    assert load_model_config(DEPLOY / "models.config") == [
        ModelEntry(name="commerce", base_path="/models/commerce", version_policy=("latest", 2), version_labels={})
    ]


def test_shipped_batching_config():
    params = load_batching_parameters(DEPLOY / "batching.config")
    assert (params.max_batch_size, params.batch_timeout_micros, params.num_batch_threads,
            params.max_enqueued_batches) == (64, 2000, 2, 100)
    assert params.allowed_batch_sizes == () and not params.enable_large_batch_splitting


def test_docker_compose():
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    service = compose["services"]["tf-serving"]
    assert service["image"].startswith("tensorflow/serving:2.16")
    assert set(service["ports"]) == {"8500:8500", "8501:8501"}
    assert "../../workdir/serving_model:/models:ro" in service["volumes"]
    mounted = {v.split(":")[1] for v in service["volumes"]}
    assert {"/config/models.config", "/config/batching.config"} <= mounted
    assert service["command"] == FLAGS
    for volume in service["volumes"]:
        source = volume.split(":")[0]
        if source.startswith("./"):
            assert (DEPLOY / source).is_file(), source


def test_kubernetes():
    docs = {d["kind"]: d for d in yaml.safe_load_all((DEPLOY / "kubernetes.yaml").read_text())}
    assert set(docs) == {"ConfigMap", "Deployment", "Service"}
    config_map = docs["ConfigMap"]
    assert config_map["metadata"]["name"] == "commerce-mtl-serving-config"
    # The ConfigMap must serve exactly the files the loaders check.
    for name in ("models.config", "batching.config"):
        assert config_map["data"][name] == (DEPLOY / name).read_text(), name

    spec = docs["Deployment"]["spec"]
    assert spec["replicas"] == 2
    pod = spec["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"].startswith("tensorflow/serving:2.16")
    assert container["args"] == FLAGS
    assert {p["containerPort"] for p in container["ports"]} == {8500, 8501}
    probe = container["readinessProbe"]["httpGet"]
    assert (probe["path"], probe["port"]) == ("/v1/models/commerce", 8501)
    assert container["resources"]["requests"]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["config"]["configMap"]["name"] == "commerce-mtl-serving-config"
    assert volumes["models"]["persistentVolumeClaim"]["claimName"] == "commerce-mtl-models"
    assert (mounts["config"], mounts["models"]) == ("/config", "/models")
    assert spec["selector"]["matchLabels"].items() <= spec["template"]["metadata"]["labels"].items()

    service = docs["Service"]["spec"]
    assert service["type"] == "ClusterIP"
    assert {(p["name"], p["port"]) for p in service["ports"]} == {("grpc", 8500), ("http", 8501)}
    assert service["selector"] == spec["template"]["metadata"]["labels"]


# --- batching parameters -----------------------------------------------------------------------------


def test_batching_defaults_for_unset_fields(tmp_path):
    params = load_batching_parameters(_write(tmp_path, "# nothing set\nmax_batch_size { value: 8 }\n"))
    assert params == BatchingParameters(max_batch_size=8, batch_timeout_micros=0, num_batch_threads=None,
                                        max_enqueued_batches=10)
    with pytest.raises(dataclasses.FrozenInstanceError):
        params.max_batch_size = 9  # type: ignore[misc]


def test_batching_optional_fields(tmp_path):
    params = load_batching_parameters(_write(tmp_path, """
        max_batch_size { value: 32 }
        allowed_batch_sizes: [8, 16, 32]
        thread_pool_name { value: "commerce" }
        pad_variable_length_inputs: true
        enable_large_batch_splitting { value: true }
        max_execution_batch_size { value: 16 }
    """))
    assert params.allowed_batch_sizes == (8, 16, 32)
    assert params.thread_pool_name == "commerce"
    assert params.pad_variable_length_inputs and params.enable_large_batch_splitting
    assert params.max_execution_batch_size == 16


@pytest.mark.parametrize("text, line, fragment", [
    ("batch_timeout_micros { value: 2000 }\nmax_batch_size { value 64 }\n", 2, 'Expected ":"'),
    ("max_batch_size { value: 64 }\nbatch_timeout_micro { value: 2000 }\n", 2, 'no field named "batch_timeout_micro"'),
    ("max_batch_size: 64\n", 1, 'Expected "{"'),
    ("max_batch_size { value: 64 }\nnum_batch_threads { value: 0 }\n", 2, "num_batch_threads must be positive, got 0"),
    ("max_batch_size { value: -1 }\n", 1, "max_batch_size must be positive"),
    ("\nmax_enqueued_batches { value: 0 }\n", 2, "max_enqueued_batches must be positive"),
    ("batch_timeout_micros { value: -5 }\n", 1, "must not be negative"),
    ("max_batch_size { value: 64 }\nallowed_batch_sizes: [16, 32]\n", 2, "must end with max_batch_size (64)"),
])
def test_batching_errors_name_file_and_line(tmp_path, text, line, fragment):
    path = _write(tmp_path, text, "batching.config")
    with pytest.raises(ValueError) as e:
        load_batching_parameters(path)
    assert str(e.value).startswith(f"{path}:{line}: "), str(e.value)
    assert fragment in str(e.value)


# --- model config --------------------------------------------------------------------------------------


def _models(*configs: str) -> str:
    return "model_config_list {\n" + "".join(f"  config {{ {c} }}\n" for c in configs) + "}\n"


def test_model_config_policies_labels_and_relative_paths(tmp_path):
    path = _write(tmp_path, _models(
        'name: "a" base_path: "models/a" model_platform: "tensorflow"',
        'name: "b" base_path: "/srv/b" model_platform: "tensorflow" model_version_policy { all {} }',
        'name: "c" base_path: "gs://bucket/c" model_platform: "tensorflow" '
        'model_version_policy { specific { versions: 7 versions: 3 } } '
        'version_labels { key: "stable" value: 3 } version_labels { key: "canary" value: 7 }',
        'name: "d" base_path: "/srv/d" model_platform: "tensorflow" model_version_policy { latest { num_versions: 3 } }',
    ))
    a, b, c, d = load_model_config(path)
    assert a == ModelEntry("a", str(tmp_path / "models" / "a"), ("latest", 1), {})
    assert (b.base_path, b.version_policy) == ("/srv/b", ("all", None))
    assert (c.base_path, c.version_policy) == ("gs://bucket/c", ("specific", (3, 7)))
    assert c.version_labels == {"stable": 3, "canary": 7}
    assert d.version_policy == ("latest", 3)


@pytest.mark.parametrize("text, fragment", [
    ('model_config_list { config { name: "a" base_path: "/m" model_platform: "tensorflow" }', 'Expected "}"'),
    (_models('name: "a" base_pat: "/m"'), 'no field named "base_pat"'),
    (_models('name: "a" base_path: "/m" model_platform: "tensorflow"',
             'name: "a" base_path: "/n" model_platform: "tensorflow"'), "model 'a': listed more than once"),
    (_models('base_path: "/m" model_platform: "tensorflow"'), "name is empty"),
    (_models('name: "a" model_platform: "tensorflow"'), "model 'a': base_path is empty"),
    (_models('name: "a" base_path: "/m" model_platform: "tensorrt"'), "model_platform must be 'tensorflow'"),
    (_models('name: "a" base_path: "/m"'), "model_platform must be 'tensorflow', got ''"),
    ("", "declares no model"),
])
def test_model_config_errors_name_file_and_problem(tmp_path, text, fragment):
    path = _write(tmp_path, text, "models.config")
    with pytest.raises(ValueError) as e:
        load_model_config(path)
    assert str(e.value).startswith(str(path)), str(e.value)
    assert fragment in str(e.value)


def test_model_config_syntax_error_names_line(tmp_path):
    path = _write(tmp_path, 'model_config_list {\n  config {\n    name: "a"\n    base_path "/m"\n  }\n}\n')
    with pytest.raises(ValueError, match=rf"^{path}:4: "):
        load_model_config(path)


# --- custom ops ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def saved_models(tmp_path_factory):
    """(a SavedModel tokenizing with tensorflow_text, one using only core string ops)"""
    import tensorflow as tf
    import tensorflow_text as tf_text

    class TextModule(tf.Module):
        def __init__(self):
            super().__init__()
            self.tokenizer = tf_text.WhitespaceTokenizer()

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
        def serve(self, text):
            return {"tokens": self.tokenizer.tokenize(tf_text.case_fold_utf8(text)).row_lengths()}

    class CoreModule(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
        def serve(self, text):
            return {"tokens": tf.strings.split(text).row_lengths()}

    root = tmp_path_factory.mktemp("saved_models")
    dirs = []
    for name, module in (("text", TextModule()), ("core", CoreModule())):
        tf.saved_model.save(module, str(root / name / "1"), signatures=module.serve.get_concrete_function())
        dirs.append(root / name / "1")
    return tuple(dirs)


def test_custom_ops_listed_for_tensorflow_text_model(saved_models):
    text_dir, _ = saved_models
    used = model_ops.used_op_types(text_dir)
    text_ops = {op for op in used if "WhitespaceTokenize" in op or op == "CaseFoldUTF8"}
    assert text_ops, sorted(used)
    # tensorflow_text is imported in this process, so its ops are registered here and a lookup here finds
    # nothing; `python -m serving.model_ops` is an interpreter that imported tensorflow only.
    assert model_ops._unregistered_here(used) == set()
    done = subprocess.run([sys.executable, "-m", "serving.model_ops", str(text_dir)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    listed = done.stdout.split()
    assert listed == sorted(text_ops)
    assert not {"StringSplitV2", "Identity", "StatefulPartitionedCall"} & set(listed)


def test_core_only_model_lists_nothing(saved_models):
    _, core_dir = saved_models
    used = model_ops.used_op_types(core_dir)
    assert "StringSplitV2" in used
    # Function calls (nodes named after library functions) are not ops and not reported.
    assert not any(op.startswith("__inference") for op in used)
    # Registering tensorflow_text's ops in this process adds ops, never removes core ones, so checking a
    # model without text ops here gives the same answer as a fresh interpreter.
    assert model_ops._unregistered_here(used) == set()


def test_missing_saved_model_is_a_clear_error(tmp_path, capsys):
    with pytest.raises(ValueError, match="no saved_model.pb"):
        model_ops.required_custom_ops(tmp_path)
    assert model_ops.main([str(tmp_path)]) == 1
    assert "no saved_model.pb" in capsys.readouterr().err
