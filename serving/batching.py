"""Dynamic batching: concurrent requests to one signature of one servable are merged, run once, split.

A batch closes when it holds `max_batch_size` rows or `batch_timeout_micros` passed since its first
request. Requests whose inputs cannot be concatenated with the open batch run on their own.
"""
from __future__ import annotations

import concurrent.futures
import queue
import threading
import time

import grpc
import numpy as np

from serving.batching_config import BatchingParameters
from serving.errors import ServingError
from serving.servable import Servable


class _Request:
    def __init__(self, inputs: dict[str, np.ndarray], output_filter: tuple[str, ...]):
        self.inputs = inputs
        self.output_filter = output_filter
        self.rows = len(next(iter(inputs.values()))) if inputs else 0
        self.future: concurrent.futures.Future = concurrent.futures.Future()

    def key(self) -> tuple:
        # Only requests with the same inputs (and trailing shapes) and outputs can share a batch.
        return (self.output_filter,) + tuple(sorted((k, v.shape[1:], v.dtype.kind) for k, v in self.inputs.items()))


class SignatureBatcher:
    """Queue + worker threads for one (servable, signature)."""

    def __init__(self, servable: Servable, signature: str, params: BatchingParameters):
        self.servable = servable
        self.signature = signature
        self.params = params
        self._queue: queue.Queue[_Request] = queue.Queue(maxsize=params.max_enqueued_batches * params.max_batch_size)
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._work, daemon=True, name=f"batch-{signature}-{i}")
                         for i in range(params.num_batch_threads or 1)]
        for t in self._threads:
            t.start()

    def submit(self, inputs: dict[str, np.ndarray], output_filter: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
        request = _Request({k: np.asarray(v) for k, v in inputs.items()}, tuple(output_filter))
        if request.rows == 0 or request.rows > self.params.max_batch_size or any(
                np.ndim(v) == 0 for v in request.inputs.values()):
            return self.servable.run(self.signature, request.inputs, request.output_filter)
        try:
            self._queue.put_nowait(request)
        except queue.Full:
            raise ServingError(grpc.StatusCode.UNAVAILABLE, "the batching queue is full; retry later") from None
        return request.future.result()

    def stop(self) -> None:
        self._stop.set()

    def _collect(self, first: _Request) -> tuple[list[_Request], list[_Request]]:
        batch, leftovers, rows = [first], [], first.rows
        end = time.monotonic() + self.params.batch_timeout_micros / 1e6
        while rows < self.params.max_batch_size:
            remaining = end - time.monotonic()
            if remaining <= 0:
                break
            try:
                nxt = self._queue.get(timeout=remaining)
            except queue.Empty:
                break
            if nxt.key() == first.key() and rows + nxt.rows <= self.params.max_batch_size:
                batch.append(nxt)
                rows += nxt.rows
            else:
                leftovers.append(nxt)
        return batch, leftovers

    def _work(self) -> None:
        while not self._stop.is_set():
            try:
                first = self._queue.get(timeout=0.2)
            except queue.Empty:
                continue
            batch, leftovers = self._collect(first)
            self._run(batch)
            for request in leftovers:
                self._run([request])

    def _run(self, batch: list[_Request]) -> None:
        try:
            merged = {k: np.concatenate([r.inputs[k] for r in batch]) for k in batch[0].inputs}
            outputs = self.servable.run(self.signature, merged, batch[0].output_filter)
            total = sum(r.rows for r in batch)
            if any(np.ndim(v) == 0 or len(v) != total for v in outputs.values()):
                raise ValueError("outputs without a batch dimension")
        except ServingError as err:
            if len(batch) > 1:
                for request in batch:  # one bad request must not fail the others
                    self._run([request])
                return
            batch[0].future.set_exception(err)
            return
        except ValueError:
            for request in batch:
                try:
                    request.future.set_result(self.servable.run(self.signature, request.inputs, request.output_filter))
                except ServingError as err:
                    request.future.set_exception(err)
            return
        start = 0
        for request in batch:
            request.future.set_result({k: v[start:start + request.rows] for k, v in outputs.items()})
            start += request.rows


class Batching:
    """One SignatureBatcher per (model, version, signature), created on first use."""

    def __init__(self, params: BatchingParameters):
        self.params = params
        self._lock = threading.Lock()
        self._batchers: dict[tuple, SignatureBatcher] = {}

    def run(self, servable: Servable, signature: str, inputs, output_filter=()) -> dict[str, np.ndarray]:
        key = (servable.name, servable.version, id(servable), signature)
        with self._lock:
            batcher = self._batchers.get(key)
            if batcher is None or batcher.servable is not servable:
                batcher = self._batchers[key] = SignatureBatcher(servable, signature, self.params)
        return batcher.submit(inputs, output_filter)

    def drop_unused(self, live: set[int]) -> None:
        """Stops batchers of servables that were unloaded (ids not in `live`)."""
        with self._lock:
            for key in [k for k in self._batchers if k[2] not in live]:
                self._batchers.pop(key).stop()
