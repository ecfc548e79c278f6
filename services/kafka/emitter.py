"""Fire-and-forget records to Kafka that can never block or fail the caller.

    emitter = BackgroundEmitter("127.0.0.1:9092", name="predictions", buffer_size=10_000)
    emitter.start()
    emitter.offer("predictions", b"request-id", {"any": "json"})   # returns at once, True if buffered
    emitter.close()

`offer` only appends to a bounded in-memory queue (a few hundred nanoseconds). A background
thread owns the KafkaProducer: it serialises (orjson), sends, and reconnects with backoff when
the broker is slow or absent. When the queue is full the record is dropped and counted
(`kafka_emitter_dropped_total{reason="buffer_full"}`); records the broker refuses or that time
out are counted as `send_failed`. Nothing here raises into the caller.

Used by the prediction log (`prediction_log.py`) and the model-events producer (`events.py`).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

import orjson
from kafka import KafkaProducer
from kafka.errors import KafkaError

from services.kafka import metrics
from services.kafka.topics import TopicSpec, ensure_topics

log = logging.getLogger(__name__)

_STOP = object()


class BackgroundEmitter:
    def __init__(
        self,
        bootstrap_servers: str,
        *,
        name: str,
        buffer_size: int = 10_000,
        backoff_max_s: float = 5.0,
        producer_config: dict[str, Any] | None = None,
        encode: Callable[[Any], bytes] | None = None,
        topics: list[TopicSpec] | None = None,
    ) -> None:
        """`topics` are created (if missing) once connected, so they get their intended configuration
        rather than the broker's auto-create defaults."""
        self.bootstrap_servers = bootstrap_servers
        self.name = name
        self._queue: queue.Queue = queue.Queue(maxsize=buffer_size)
        self._backoff_max_s = backoff_max_s
        self._encode = encode or (lambda v: orjson.dumps(v, option=orjson.OPT_SERIALIZE_NUMPY))
        self._producer_config = {
            "acks": 1,
            "linger_ms": 20,
            "batch_size": 64 * 1024,
            # Losing an event beats waiting: no idempotence (it would require acks=all and
            # unbounded retries), a bounded wait for metadata and for delivery.
            "enable_idempotence": False,
            "retries": 3,
            "max_block_ms": 2000,
            "request_timeout_ms": 5000,
            "delivery_timeout_ms": 15000,
            "bootstrap_timeout_ms": 2000,
            "reconnect_backoff_max_ms": 2000,
            **(producer_config or {}),
        }
        self._thread: threading.Thread | None = None
        self._producer: KafkaProducer | None = None
        self._dropped = metrics.EMITTER_DROPPED
        self._sent = metrics.EMITTER_SENT.labels(name)
        self._buffered = metrics.EMITTER_BUFFERED.labels(name)
        self._buffer_full = metrics.EMITTER_DROPPED.labels(name, "buffer_full")
        self._stopping = threading.Event()
        self._topics = list(topics or [])
        self._close_deadline = float("inf")

    # -- the caller's side: never blocks ----------------------------------------------------------

    def offer(self, topic: str, key: bytes | None, value: Any) -> bool:
        """Queue a record; False (and counted) when the buffer is full."""
        try:
            self._queue.put_nowait((topic, key, value))
            return True
        except queue.Full:
            self._buffer_full.inc()
            return False

    @property
    def buffered(self) -> int:
        return self._queue.qsize()

    # -- lifecycle --------------------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=f"emitter-{self.name}", daemon=True)
            self._thread.start()

    def close(self, timeout_s: float = 2.0) -> None:
        """Send what is buffered for up to `timeout_s`, then stop; records still queued are dropped."""
        if self._thread is None:
            return
        self._close_deadline = time.monotonic() + timeout_s
        self._stopping.set()
        try:
            self._queue.put_nowait(_STOP)
        except queue.Full:
            pass  # the sender sees _stopping and gives up at the deadline
        self._thread.join(timeout_s)
        left = self._queue.qsize()
        if left:
            self._dropped.labels(self.name, "shutdown").inc(left)
        self._thread = None

    # -- the background thread ----------------------------------------------------------------------

    def _connect(self) -> KafkaProducer | None:
        delay = 0.2
        while not self._stopping.is_set():
            try:
                if self._topics:
                    ensure_topics(self.bootstrap_servers, self._topics, timeout_s=5)
                return KafkaProducer(
                    bootstrap_servers=self.bootstrap_servers, client_id=f"emitter-{self.name}",
                    **self._producer_config,
                )
            except Exception as exc:  # NoBrokersAvailable, DNS errors, ...: keep buffering, retry
                log.warning(
                    "emitter cannot reach the broker; retrying",
                    extra={"emitter": self.name, "error": repr(exc), "retry_in_s": delay},
                )
                self._stopping.wait(delay)
                delay = min(delay * 2, self._backoff_max_s)
        return None

    def _on_sent(self, _metadata: Any) -> None:
        self._sent.inc()

    def _on_failed(self, exc: BaseException) -> None:
        self._dropped.labels(self.name, "send_failed").inc()
        log.debug("emitter record not delivered", extra={"emitter": self.name, "error": repr(exc)})

    def _run(self) -> None:
        while True:
            if self._producer is None:
                self._producer = self._connect()
                if self._producer is None:
                    return
            if self._stopping.is_set() and time.monotonic() > self._close_deadline:
                break
            try:
                item = self._queue.get(timeout=0.2)
            except queue.Empty:
                self._buffered.set(0)
                if self._stopping.is_set():
                    break
                continue
            if item is _STOP:
                break
            self._buffered.set(self._queue.qsize())
            topic, key, value = item
            try:
                payload = value if isinstance(value, bytes) else self._encode(value)
            except Exception as exc:
                self._dropped.labels(self.name, "encode_failed").inc()
                log.warning("emitter cannot encode a record", extra={"emitter": self.name, "error": repr(exc)})
                continue
            try:
                future = self._producer.send(topic, key=key, value=payload)
                future.add_callback(self._on_sent)
                future.add_errback(self._on_failed)
            except KafkaError as exc:  # metadata or buffer wait timed out: the broker is slow or gone
                self._dropped.labels(self.name, "send_failed").inc()
                log.warning("emitter send failed", extra={"emitter": self.name, "error": repr(exc)})
                time.sleep(0.1)
            except Exception as exc:
                self._dropped.labels(self.name, "send_failed").inc()
                log.warning("emitter send failed", extra={"emitter": self.name, "error": repr(exc)})
        producer, self._producer = self._producer, None
        if producer is not None:
            try:
                producer.flush(timeout=2.0)
            except Exception:
                pass
            try:
                producer.close(timeout=2.0)
            except Exception:
                pass
        self._buffered.set(self._queue.qsize())
