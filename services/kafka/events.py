"""`model-events`: what each consuming app did with each model message.

Key: the model name. Value: one JSON object, schema 1:

    {
      "schema": 1,
      "event": "loaded" | "swapped" | "rejected" | "unchanged",
      "model_name": "breast-cancer",
      "model_version": 2,                  # the version the message carried (null if unreadable)
      "sha256": "<hex>" | null,
      "reason": "malformed" | "signature" | "checksum" | "name" | "contract" | "load" | "holdout"
                | "skew" | null,           # rejected: the refusal's error code
      "detail": "human-readable why" | null,
      "from_version": 1 | null,            # swapped: the version replaced
      "seconds": 0.042 | null,             # loaded: verify+load+check+warm-up; swapped: publish-to-swap
      "source": {"topic": "models", "partition": 0, "offset": 17},
      "instance": "host:pid",              # which app replica
      "app": "streaming" | "scoring",
      "ts": "2025-01-01T00:00:00.123Z"
    }

`loaded`: the new version is loaded, passed its integration check and is warmed up, not yet
serving. `swapped`: it now serves every new request. `rejected`: it will not be served; the
previous version keeps serving.
`unchanged`: the message carried the version already served (same sha256), nothing to do.

Emission goes through `BackgroundEmitter`, so an absent broker never stalls a swap; drops are
counted in `kafka_emitter_dropped_total{emitter="model-events"}`.
"""

from __future__ import annotations

import os
import socket
import time
from typing import Any

from services.kafka.emitter import BackgroundEmitter
from services.kafka.topics import MODEL_EVENTS

SCHEMA = 1
EVENTS = ("loaded", "swapped", "rejected", "unchanged")


def instance_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _now() -> str:
    t = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1000):03d}Z"


class ModelEvents:
    def __init__(self, emitter: BackgroundEmitter | None, topic: str = MODEL_EVENTS, *, app: str = "",
                 instance: str | None = None) -> None:
        self.emitter = emitter
        self.topic = topic
        self.app = app
        self.instance = instance or instance_id()

    def emit(
        self,
        event: str,
        model_name: str,
        model_version: int | None,
        *,
        sha256: str | None = None,
        reason: str | None = None,
        detail: str | None = None,
        from_version: int | None = None,
        seconds: float | None = None,
        source: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        assert event in EVENTS, event
        record = {
            "schema": SCHEMA,
            "event": event,
            "model_name": model_name,
            "model_version": model_version,
            "sha256": sha256,
            "reason": reason,
            "detail": detail,
            "from_version": from_version,
            "seconds": seconds,
            "source": source,
            "instance": self.instance,
            "app": self.app,
            "ts": _now(),
        }
        if self.emitter is not None:
            self.emitter.offer(self.topic, model_name.encode(), record)
        return record
