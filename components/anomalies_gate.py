"""AnomaliesGate: stops the pipeline when ExampleValidator found anomalies, naming each feature.

ExampleValidator only records anomalies; without a gate a run would go on to train on bad data.
The gate passes the schema through, so Transform runs only after the check.
"""

import os
import shutil

from tfx import v1 as tfx
from tfx.types import artifact_utils
from tensorflow_metadata.proto.v0 import anomalies_pb2
from tfx.utils import io_utils


class DataAnomaliesError(RuntimeError):
    """ExampleValidator found anomalies in the input data."""


def describe_anomalies(anomalies_uri: str, split_names: "list[str]") -> "list[str]":
    problems = []
    for split in split_names:
        path = os.path.join(anomalies_uri, f"Split-{split}", "SchemaDiff.pb")
        if not os.path.exists(path):
            continue
        anomalies = anomalies_pb2.Anomalies.FromString(io_utils.read_bytes_file(path))
        for feature, info in sorted(anomalies.anomaly_info.items()):
            problems.append(f"split {split!r}, feature {feature!r}: {info.short_description}: {info.description}")
        if anomalies.HasField("dataset_anomaly_info"):
            info = anomalies.dataset_anomaly_info
            problems.append(f"split {split!r}, whole dataset: {info.short_description}: {info.description}")
    return problems


def raise_on_anomalies(anomalies_uri: str, split_names: "list[str]") -> None:
    problems = describe_anomalies(anomalies_uri, split_names)
    if problems:
        raise DataAnomaliesError("ExampleValidator found anomalies in the data:\n  " + "\n  ".join(problems))


@tfx.dsl.components.component
def AnomaliesGate(
    anomalies: tfx.dsl.components.InputArtifact[tfx.types.standard_artifacts.ExampleAnomalies],
    schema: tfx.dsl.components.InputArtifact[tfx.types.standard_artifacts.Schema],
    validated_schema: tfx.dsl.components.OutputArtifact[tfx.types.standard_artifacts.Schema],
) -> None:
    raise_on_anomalies(anomalies.uri, artifact_utils.decode_split_names(anomalies.split_names))
    source = io_utils.get_only_uri_in_dir(schema.uri)
    os.makedirs(validated_schema.uri, exist_ok=True)
    shutil.copy(source, os.path.join(validated_schema.uri, os.path.basename(source)))
