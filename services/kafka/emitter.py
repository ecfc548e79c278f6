"""Fire-and-forget records to Kafka that can never block or fail the caller.

    emitter = BackgroundEmitter("127.0.0.1:9092", name="predictions", buffer_size=10_000)
    emitter.start()
    emitter.offer("predictions", b"request-id", {"any": "json"})   # returns at once, True if buffered
    emitter.close()

`offer` only appends to a bounded in-memory queue (a few hundred nanoseconds). A background
thread owns the KafkaProducer: it serialises (orjson), sends, and reconnects with backoff when
the broker is slow or absent. A record counts against the buffer until the broker acknowledges
it (queued + in flight <= `buffer_size`). A send that fails with a retriable error (the broker
gone or slow: delivery timed out, no connection, leader moving) puts the record back into the
buffer, counted in `kafka_emitter_retried_total`, and the sender backs off; so a broker outage
costs nothing while the buffer has room (issue #11: the prediction log used to drop every event
of an outage). Only when the buffer is full is a new record dropped
(`kafka_emitter_dropped_total{reason="buffer_full"}`); records the broker refuses for good
(too large, not authorised) are counted as `send_failed`. Nothing here raises into the caller.

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
from kafka.errors import KafkaError, KafkaTimeoutError

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
        self._capacity = buffer_size
        self._inflight = 0  # handed to the producer, not yet acknowledged or failed
        self._lock = threading.Lock()
        self._failing = threading.Event()  # a send failed: back off before the next one
        self._retried = metrics.EMITTER_RETRIED.labels(name)
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
        with self._lock:
            room = self._queue.qsize() + self._inflight < self._capacity
            if room:
                self._queue.put_nowait((topic, key, value))
        if not room:
            self._buffer_full.inc()
        return room

    @property
    def buffered(self) -> int:
        """Records not yet acknowledged: queued, or sent and awaiting the broker."""
        return self._queue.qsize() + self._inflight

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
        left = self.buffered
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
        with self._lock:
            self._inflight -= 1
        self._sent.inc()

    def _failed(self, item: tuple, exc: BaseException, *, inflight: bool) -> None:
        """A send did not reach the broker: back into the buffer if the error is transient, else dropped."""
        retriable = isinstance(exc, KafkaTimeoutError) or bool(getattr(exc, "retriable", False))
        with self._lock:
            if inflight:
                self._inflight -= 1
            if retriable and not self._stopping.is_set():
                # Never full here: the record held its place in the buffer while it was in flight.
                self._queue.put_nowait(item)
        self._failing.set()
        if retriable and not self._stopping.is_set():
            self._retried.inc()
        else:
            self._dropped.labels(self.name, "send_failed").inc()
            log.debug("emitter record not delivered", extra={"emitter": self.name, "error": repr(exc)})

    def _run(self) -> None:
        delay = 0.2
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
            self._buffered.set(self.buffered)
            topic, key, value = item
            try:
                payload = value if isinstance(value, bytes) else self._encode(value)
            except Exception as exc:
                self._dropped.labels(self.name, "encode_failed").inc()
                log.warning("emitter cannot encode a record", extra={"emitter": self.name, "error": repr(exc)})
                continue
            if self._failing.is_set():  # the broker failed us lately: wait before trying again
                self._failing.clear()
                self._stopping.wait(delay)
                delay = min(delay * 2, self._backoff_max_s)
            else:
                delay = 0.2
            sent = (topic, key, payload)
            with self._lock:
                self._inflight += 1
            try:
                future = self._producer.send(topic, key=key, value=payload)
                future.add_callback(self._on_sent)
                future.add_errback(lambda exc, sent=sent: self._failed(sent, exc, inflight=True))
            except KafkaError as exc:  # metadata or buffer wait timed out: the broker is slow or gone
                log.warning("emitter send failed", extra={"emitter": self.name, "error": repr(exc)})
                self._failed(sent, exc, inflight=True)
            except Exception as exc:
                log.warning("emitter send failed", extra={"emitter": self.name, "error": repr(exc)})
                self._failed(sent, exc, inflight=True)
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
