"""The prediction log from the streaming app: events on the real broker; with the log's broker
absent, requests are still all answered and the drops are counted."""

from __future__ import annotations

import hashlib
import secrets
import socket
import uuid

import httpx
import numpy as np
import pytest

from services.kafka import publisher
from services.stack.kafka_tools import json_values, read_topic
from services.stack.process import ServiceProcess, free_port, http_ready

pytestmark = pytest.mark.integration

MODEL = "breast-cancer"


def start_app(start_service, bootstrap: str, key: bytes, models_topic: str, **env: str) -> str:
    port = free_port()
    start_service(ServiceProcess(
        f"streaming-{port}",
        ["-m", "services.apps.streaming"],
        env={
            "STREAMING_PORT": str(port),
            "STREAMING_BOOTSTRAP_SERVERS": bootstrap,
            "STREAMING_MODELS_TOPIC": models_topic,
            "STREAMING_MODEL_EVENTS_TOPIC": f"{models_topic}-events",
            "STREAMING_PREDICTION_LOG": "true",
            "MODEL_SIGNING_KEY": key.decode(),
            **env,
        },
        ready=http_ready(f"http://127.0.0.1:{port}/readyz"),
    ))
    return f"http://127.0.0.1:{port}"


@pytest.fixture
def published(kafka_bootstrap_servers):
    key = secrets.token_hex(32).encode()
    topic = f"models-{uuid.uuid4().hex[:8]}"
    publisher.publish(kafka_bootstrap_servers, MODEL, 1, key=key, topic=topic)
    return key, topic


def test_every_answer_is_logged_with_request_id_version_and_input_hash(kafka_bootstrap_servers, start_service,
                                                                       published, holdout):
    key, models_topic = published
    predictions = f"predictions-{uuid.uuid4().hex[:8]}"
    url = start_app(start_service, kafka_bootstrap_servers, key, models_topic,
                    STREAMING_PREDICTIONS_TOPIC=predictions)
    x = holdout[1][:40]
    answers = {}
    with httpx.Client(base_url=url) as client:
        for i, row in enumerate(x.tolist()):
            r = client.post("/predict", json={"instances": [row]}, headers={"x-request-id": f"log-{i}"})
            assert r.status_code == 200
            answers[f"log-{i}"] = r.json()
        assert client.post("/predict", json={"instances": [[1.0]]}).status_code == 400  # not logged
    events = json_values(read_topic(kafka_bootstrap_servers, predictions, until=lambda rs: len(rs) >= len(x)))
    assert {e["request_id"] for e in events} == set(answers)
    for e in events:
        i = int(e["request_id"].split("-")[1])
        body = answers[e["request_id"]]
        assert (e["model_name"], e["model_version"], e["app"], e["rows"]) == (MODEL, 1, "streaming", 1)
        assert e["labels"] == body["labels"]
        np.testing.assert_allclose(e["probabilities"], body["probabilities"], atol=1e-7)
        assert e["input_sha256"] == hashlib.sha256(x[i : i + 1].astype(np.float32).tobytes()).hexdigest()
        assert e["latency_ms"] > 0 and "inputs" not in e


def test_absent_prediction_log_broker_never_fails_a_request(kafka_bootstrap_servers, start_service, published,
                                                             holdout):
    key, models_topic = published
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{s.getsockname()[1]}"
    url = start_app(start_service, kafka_bootstrap_servers, key, models_topic,
                    STREAMING_PREDICTION_LOG_BOOTSTRAP_SERVERS=dead, STREAMING_PREDICTION_LOG_BUFFER="20")
    rows = holdout[1].tolist()
    with httpx.Client(base_url=url) as client:
        statuses = [client.post("/predict", json={"instances": [rows[i % len(rows)]]}).status_code
                    for i in range(300)]
        metrics = client.get("/metrics").text
    assert statuses == [200] * 300

    def value(line_start: str) -> float:
        return sum(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines() if line.startswith(line_start))

    dropped = value('kafka_emitter_dropped_total{emitter="predictions",reason="buffer_full"}')
    assert dropped >= 300 - 20 - 1, metrics  # all but what the buffer (and the sender's hand) holds
    assert value('kafka_emitter_sent_total{emitter="predictions"}') == 0
