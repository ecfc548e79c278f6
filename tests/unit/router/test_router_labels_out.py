"""The router's labels-topic writer (labels_out.py): which id a label is keyed by, what is skipped or
dropped, and the setting that refuses to start without a broker. The broker path itself is
tests/integration/test_router_labels.py."""

from __future__ import annotations

import json
import secrets

import pytest
from pydantic import ValidationError

from services.kafka.emitter import BackgroundEmitter
from services.router.labels_out import LabelsOut, upstream_id
from services.router.settings import RouterSettings
from services.router.tokens import TokenCodec

CODEC = TokenCodec([secrets.token_bytes(32)])


def test_a_token_resolves_to_its_nonce_the_id_forwarded_upstream() -> None:
    token = CODEC.mint("stable", 1, 0, "abcd1234-7", (1,))
    assert upstream_id(token, {"request_id": token, "label": 1}, CODEC) == "abcd1234-7"
    assert upstream_id(token, {"key": "user-1", "label": 1}, CODEC) == "abcd1234-7"
    assert upstream_id("plain-id", {"request_id": "plain-id", "label": 1}, CODEC) == "plain-id"


def test_a_client_id_a_token_cannot_carry_is_taken_from_the_body() -> None:
    token = CODEC.mint("stable", 1, 0, "order:17", (1,))  # ':' is not a token field character
    assert upstream_id(token, {"request_id": "order:17", "label": 1}, CODEC) == "order:17"
    assert upstream_id(token, {"key": "user-1", "label": 1}, CODEC) is None


def emitter(buffer_size: int) -> BackgroundEmitter:
    return BackgroundEmitter("127.0.0.1:9", name="router-labels-test", buffer_size=buffer_size)  # never started


def test_labels_are_buffered_keyed_by_the_upstream_id_and_a_full_buffer_is_dropped_not_raised() -> None:
    out = LabelsOut("127.0.0.1:9", "labels-t", emitter=emitter(1))
    token = CODEC.mint("stable", 1, 0, "abcd1234-8", (0,))
    assert out.forward(token, {"request_id": token, "label": 1}, CODEC) == "buffered"
    topic, key, value = out.emitter._queue.get_nowait()
    record = json.loads(value)
    assert (topic, key, record["request_id"], record["labels"], record["source"]) == (
        "labels-t", b"abcd1234-8", "abcd1234-8", [1], "router")
    out.forward("r-1", {"request_id": "r-1", "labels": [0]}, CODEC)  # fills the 1-record buffer
    assert out.forward("r-2", {"request_id": "r-2", "labels": [1]}, CODEC) == "dropped"


def test_rewards_write_nothing_and_unusable_ids_are_skipped() -> None:
    out = LabelsOut("127.0.0.1:9", "labels-t", emitter=emitter(10))
    assert out.forward("r-1", {"request_id": "r-1", "reward": 1.0}, CODEC) is None
    assert out.forward("a/b", {"request_id": "a/b", "label": 1}, CODEC) == "skipped"
    assert out.forward("x" * 129, {"request_id": "x" * 129, "label": 1}, CODEC) == "skipped"
    assert out.emitter.buffered == 0


def test_the_labels_topic_needs_a_broker(tmp_path) -> None:
    with pytest.raises(ValidationError, match="needs ROUTER_KAFKA_BOOTSTRAP_SERVERS"):
        RouterSettings(routing_config=tmp_path / "r.yaml", labels_topic="labels")
    with pytest.raises(ValidationError, match="labels_topic"):
        RouterSettings(routing_config=tmp_path / "r.yaml", kafka_bootstrap_servers="k:9092", labels_topic="a b")
    assert RouterSettings(routing_config=tmp_path / "r.yaml", labels_topic="").labels_topic is None
    s = RouterSettings(routing_config=tmp_path / "r.yaml", kafka_bootstrap_servers="k:9092", labels_topic="labels")
    assert s.labels_topic == "labels"
