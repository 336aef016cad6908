"""Reads TF Serving's `--batching_parameters_file` (a text-format `BatchingParameters` proto).

tensorflow-serving-api does not ship `BatchingParameters` (it is declared in TF Serving's
tensorflow_serving/servables/tensorflow/session_bundle_config.proto), so the message is built here at
run time from a FileDescriptorProto with the same field names, types and numbers as TF Serving 2.16,
in a private descriptor pool (nothing is added to protobuf's default pool). A file TF Serving accepts
therefore parses here, and a field TF Serving does not know is an error here as well.
"""
from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, text_format, wrappers_pb2

_PACKAGE = "tensorflow.serving"
_MESSAGE = "BatchingParameters"

# TF Serving's defaults for unset fields: SharedBatchScheduler::QueueOptions / Options in
# tensorflow/core/kernels/batching_util/shared_batch_scheduler.h, applied by
# tensorflow_serving/servables/tensorflow/bundle_factory_util.h only for the fields a file sets.
DEFAULT_MAX_BATCH_SIZE = 1000
DEFAULT_BATCH_TIMEOUT_MICROS = 0
DEFAULT_MAX_ENQUEUED_BATCHES = 10
DEFAULT_THREAD_POOL_NAME = "batch_threads"


@dataclasses.dataclass(frozen=True)
class BatchingParameters:
    """The effective batching parameters: the file's values, TF Serving's defaults for the rest."""

    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE
    batch_timeout_micros: int = DEFAULT_BATCH_TIMEOUT_MICROS
    # None: unset, and TF Serving then uses one batch thread per CPU of the machine it runs on
    # (port::MaxParallelism()), which this parser cannot know.
    num_batch_threads: int | None = None
    max_enqueued_batches: int = DEFAULT_MAX_ENQUEUED_BATCHES
    thread_pool_name: str = DEFAULT_THREAD_POOL_NAME
    allowed_batch_sizes: tuple[int, ...] = ()
    pad_variable_length_inputs: bool = False
    enable_large_batch_splitting: bool = False
    # Only used with enable_large_batch_splitting; unset means max_batch_size.
    max_execution_batch_size: int | None = None


def _file_descriptor() -> descriptor_pb2.FileDescriptorProto:
    F = descriptor_pb2.FieldDescriptorProto
    fdp = descriptor_pb2.FileDescriptorProto(
        name="commerce_mtl/serving/batching_parameters.proto",
        package=_PACKAGE,
        syntax="proto3",
        dependency=["google/protobuf/wrappers.proto"],
    )
    message = fdp.message_type.add(name=_MESSAGE)
    int64_value = ".google.protobuf.Int64Value"
    # (name, number, label, type, type_name): the numbers are those of TF Serving's proto.
    fields = [
        ("max_batch_size", 1, F.LABEL_OPTIONAL, F.TYPE_MESSAGE, int64_value),
        ("batch_timeout_micros", 2, F.LABEL_OPTIONAL, F.TYPE_MESSAGE, int64_value),
        ("max_enqueued_batches", 3, F.LABEL_OPTIONAL, F.TYPE_MESSAGE, int64_value),
        ("num_batch_threads", 4, F.LABEL_OPTIONAL, F.TYPE_MESSAGE, int64_value),
        ("thread_pool_name", 5, F.LABEL_OPTIONAL, F.TYPE_MESSAGE, ".google.protobuf.StringValue"),
        ("allowed_batch_sizes", 6, F.LABEL_REPEATED, F.TYPE_INT64, None),
        ("pad_variable_length_inputs", 7, F.LABEL_OPTIONAL, F.TYPE_BOOL, None),
        ("enable_large_batch_splitting", 8, F.LABEL_OPTIONAL, F.TYPE_MESSAGE, ".google.protobuf.BoolValue"),
        ("max_execution_batch_size", 9, F.LABEL_OPTIONAL, F.TYPE_MESSAGE, int64_value),
    ]
    for name, number, label, type_, type_name in fields:
        field = message.field.add(name=name, number=number, label=label, type=type_, json_name=_camel(name))
        if type_name:
            field.type_name = type_name
    return fdp


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


def _build_message_class():
    pool = descriptor_pool.DescriptorPool()
    wrappers = descriptor_pb2.FileDescriptorProto()
    wrappers_pb2.DESCRIPTOR.CopyToProto(wrappers)
    pool.Add(wrappers)
    pool.Add(_file_descriptor())
    return message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{_PACKAGE}.{_MESSAGE}"))


BatchingParametersProto = _build_message_class()


def _line_of(text: str, field: str) -> int | None:
    """1-based line of the first `field` key in the text, for error messages."""
    pattern = re.compile(rf"^\s*{re.escape(field)}\s*[:{{<\[]")
    for number, line in enumerate(text.splitlines(), start=1):
        if pattern.match(line):
            return number
    return None


def parse_batching_parameters(text: str, source: str = "<batching parameters>") -> BatchingParameters:
    """Parses the text of a batching parameters file; `source` names it in error messages."""
    proto = BatchingParametersProto()
    try:
        text_format.Parse(text, proto)
    except text_format.ParseError as e:
        line = e.GetLine()
        # The message starts with "line:column : " when the position is known.
        reason = re.sub(r"^\d+:\d+ : ", "", str(e))
        where = f"{source}:{line}" if line is not None else source
        raise ValueError(f"{where}: {reason}") from None

    def fail(field: str, problem: str):
        line = _line_of(text, field)
        where = f"{source}:{line}" if line is not None else source
        raise ValueError(f"{where}: {field} {problem}")

    def positive(field: str) -> int | None:
        if not proto.HasField(field):
            return None
        value = getattr(proto, field).value
        if value <= 0:
            fail(field, f"must be positive, got {value}")
        return value

    max_batch_size = positive("max_batch_size")
    num_batch_threads = positive("num_batch_threads")
    max_enqueued_batches = positive("max_enqueued_batches")
    max_execution_batch_size = positive("max_execution_batch_size")
    batch_timeout_micros = proto.batch_timeout_micros.value if proto.HasField("batch_timeout_micros") else None
    if batch_timeout_micros is not None and batch_timeout_micros < 0:
        fail("batch_timeout_micros", f"must not be negative, got {batch_timeout_micros}")
    if proto.HasField("thread_pool_name") and not proto.thread_pool_name.value:
        fail("thread_pool_name", "must not be empty")

    params = BatchingParameters(
        max_batch_size=DEFAULT_MAX_BATCH_SIZE if max_batch_size is None else max_batch_size,
        batch_timeout_micros=DEFAULT_BATCH_TIMEOUT_MICROS if batch_timeout_micros is None else batch_timeout_micros,
        num_batch_threads=num_batch_threads,
        max_enqueued_batches=DEFAULT_MAX_ENQUEUED_BATCHES if max_enqueued_batches is None else max_enqueued_batches,
        thread_pool_name=proto.thread_pool_name.value if proto.HasField("thread_pool_name")
        else DEFAULT_THREAD_POOL_NAME,
        allowed_batch_sizes=tuple(proto.allowed_batch_sizes),
        pad_variable_length_inputs=proto.pad_variable_length_inputs,
        enable_large_batch_splitting=proto.HasField("enable_large_batch_splitting")
        and proto.enable_large_batch_splitting.value,
        max_execution_batch_size=max_execution_batch_size,
    )

    # TF Serving refuses to load a model with these (WrapSessionForBatching in bundle_factory_util.cc).
    sizes = params.allowed_batch_sizes
    if sizes:
        if any(s <= 0 for s in sizes) or any(a >= b for a, b in zip(sizes, sizes[1:])):
            fail("allowed_batch_sizes", f"must be positive and strictly increasing, got {list(sizes)}")
        if sizes[-1] != params.max_batch_size:
            fail("allowed_batch_sizes",
                 f"must end with max_batch_size ({params.max_batch_size}), got {list(sizes)}")
    if max_execution_batch_size is not None and max_execution_batch_size > params.max_batch_size:
        fail("max_execution_batch_size",
             f"must not exceed max_batch_size ({params.max_batch_size}), got {max_execution_batch_size}")
    return params


def load_batching_parameters(path: str | Path) -> BatchingParameters:
    """Reads a `--batching_parameters_file`; ValueError names the file and line of a mistake."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise ValueError(f"{path}: cannot read the batching parameters file ({e.strerror})") from None
    return parse_batching_parameters(text, str(path))
