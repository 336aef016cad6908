"""tensorflow.serving.Input (Classify / Regress / MultiInference) -> serialized tf.Examples."""
from __future__ import annotations

import numpy as np
import tensorflow as tf

from serving.errors import invalid


def examples_from_input(model_input) -> np.ndarray:
    kind = model_input.WhichOneof("kind")
    if kind == "example_list":
        examples = list(model_input.example_list.examples)
    elif kind == "example_list_with_context":
        with_context = model_input.example_list_with_context
        examples = []
        for example in with_context.examples:
            # Context features are shared by every example; an example's own value wins.
            merged = tf.train.Example()
            merged.CopyFrom(with_context.context)
            for name, feature in example.features.feature.items():
                merged.features.feature[name].CopyFrom(feature)
            examples.append(merged)
    else:
        raise invalid("input must hold example_list or example_list_with_context")
    if not examples:
        raise invalid("input holds no examples")
    return np.array([e.SerializeToString() for e in examples], dtype=object)
