"""Small Kafka helpers for the demo, benchmarks and tests: read a topic, send request records.

Not on any serving path.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

import orjson
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from services.kafka.topics import MODEL_FETCH_BYTES


def read_topic(
    bootstrap_servers: str,
    topic: str,
    *,
    until: Callable[[list[Any]], bool] | None = None,
    max_polls: int = 240,
    poll_ms: int = 250,
) -> list[Any]:
    """Records of every partition from the beginning, until `until(records)` is true, or the end
    offsets are reached when no `until` is given, or after `max_polls` polls."""
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap_servers, group_id=None, enable_auto_commit=False,
        max_partition_fetch_bytes=MODEL_FETCH_BYTES, fetch_max_bytes=MODEL_FETCH_BYTES,
        receive_message_max_bytes=MODEL_FETCH_BYTES + 1024 * 1024,
        allow_auto_create_topics=False, max_poll_records=10_000,
    )
    records: list[Any] = []
    try:
        tps: list[TopicPartition] = []
        for _ in range(max_polls):
            partitions = consumer.partitions_for_topic(topic)
            if partitions:
                tps = [TopicPartition(topic, p) for p in sorted(partitions)]
                break
            time.sleep(poll_ms / 1000)
        if not tps:
            return records
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        ends = consumer.end_offsets(tps) if until is None else None
        for _ in range(max_polls):
            if until is not None and until(records):
                break
            if ends is not None and all(consumer.position(tp) >= ends[tp] for tp in tps):
                break
            for batch in consumer.poll(timeout_ms=poll_ms).values():
                records.extend(batch)
        return records
    finally:
        consumer.close(autocommit=False)


def json_values(records: Iterable[Any]) -> list[dict[str, Any]]:
    return [orjson.loads(r.value) for r in records]


def request_producer(bootstrap_servers: str) -> KafkaProducer:
    """A producer tuned for many small request records (large batches, short linger)."""
    return KafkaProducer(bootstrap_servers=bootstrap_servers, acks="all", linger_ms=5, batch_size=1024 * 1024,
                         client_id="scoring-client")


def send_requests(producer: KafkaProducer, topic: str, requests: Iterable[tuple[str, Any]]) -> int:
    """Send `(request_id, instances)` pairs as scoring requests keyed by request id; returns the count."""
    n = 0
    for request_id, instances in requests:
        producer.send(topic, key=request_id.encode(),
                      value=orjson.dumps({"request_id": request_id, "instances": instances}))
        n += 1
    producer.flush()
    return n
