"""Finds, loads, warms up, swaps and unloads model versions, as TF Serving's manager does.

A new version is loaded and warmed up beside the serving ones and only then made AVAILABLE; a request
holds a reference to the Servable it resolved, so unloading a version never fails a request in flight.
A version that fails to load leaves the others serving and reports its error in GetModelStatus.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import threading

import tensorflow as tf
from tensorflow_serving.apis import get_model_status_pb2, prediction_log_pb2

from models.export import WARMUP_FILE
from serving.errors import not_found
from serving.model_config import ModelEntry
from serving.servable import Servable

State = get_model_status_pb2.ModelVersionStatus.State
log = logging.getLogger(__name__)


@dataclasses.dataclass
class VersionStatus:
    state: int
    error: str = ""


def discover_versions(base_path: str) -> dict[int, str]:
    """{version: directory} for every all-digit subdirectory holding a saved_model.pb."""
    if not tf.io.gfile.isdir(base_path):
        return {}
    found = {}
    for name in tf.io.gfile.listdir(base_path):
        name = name.rstrip("/")
        path = os.path.join(base_path, name)
        if name.isdigit() and tf.io.gfile.exists(os.path.join(path, "saved_model.pb")):
            found[int(name)] = path
    return found


def wanted_versions(available: dict[int, str], policy: tuple) -> set[int]:
    kind, arg = policy
    if kind == "all":
        return set(available)
    if kind == "specific":
        return set(arg) & set(available)
    return set(sorted(available)[-arg:])


def run_warmup(servable: Servable) -> int:
    """Replays assets.extra/tf_serving_warmup_requests; returns how many requests ran."""
    path = os.path.join(servable.path, WARMUP_FILE)
    if not tf.io.gfile.exists(path):
        return 0
    count = 0
    for record in tf.data.TFRecordDataset(path):
        entry = prediction_log_pb2.PredictionLog.FromString(record.numpy())
        if entry.WhichOneof("log_type") != "predict_log":
            continue  # our exports write predict logs only
        request = entry.predict_log.request
        inputs = {k: tf.make_ndarray(v) for k, v in request.inputs.items()}
        servable.run(request.model_spec.signature_name, inputs)
        count += 1
    return count


class ModelState:
    """Everything known about one model name: its config, AVAILABLE servables and version statuses."""

    def __init__(self, entry: ModelEntry):
        self.entry = entry
        self.servables: dict[int, Servable] = {}
        self.statuses: dict[int, VersionStatus] = {}
        self.failed: dict[int, str] = {}  # version -> path that failed, not retried until it changes


class ModelManager:
    def __init__(self, entries: list[ModelEntry], poll_seconds: float = 1.0, warmup: bool = True,
                 on_swap=None):
        self._lock = threading.RLock()
        self._models = {e.name: ModelState(e) for e in entries}
        self._poll_seconds = poll_seconds
        self._warmup = warmup
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._on_swap = on_swap  # called after a version set changes (e.g. to drop batchers)

    # --- lifecycle --------------------------------------------------------------------------
    def start(self) -> None:
        self.poll_once()
        if self._poll_seconds > 0:
            self._thread = threading.Thread(target=self._poll_loop, name="version-poller", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=10)

    def _poll_loop(self) -> None:
        while not self._stop.wait(self._poll_seconds):
            try:
                self.poll_once()
            except Exception:  # noqa: BLE001 - the poller must outlive any one bad directory
                log.exception("polling the model base paths failed")

    def reload(self, entries: list[ModelEntry]) -> None:
        """HandleReloadConfigRequest: models not in the new list are unloaded, new ones loaded."""
        with self._lock:
            kept = {e.name: self._models.get(e.name) for e in entries}
            for name, state in list(self._models.items()):
                if name not in kept:
                    for version in state.servables:
                        state.statuses[version] = VersionStatus(State.END)
            self._models = {e.name: (kept[e.name] or ModelState(e)) for e in entries}
            for e in entries:
                self._models[e.name].entry = e
        self.poll_once()

    # --- polling ----------------------------------------------------------------------------
    def poll_once(self) -> None:
        with self._lock:
            states = list(self._models.values())
        for state in states:
            self._sync(state)

    def _sync(self, state: ModelState) -> None:
        available = discover_versions(state.entry.base_path)
        wanted = wanted_versions(available, state.entry.version_policy)
        for version in sorted(wanted - set(state.servables)):
            if state.failed.get(version) == available[version]:
                continue
            self._load(state, version, available[version])
        with self._lock:
            # Only versions that are out of policy *and* have a serving successor are unloaded.
            loaded_wanted = set(state.servables) & wanted
            for version in sorted(set(state.servables) - wanted):
                if loaded_wanted:
                    state.statuses[version] = VersionStatus(State.UNLOADING)
                    del state.servables[version]
                    state.statuses[version] = VersionStatus(State.END)
                    log.info("unloaded %s version %d", state.entry.name, version)
        if self._on_swap:
            self._on_swap()

    def _load(self, state: ModelState, version: int, path: str) -> None:
        name = state.entry.name
        with self._lock:
            state.statuses[version] = VersionStatus(State.LOADING)
        try:
            servable = Servable.load(name, version, path)
            warmed = run_warmup(servable) if self._warmup else 0
        except Exception as err:  # noqa: BLE001 - any load failure is reported, never fatal
            message = f"loading {path} failed: {type(err).__name__}: {str(err).strip().splitlines()[0] if str(err).strip() else ''}"
            log.error("%s", message)
            with self._lock:
                state.failed[version] = path
                state.statuses[version] = VersionStatus(State.END, message)
            return
        with self._lock:
            state.servables[version] = servable
            state.statuses[version] = VersionStatus(State.AVAILABLE)
        log.info("%s version %d AVAILABLE (%d warmup requests)", name, version, warmed)

    # --- queries ----------------------------------------------------------------------------
    def model_names(self) -> list[str]:
        with self._lock:
            return sorted(self._models)

    def servables(self, name: str) -> list[Servable]:
        with self._lock:
            state = self._models.get(name)
            return list(state.servables.values()) if state else []

    def resolve(self, name: str, version: int | None = None, label: str | None = None) -> Servable:
        with self._lock:
            state = self._models.get(name)
            if state is None:
                raise not_found(f"Servable not found for request: model {name!r} is not served "
                                f"(models: {sorted(self._models)})")
            if label:
                if label not in state.entry.version_labels:
                    raise not_found(f"model {name!r} has no version label {label!r} "
                                    f"(labels: {sorted(state.entry.version_labels)})")
                version = state.entry.version_labels[label]
            if version is None:
                if not state.servables:
                    raise not_found(f"model {name!r} has no AVAILABLE version yet")
                return state.servables[max(state.servables)]
            if version not in state.servables:
                raise not_found(f"model {name!r} version {version} is not available "
                                f"(available: {sorted(state.servables)})")
            return state.servables[version]

    def statuses(self, name: str, version: int | None = None) -> list[tuple[int, VersionStatus]]:
        with self._lock:
            state = self._models.get(name)
            if state is None:
                raise not_found(f"model {name!r} is not served (models: {sorted(self._models)})")
            items = sorted(state.statuses.items())
        if version is not None:
            items = [(v, s) for v, s in items if v == version]
            if not items:
                raise not_found(f"model {name!r} has no version {version}")
        return items
