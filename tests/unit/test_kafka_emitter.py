"""The background emitter never blocks or raises into its caller; what it cannot keep is counted."""

from __future__ import annotations

import hashlib
import socket

import numpy as np
import orjson

from services.apps.prediction_log import PredictionLog
from services.kafka import metrics
from services.kafka.emitter import BackgroundEmitter


def dead_address() -> str:
    with socket.socket() as s:  # a port nobody listens on once closed
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


def dropped(emitter: str, reason: str) -> float:
    return metrics.EMITTER_DROPPED.labels(emitter, reason)._value.get()


def test_full_buffer_drops_and_counts_instead_of_waiting():
    emitter = BackgroundEmitter(dead_address(), name="unit-full", buffer_size=5)
    emitter.start()
    try:
        accepted = [emitter.offer("t", b"k", {"i": i}) for i in range(50)]
    finally:
        emitter.close(timeout_s=0.5)
    # The sender may hold one record while it waits for the (absent) broker.
    assert 5 <= sum(accepted) <= 6
    assert accepted[-1] is False
    assert dropped("unit-full", "buffer_full") == 50 - sum(accepted)


def test_prediction_log_encodes_the_event_off_the_request_path():
    plog = PredictionLog(dead_address(), "predictions", app="unit", buffer_size=1,
                         emitter=BackgroundEmitter(dead_address(), name="unit-plog", buffer_size=1))
    x = np.arange(30, dtype=np.float32).reshape(1, 30)
    # Not started: emit only queues, then drops once the one slot is taken.
    assert plog.emit("r1", "m", 2, x, np.array([1]), np.array([[0.25, 0.75]], np.float32), 0.001) is True
    assert plog.emit("r2", "m", 2, x, np.array([1]), np.array([[0.25, 0.75]], np.float32), 0.001) is False
    _, key, pending = plog.emitter._queue.get_nowait()
    event = orjson.loads(plog._encode(pending))
    assert key == b"r1"
    assert event["request_id"] == "r1" and event["model_version"] == 2 and event["rows"] == 1
    assert event["probabilities"] == [[0.25, 0.75]] and event["labels"] == [1]
    assert event["input_sha256"] == hashlib.sha256(x.tobytes()).hexdigest()
