"""One loaded model version: its signatures, their SignatureDefs, and input checking.

`run` is the single entry point every API (gRPC, REST, warmup, batching) goes through.
"""
from __future__ import annotations

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import dataclasses  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tensorflow_text  # noqa: E402,F401  (TF Serving links these ops; our models tokenize in graph)
from tensorflow.core.protobuf import meta_graph_pb2, saved_model_pb2  # noqa: E402

from serving.errors import invalid, not_found  # noqa: E402

DEFAULT_SIGNATURE = tf.saved_model.DEFAULT_SERVING_SIGNATURE_DEF_KEY


def read_signature_defs(path: str) -> dict[str, meta_graph_pb2.SignatureDef]:
    with tf.io.gfile.GFile(os.path.join(path, "saved_model.pb"), "rb") as f:
        proto = saved_model_pb2.SavedModel.FromString(f.read())
    serving = next((m for m in proto.meta_graphs if "serve" in m.meta_info_def.tags), proto.meta_graphs[0])
    return {k: v for k, v in serving.signature_def.items() if not k.startswith("__")}


@dataclasses.dataclass
class Servable:
    name: str
    version: int
    path: str
    loaded: Any
    signature_defs: dict[str, meta_graph_pb2.SignatureDef]

    @classmethod
    def load(cls, name: str, version: int, path: str) -> "Servable":
        return cls(name, version, path, tf.saved_model.load(path), read_signature_defs(path))

    def signature(self, name: str) -> tuple[Any, meta_graph_pb2.SignatureDef]:
        name = name or DEFAULT_SIGNATURE
        if name not in self.signature_defs or name not in self.loaded.signatures:
            raise not_found(f"model {self.name!r} version {self.version} has no signature {name!r}; "
                            f"it has {sorted(self.signature_defs)}")
        return self.loaded.signatures[name], self.signature_defs[name]

    def run(self, signature_name: str, inputs: dict[str, np.ndarray],
            output_filter: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
        fn, sig = self.signature(signature_name)
        tensors = _check_inputs(fn, sig, inputs, signature_name or DEFAULT_SIGNATURE)
        unknown = set(output_filter) - set(sig.outputs)
        if unknown:
            raise invalid(f"output_filter names {sorted(unknown)}, not outputs of signature "
                          f"{signature_name or DEFAULT_SIGNATURE!r} (outputs: {sorted(sig.outputs)})")
        try:
            outputs = fn(**tensors)
        except (tf.errors.InvalidArgumentError, ValueError) as err:
            raise invalid(f"the model could not run on these inputs: {_first_line(err)}") from None
        keep = set(output_filter) or set(outputs)
        return {k: v.numpy() for k, v in outputs.items() if k in keep}


def _first_line(err: Exception) -> str:
    text = getattr(err, "message", None) or str(err)
    return text.strip().splitlines()[0] if text.strip() else type(err).__name__


def _check_inputs(fn, sig, inputs: dict[str, np.ndarray], signature_name: str) -> dict[str, tf.Tensor]:
    expected = set(sig.inputs)
    if set(inputs) != expected:
        missing, extra = sorted(expected - set(inputs)), sorted(set(inputs) - expected)
        raise invalid(f"signature {signature_name!r} takes inputs {sorted(expected)}"
                      + (f"; missing {missing}" if missing else "") + (f"; unexpected {extra}" if extra else ""))
    specs = fn.structured_input_signature[1]
    tensors = {}
    for name, value in inputs.items():
        spec = specs[name]
        array = np.asarray(value)
        if spec.dtype == tf.string:
            if array.dtype.kind not in "SUO":
                raise invalid(f"input {name!r} expects strings, got {array.dtype}")
        elif array.dtype.kind not in "iufb" or (spec.dtype.is_integer and array.dtype.kind == "f"):
            raise invalid(f"input {name!r} expects {spec.dtype.name}, got {array.dtype}")
        if spec.shape.rank is not None and array.ndim != spec.shape.rank:
            raise invalid(f"input {name!r} expects shape {spec.shape.as_list()} (rank {spec.shape.rank}), "
                          f"got shape {list(array.shape)}")
        tensors[name] = tf.constant(array, dtype=spec.dtype)
    return tensors
