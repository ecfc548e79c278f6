"""The prediction log: every answered prediction as an event on the `predictions` topic.

Asynchronous and lossy by design: `PredictionLog.emit()` only appends to a bounded buffer; a
background thread (`BackgroundEmitter`) encodes and sends. A slow or absent broker never blocks
or fails a request: when the buffer is full the event is dropped and counted in
`kafka_emitter_dropped_total{emitter="predictions", reason="buffer_full"}`.

Record key: the request id. Value, schema 1:

    {
      "schema": 1,
      "request_id": "4f1c...",
      "app": "streaming",
      "model_name": "breast-cancer",
      "model_version": 2,
      "rows": 1,
      "input_sha256": "<hex>",                   # sha256 of the float32 input matrix (C order)
      "inputs": [[...]],                         # only with include_inputs=True
      "labels": [1],
      "probabilities": [[0.02, 0.98]],
      "latency_ms": 0.41,                        # request parse to response, in this process
      "ts": 1735689600.123                       # unix seconds when the response was ready
    }

Enabling it in a service
------------------------
Any service can call `emit()` directly. For the consuming app (any `Backend`), two wrappers do
it without touching the shared API code:

    plog = PredictionLog(bootstrap_servers, topic="predictions", app="my-app")
    backend = LoggedBackend(backend, plog)            # records the rows and the answer
    app = build_app(backend, ...)
    app = PredictionLogMiddleware(app, plog)          # adds request id and latency, then emits

The streaming app does exactly this when `STREAMING_PREDICTION_LOG=true`.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from contextvars import ContextVar
from typing import Any

import numpy as np
import orjson

from services.apps.backend import Backend, BackendResult
from services.core.card import ModelCard
from services.kafka.emitter import BackgroundEmitter
from services.kafka.topics import PREDICTIONS, plain_topic

SCHEMA = 1


class PredictionLog:
    def __init__(
        self,
        bootstrap_servers: str,
        topic: str = PREDICTIONS,
        *,
        app: str = "",
        buffer_size: int = 10_000,
        include_inputs: bool = False,
        emitter: BackgroundEmitter | None = None,
        topic_partitions: int = 4,
    ) -> None:
        self.topic = topic
        self.app = app
        self.include_inputs = include_inputs
        self.emitter = emitter or BackgroundEmitter(
            bootstrap_servers, name="predictions", buffer_size=buffer_size, encode=self._encode,
            topics=[plain_topic(topic, topic_partitions)],
        )

    def start(self) -> None:
        self.emitter.start()

    def close(self, timeout_s: float = 2.0) -> None:
        self.emitter.close(timeout_s)

    def emit(
        self,
        request_id: str,
        model_name: str,
        model_version: int,
        x: np.ndarray,
        labels: np.ndarray,
        probabilities: np.ndarray,
        latency_s: float,
    ) -> bool:
        """Queue one event; never blocks, never raises. False when dropped (buffer full)."""
        # Hashing and JSON happen on the sender thread; the arrays are not mutated after a response.
        pending = (request_id, model_name, model_version, x, labels, probabilities, latency_s, time.time())
        return self.emitter.offer(self.topic, request_id.encode(), pending)

    def _encode(self, pending: tuple) -> bytes:
        request_id, model_name, model_version, x, labels, probabilities, latency_s, ts = pending
        x = np.ascontiguousarray(x, dtype=np.float32)
        event: dict[str, Any] = {
            "schema": SCHEMA,
            "request_id": request_id,
            "app": self.app,
            "model_name": model_name,
            "model_version": model_version,
            "rows": int(x.shape[0]),
            "input_sha256": hashlib.sha256(x.tobytes()).hexdigest(),
            "labels": labels,
            "probabilities": probabilities,
            "latency_ms": round(latency_s * 1000, 3),
            "ts": round(ts, 3),
        }
        if self.include_inputs:
            event["inputs"] = x
        return orjson.dumps(event, option=orjson.OPT_SERIALIZE_NUMPY)


# -- wiring for the consuming app (any Backend) ----------------------------------------------------

_slot: ContextVar[dict | None] = ContextVar("prediction_log_slot", default=None)


class LoggedBackend(Backend):
    """Wraps a backend: notes the rows and the answer of the current request for the middleware."""

    def __init__(self, inner: Backend, log: PredictionLog) -> None:
        self.inner = inner
        self.log = log

    @property
    def ready(self) -> bool:
        return self.inner.ready

    @property
    def card(self) -> ModelCard:
        return self.inner.card

    async def start(self) -> None:
        self.log.start()
        await self.inner.start()

    async def stop(self) -> None:
        try:
            await self.inner.stop()
        finally:
            await asyncio.to_thread(self.log.close)

    async def predict(self, x: np.ndarray) -> BackendResult:
        result = await self.inner.predict(x)
        slot = _slot.get()
        if slot is not None:
            slot["x"], slot["result"] = x, result
        return result

    def __getattr__(self, name: str) -> Any:  # the wrapped backend's extras (e.g. .model, .subscriber)
        return getattr(self.inner, name)


class PredictionLogMiddleware:
    """Pure ASGI middleware: on a successful prediction response, emit its event (request id from
    the response's x-request-id header, latency from request start to response start)."""

    def __init__(self, app: Any, log: PredictionLog, path: str = "/predict") -> None:
        self.app = app
        self.log = log
        self.path = path

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] != self.path:
            await self.app(scope, receive, send)
            return
        slot: dict[str, Any] = {}
        token = _slot.set(slot)
        started = time.perf_counter()

        async def send_and_log(message: dict) -> None:
            if message["type"] == "http.response.start" and "result" in slot and message.get("status") == 200:
                result: BackendResult = slot["result"]
                request_id = next(
                    (v.decode() for k, v in message.get("headers", []) if k.lower() == b"x-request-id"), ""
                )
                self.log.emit(request_id, result.model_name, result.model_version, slot["x"], result.labels,
                              result.probabilities, time.perf_counter() - started)
            await send(message)

        try:
            await self.app(scope, receive, send_and_log)
        finally:
            _slot.reset(token)


def decode_event(value: bytes) -> dict[str, Any]:
    return orjson.loads(value)
