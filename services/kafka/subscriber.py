"""Follow one model's messages on the compacted `models` topic, in a background thread.

    subscriber = ModelSubscriber(bootstrap, "models", "breast-cancer", handler)
    subscriber.start(loop)  # returns at once; the thread connects, recovers, then follows
    ...
    subscriber.stop()

What the thread does:

1. **Connect** (KafkaConsumer without a consumer group: every app replica must see every
   model message, so partitions are *assigned*, not shared). Make sure the topic exists with
   its compacted configuration, since a consumer would otherwise auto-create it uncompacted.
2. **Recover** once: seek to the beginning, take the end offsets, read until every partition's
   position reaches them; the records keyed by this model's name go to `handler.recover()`
   (oldest first), which picks the latest one it accepts. `recovered` is set afterwards.
3. **Follow**: poll; each new record for this model goes to `handler.handle()`.

kafka-python's consumer blocks, hence the thread; the handler is asyncio code. `_deliver` is
the one place a record crosses over: it runs the handler's coroutine on the service's event
loop and waits for it, so a model load never blocks the loop and records are handled one at a
time, in offset order; polling simply waits meanwhile.

Nothing in the loop may kill it: any error (broker gone, timeouts, a handler bug) is logged,
counted (`kafka_subscriber_errors_total`) and followed by a reconnect with exponential backoff
(capped at `backoff_max_s`). The thread remembers the next offset per partition, so a
reconnect resumes where it stopped and no message is handled twice. kafka-python itself also
reconnects under a live consumer, so short outages usually pass without a reconnect here.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
from collections.abc import Coroutine
from typing import Any, Protocol

from kafka import KafkaConsumer, TopicPartition

from services.kafka import metrics
from services.kafka.topics import MODEL_FETCH_BYTES, ensure_topics, models_topic

log = logging.getLogger(__name__)

RECOVERY_KEEP = 8
"""During recovery, how many of the newest records for the model are kept as candidates."""


class ModelHandler(Protocol):
    async def recover(self, records: list[Any]) -> None:
        """Records for this model found at start-up, oldest first (possibly none)."""

    async def handle(self, record: Any) -> None:
        """A record for this model that arrived after recovery."""


class ModelSubscriber:
    def __init__(
        self,
        bootstrap_servers: str,
        topic: str,
        model_name: str,
        handler: ModelHandler,
        *,
        backoff_max_s: float = 5.0,
        poll_timeout_ms: int = 200,
        client_id: str = "model-subscriber",
        create_topic: bool = True,
    ) -> None:
        self.bootstrap_servers = bootstrap_servers
        self.topic = topic
        self.model_name = model_name
        self._key = model_name.encode()
        self.handler = handler
        self.backoff_max_s = backoff_max_s
        self.poll_timeout_ms = poll_timeout_ms
        self.client_id = client_id
        self.create_topic = create_topic
        self.recovered = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._next: dict[TopicPartition, int] = {}
        self._errors = metrics.SUBSCRIBER_ERRORS.labels(model_name)
        metrics.SUBSCRIBER_RECOVERED.labels(model_name).set(0)

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start the thread; the handler's coroutines run on `loop`."""
        self._loop = loop
        self._thread = threading.Thread(target=self._run, name=f"models-subscriber-{self.model_name}", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout_s)

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _deliver(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run a handler coroutine on the service's event loop and wait for it (or for stop)."""
        assert self._loop is not None
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        while True:
            try:
                return future.result(timeout=0.5)
            except concurrent.futures.TimeoutError:
                if self._stopping.is_set():
                    future.cancel()
                    return

    # -- the thread ---------------------------------------------------------------------------------

    def _run(self) -> None:
        delay = 0.2
        while not self._stopping.is_set():
            try:
                self._session()
                delay = 0.2
            except Exception as exc:
                self._errors.inc()
                log.warning(
                    "models subscriber error; reconnecting",
                    extra={"topic": self.topic, "model_name": self.model_name, "error": repr(exc),
                           "retry_in_s": round(delay, 2)},
                )
                self._stopping.wait(delay)
                delay = min(delay * 2, self.backoff_max_s)

    def _consumer(self) -> KafkaConsumer:
        return KafkaConsumer(
            bootstrap_servers=self.bootstrap_servers,
            client_id=self.client_id,
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_partition_fetch_bytes=MODEL_FETCH_BYTES,
            fetch_max_bytes=MODEL_FETCH_BYTES,
            receive_message_max_bytes=MODEL_FETCH_BYTES + 1024 * 1024,
            allow_auto_create_topics=False,
            bootstrap_timeout_ms=5000,
            request_timeout_ms=10000,
            reconnect_backoff_max_ms=int(self.backoff_max_s * 1000),
            metadata_max_age_ms=30000,
        )

    def _session(self) -> None:
        if self.create_topic:
            ensure_topics(self.bootstrap_servers, [models_topic(self.topic)], timeout_s=5)
        consumer = self._consumer()
        try:
            partitions = consumer.partitions_for_topic(self.topic)
            if not partitions:
                raise RuntimeError(f"topic {self.topic!r} has no partitions in the broker's metadata yet")
            tps = [TopicPartition(self.topic, p) for p in sorted(partitions)]
            consumer.assign(tps)
            if not self.recovered.is_set():
                self._recover(consumer, tps)
            else:
                for tp in tps:
                    if tp in self._next:
                        consumer.seek(tp, self._next[tp])
                    else:
                        consumer.seek_to_beginning(tp)
            self._follow(consumer)
        finally:
            try:
                consumer.close(autocommit=False, timeout_ms=2000)
            except Exception:
                pass

    def _recover(self, consumer: KafkaConsumer, tps: list[TopicPartition]) -> None:
        consumer.seek_to_beginning(*tps)
        ends = consumer.end_offsets(tps, timeout_ms=10000)
        mine: list[Any] = []
        while not self._stopping.is_set() and any(consumer.position(tp, timeout_ms=10000) < ends[tp] for tp in tps):
            for tp, batch in consumer.poll(timeout_ms=self.poll_timeout_ms).items():
                for record in batch:
                    self._next[tp] = record.offset + 1
                    if record.key == self._key:
                        mine.append(record)
                        del mine[:-RECOVERY_KEEP]
        if self._stopping.is_set():
            return
        for tp in tps:
            self._next.setdefault(tp, consumer.position(tp))
        log.info(
            "models topic read to its end offsets",
            extra={"topic": self.topic, "model_name": self.model_name, "candidates": len(mine),
                   "end_offsets": {str(tp.partition): off for tp, off in ends.items()}},
        )
        self._deliver(self.handler.recover(mine))
        self.recovered.set()
        metrics.SUBSCRIBER_RECOVERED.labels(self.model_name).set(1)

    def _follow(self, consumer: KafkaConsumer) -> None:
        while not self._stopping.is_set():
            for tp, batch in consumer.poll(timeout_ms=self.poll_timeout_ms).items():
                for record in batch:
                    self._next[tp] = record.offset + 1
                    if record.key == self._key:
                        self._deliver(self.handler.handle(record))
                    if self._stopping.is_set():
                        return
