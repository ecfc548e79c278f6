"""The trainer's Kafka reads and writes: offset ranges, the committed state, the DLQ and events.

The trainer does not use consumer-group offsets. What it has consumed is the lineage in its
state record (a compacted topic keyed by model name), written in one acknowledged send together
with the state it describes; so offsets are never committed without the learning they produced,
nor the other way round (services/trainer/service.py).
"""

from __future__ import annotations

import time
from typing import Any

import orjson
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from services.trainer.core import Offsets

MAX_STATE_BYTES = 8 * 1024 * 1024


class TopicsError(RuntimeError):
    """An offset range cannot be read (retention removed it, the broker is gone); the message says which."""


class KafkaIO:
    def __init__(self, bootstrap_servers: str, *, client_id: str = "trainer", read_timeout_s: float = 60.0) -> None:
        self.bootstrap_servers = bootstrap_servers
        self.read_timeout_s = read_timeout_s
        self.consumer = KafkaConsumer(
            bootstrap_servers=bootstrap_servers, group_id=None, enable_auto_commit=False, client_id=client_id,
            max_poll_records=5_000, fetch_max_bytes=MAX_STATE_BYTES + 1024 * 1024,
            max_partition_fetch_bytes=MAX_STATE_BYTES + 1024 * 1024, allow_auto_create_topics=False,
        )
        self.producer = KafkaProducer(
            bootstrap_servers=bootstrap_servers, client_id=client_id, acks="all", max_request_size=MAX_STATE_BYTES,
            request_timeout_ms=30_000, max_block_ms=30_000, linger_ms=5,
        )

    def close(self) -> None:
        self.consumer.close()
        self.producer.close(timeout=10)

    # -- offsets ---------------------------------------------------------------------------------------

    def _partitions(self, topic: str) -> list[TopicPartition]:
        deadline = time.monotonic() + self.read_timeout_s
        while True:
            partitions = self.consumer.partitions_for_topic(topic)
            if partitions:
                return [TopicPartition(topic, p) for p in sorted(partitions)]
            if time.monotonic() > deadline:
                raise TopicsError(f"topic {topic!r} has no partitions (does it exist?)")
            time.sleep(0.5)

    def end_offsets(self, topic: str) -> Offsets:
        return {tp.partition: o for tp, o in self.consumer.end_offsets(self._partitions(topic)).items()}

    def beginning_offsets(self, topic: str) -> Offsets:
        return {tp.partition: o for tp, o in self.consumer.beginning_offsets(self._partitions(topic)).items()}

    # -- reading a range ---------------------------------------------------------------------------------

    def read(self, topic: str, start: Offsets, end: Offsets) -> list[Any]:
        """Every record of `topic` with start[p] <= offset < end[p], per partition in offset order."""
        wanted = {p: (start.get(p, 0), e) for p, e in end.items() if e > start.get(p, 0)}
        if not wanted:
            return []
        tps = [TopicPartition(topic, p) for p in sorted(wanted)]
        first = self.consumer.beginning_offsets(tps)
        for tp in tps:
            if first[tp] > wanted[tp.partition][0]:
                raise TopicsError(f"{topic}[{tp.partition}] offsets {wanted[tp.partition][0]}..{first[tp] - 1} are "
                                  "gone from the broker (retention); the range cannot be read")
        self.consumer.assign(tps)
        for tp in tps:
            self.consumer.seek(tp, wanted[tp.partition][0])
        records: list[Any] = []
        deadline = time.monotonic() + self.read_timeout_s
        open_tps = set(tps)
        while open_tps:
            if time.monotonic() > deadline:
                raise TopicsError(f"reading {topic} {wanted} timed out after {self.read_timeout_s:.0f}s")
            for tp, batch in self.consumer.poll(timeout_ms=500).items():
                stop = wanted[tp.partition][1]
                records.extend(r for r in batch if r.offset < stop)
            for tp in list(open_tps):
                if self.consumer.position(tp) >= wanted[tp.partition][1]:
                    open_tps.discard(tp)
                    self.consumer.pause(tp)
        self.consumer.unsubscribe()
        return records

    # -- state and records -----------------------------------------------------------------------------

    def latest_value(self, topic: str, key: str) -> dict[str, Any] | None:
        """The last record for `key` on a compacted topic, parsed, or None."""
        ends = self.end_offsets(topic)
        value = None
        for r in self.read(topic, self.beginning_offsets(topic), ends):
            if r.key == key.encode():
                value = r.value
        return orjson.loads(value) if value else None

    def send(self, topic: str, key: str, value: dict[str, Any] | bytes) -> None:
        """One record, acknowledged by the broker (acks=all) before this returns."""
        payload = value if isinstance(value, bytes) else orjson.dumps(value)
        self.producer.send(topic, key=key.encode(), value=payload).get(timeout=60)
