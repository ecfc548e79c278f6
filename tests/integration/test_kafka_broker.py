"""Smoke tests of the project's real Kafka broker: big messages on a compacted topic, and data
that survives a stop/start of the same broker."""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import sys
import uuid

import pytest
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import ConfigResource, ConfigResourceType

from services.kafka.topics import MAX_MESSAGE_BYTES
from services.stack.kafka_broker import BrokerHandle
from services.stack.paths import REPO_ROOT

pytestmark = pytest.mark.integration

MODEL_SIZE = 2 * 1024 * 1024


def _create_compacted_topic(bootstrap: str, topic: str) -> dict[str, str]:
    """Create the topic like the `models` topic is meant to be; return its non-default configs."""
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        admin.create_topics(
            {
                topic: {
                    "num_partitions": 1,
                    "replication_factor": 1,
                    "configs": {"cleanup.policy": "compact", "max.message.bytes": str(MAX_MESSAGE_BYTES)},
                }
            },
            wait_for_metadata=True,
        )
        described = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)])
    finally:
        admin.close()
    return {name: entry["value"] for name, entry in described["topic"][topic].items()}


def _producer(bootstrap: str) -> KafkaProducer:
    return KafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",
        max_request_size=MAX_MESSAGE_BYTES,
        retries=10,
        request_timeout_ms=30000,
    )


def _read_all(bootstrap: str, topic: str, expected: int) -> list[tuple[bytes, bytes]]:
    """Read the topic from the start until `expected` records arrived (or a bounded number of polls)."""
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        max_partition_fetch_bytes=MAX_MESSAGE_BYTES,
        fetch_max_bytes=MAX_MESSAGE_BYTES,
    )
    try:
        tp = TopicPartition(topic, 0)
        consumer.assign([tp])
        consumer.seek_to_beginning(tp)
        records: list[tuple[bytes, bytes]] = []
        for _ in range(60):
            for batch in consumer.poll(timeout_ms=500).values():
                records.extend((r.key, r.value) for r in batch)
            if len(records) >= expected:
                break
        return records
    finally:
        consumer.close()


def test_compacted_topic_round_trips_a_2mb_message(kafka_bootstrap_servers: str) -> None:
    topic = f"smoke-models-{uuid.uuid4().hex[:8]}"
    configs = _create_compacted_topic(kafka_bootstrap_servers, topic)
    assert configs["cleanup.policy"] == "compact"
    assert int(configs["max.message.bytes"]) == MAX_MESSAGE_BYTES

    payload = os.urandom(MODEL_SIZE)  # random bytes: nothing can compress it under the 1 MiB default
    producer = _producer(kafka_bootstrap_servers)
    try:
        meta = producer.send(topic, key=b"model-a", value=payload).get(timeout=60)
    finally:
        producer.close()
    assert meta.topic == topic and meta.offset == 0

    records = _read_all(kafka_bootstrap_servers, topic, expected=1)
    assert len(records) == 1
    key, value = records[0]
    assert key == b"model-a"
    assert len(value) == MODEL_SIZE
    assert hashlib.sha256(value).digest() == hashlib.sha256(payload).digest()


def test_stop_and_start_keeps_topic_data_and_address(kafka_broker: BrokerHandle) -> None:
    if not kafka_broker.can_restart:
        pytest.skip("the broker comes from $KAFKA_BOOTSTRAP_SERVERS and is not ours to stop")
    bootstrap = kafka_broker.start()
    topic = f"smoke-restart-{uuid.uuid4().hex[:8]}"
    _create_compacted_topic(bootstrap, topic)
    sent = [(f"model-{i}".encode(), os.urandom(64 * 1024)) for i in range(5)]
    producer = _producer(bootstrap)
    try:
        for key, value in sent:
            producer.send(topic, key=key, value=value)
        producer.flush(timeout=60)

        kafka_broker.stop()
        port = int(bootstrap.rsplit(":", 1)[1])
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=2).close()

        assert kafka_broker.start() == bootstrap  # same address, so clients can simply reconnect
        # The producer made before the outage still delivers after it.
        late = producer.send(topic, key=b"model-late", value=b"after restart").get(timeout=60)
        assert late.offset == len(sent)
    finally:
        producer.close()
        kafka_broker.start()  # leave a running broker for the rest of the session

    records = _read_all(bootstrap, topic, expected=len(sent) + 1)
    assert records == [*sent, (b"model-late", b"after restart")]


def test_cli_stop_and_status_on_an_empty_data_dir(tmp_path) -> None:
    """No broker in the dir: `status` says so with exit 1, `stop` is a harmless no-op."""

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "services.stack.kafka_broker", *args, "--data-dir", str(tmp_path)],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )

    status = cli("status")
    assert status.returncode == 1 and status.stdout.startswith("stopped")
    assert cli("stop").returncode == 0
    assert cli("stop").returncode == 0
