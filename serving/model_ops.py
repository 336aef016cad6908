"""Lists the custom (non-core TensorFlow) ops a SavedModel needs, i.e. what a model server must link.

    python -m serving.model_ops workdir/serving_model/commerce/<version>

prints one op type per line (nothing when the model needs only core TensorFlow) and exits 0.

How "core" is decided: TensorFlow keeps one process-wide op registry. `import tensorflow` fills it with
every op of the TensorFlow runtime (the ops a TF Serving build of the same TF version links), and
`tf.load_op_library` adds a library's ops to it; importing tensorflow_text does that, so in a process that
has imported tensorflow_text its ops look registered. The lookup
(`tensorflow.python.framework.op_def_registry.get`) is therefore done in an interpreter that has imported
tensorflow and nothing else: `python -m serving.model_ops` is one; `required_custom_ops` called from any
other process starts a fresh interpreter for the lookup. A hard-coded op list was rejected: `tf.raw_ops`
leaves out hundreds of registered ops (test, TPU and internal ops), and a copied list goes stale.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

SAVED_MODEL_FILE = "saved_model.pb"

# Runs in the fresh interpreter: reads op names (JSON) on stdin, writes the unregistered ones (JSON).
_LOOKUP_SCRIPT = """
import json, sys
from tensorflow.python.framework import op_def_registry
names = json.load(sys.stdin)
print(json.dumps([n for n in names if op_def_registry.get(n) is None]))
"""

# Set when this module runs as `python -m serving.model_ops`: the interpreter then has imported
# tensorflow only, so the registry lookup can be done in it.
_FRESH_INTERPRETER = False


def _read_saved_model(saved_model_dir: str | Path):
    path = Path(saved_model_dir) / SAVED_MODEL_FILE
    if not path.is_file():
        if (Path(saved_model_dir) / "saved_model.pbtxt").is_file():
            raise ValueError(f"{saved_model_dir}: only a text saved_model.pbtxt; expected a binary {SAVED_MODEL_FILE}")
        raise ValueError(f"{saved_model_dir}: no {SAVED_MODEL_FILE}; is this a SavedModel version directory "
                         "(e.g. workdir/serving_model/commerce/<version>)?")
    from tensorflow.core.protobuf import saved_model_pb2

    saved_model = saved_model_pb2.SavedModel()
    try:
        saved_model.ParseFromString(path.read_bytes())
    except Exception as e:  # protobuf's DecodeError
        raise ValueError(f"{path}: not a SavedModel protobuf ({e})") from None
    return saved_model


def used_op_types(saved_model_dir: str | Path) -> set[str]:
    """Every op type in the SavedModel's meta graphs and their function libraries.

    A node whose op is the name of a function of the library is a call of that function, not an op.
    """
    ops: set[str] = set()
    for meta_graph in _read_saved_model(saved_model_dir).meta_graphs:
        graph = meta_graph.graph_def
        functions = {f.signature.name for f in graph.library.function}
        ops.update(node.op for node in graph.node)
        for function in graph.library.function:
            ops.update(node.op for node in function.node_def)
        ops -= functions
    return ops


def _unregistered_here(op_names: set[str]) -> set[str]:
    from tensorflow.python.framework import op_def_registry

    return {name for name in op_names if op_def_registry.get(name) is None}


def _unregistered_in_fresh_interpreter(op_names: set[str]) -> set[str]:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES", "")}
    done = subprocess.run([sys.executable, "-c", _LOOKUP_SCRIPT], input=json.dumps(sorted(op_names)),
                          capture_output=True, text=True, env=env)
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"the op registry lookup in {sys.executable} failed:\n{done.stderr[-2000:]}")
    return set(json.loads(lines[-1]))


def required_custom_ops(saved_model_dir: str | Path) -> set[str]:
    """Op types the SavedModel uses that core TensorFlow does not register (e.g. tensorflow_text's)."""
    used = used_op_types(saved_model_dir)
    if _FRESH_INTERPRETER:
        return _unregistered_here(used)
    return _unregistered_in_fresh_interpreter(used)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if len(argv) != 1 or argv[0] in ("-h", "--help"):
        print("usage: python -m serving.model_ops SAVED_MODEL_DIR\n"
              "prints the custom (non-core TensorFlow) op types the SavedModel needs, one per line",
              file=sys.stderr)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    try:
        ops = required_custom_ops(argv[0])
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    for op in sorted(ops):
        print(op)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    _FRESH_INTERPRETER = True
    sys.exit(main())
