"""The prediction log: every answered prediction as an event on the `predictions` topic.

Asynchronous, lossy only when full: `PredictionLog.emit()` only appends to a bounded buffer; a
background thread (`BackgroundEmitter`) encodes and sends. A slow or absent broker never blocks
or fails a request. Events whose send fails while the broker is away stay in the buffer and are
sent again when it returns (`kafka_emitter_retried_total{emitter="predictions"}`); only when the
buffer is full is an event dropped, counted in
`kafka_emitter_dropped_total{emitter="predictions", reason="buffer_full"}`. The online-learning
trainer joins labels to these events by request id (`include_inputs=True`).

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
`PredictionLog` is a `services.apps.backend.PredictionSink`: pass it to the consuming app's
`build_app(..., sinks=(PredictionLog(bootstrap_servers, app="my-app"),))` and every answered
request is logged. The streaming app does so when `STREAMING_PREDICTION_LOG=true`. Other
services call `emit()` directly.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from typing import Any

import numpy as np
import orjson

from services.apps.backend import BackendResult, PredictionSink
from services.kafka.emitter import BackgroundEmitter
from services.kafka.topics import PREDICTIONS, plain_topic

SCHEMA = 1


class PredictionLog(PredictionSink):
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

    async def start(self) -> None:
        self.emitter.start()

    async def stop(self) -> None:
        await asyncio.to_thread(self.close)

    def close(self, timeout_s: float = 2.0) -> None:
        self.emitter.close(timeout_s)

    def record(self, request_id: str, x: np.ndarray, result: BackendResult, latency_s: float) -> None:
        self.emit(request_id, result.model_name, result.model_version, x, result.labels, result.probabilities,
                  latency_s)

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


def decode_event(value: bytes) -> dict[str, Any]:
    return orjson.loads(value)
