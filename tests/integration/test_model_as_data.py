"""Model as data against the real broker: the streaming app as a real process, models published
as signed messages on a compacted topic (one topic per test), traffic over HTTP throughout."""

from __future__ import annotations

import hashlib
import json
import secrets
import threading
import time
import uuid
from dataclasses import dataclass, field

import httpx
import numpy as np
import onnxruntime as ort
import pytest

from services.kafka import messages, publisher
from services.stack import promtool
from services.stack.kafka_tools import json_values, read_topic
from services.stack.process import ServiceProcess, free_port, http_ready

pytestmark = pytest.mark.integration

MODEL = "breast-cancer"


@dataclass
class Topics:
    models: str = field(default_factory=lambda: f"models-{uuid.uuid4().hex[:8]}")
    events: str = field(default_factory=lambda: f"model-events-{uuid.uuid4().hex[:8]}")


@pytest.fixture
def key() -> bytes:
    return secrets.token_hex(32).encode()


@pytest.fixture
def topics() -> Topics:
    return Topics()


@pytest.fixture(scope="module")
def ort_outputs(model_repo, holdout):
    """Per version: ONNX Runtime's probabilities for every holdout row, the reference answers."""
    x32 = holdout[1].astype(np.float32)
    out = {}
    for v in (1, 2, 3):
        sess = ort.InferenceSession(str(model_repo / MODEL / str(v) / "model.onnx"))
        out[v] = np.vstack([sess.run(None, {"input": x32[i : i + 1]})[1] for i in range(len(x32))])
    return out


def app_process(port: int, bootstrap: str, topics: Topics, key: bytes, **env: str) -> ServiceProcess:
    return ServiceProcess(
        f"streaming-{port}",
        ["-m", "services.apps.streaming"],
        env={
            "STREAMING_PORT": str(port),
            "STREAMING_BOOTSTRAP_SERVERS": bootstrap,
            "STREAMING_MODEL_NAME": MODEL,
            "STREAMING_MODELS_TOPIC": topics.models,
            "STREAMING_MODEL_EVENTS_TOPIC": topics.events,
            "STREAMING_BACKOFF_MAX_S": "1",
            "MODEL_SIGNING_KEY": key.decode(),
            **env,
        },
        ready=http_ready(f"http://127.0.0.1:{port}/readyz"),
    )


def publish(bootstrap: str, topics: Topics, key: bytes, version: int, **kw) -> publisher.Published:
    return publisher.publish(bootstrap, MODEL, version, key=key, topic=topics.models, allow_failed_gate=True, **kw)


def send_raw(bootstrap: str, topics: Topics, value: bytes, record_key: str = MODEL) -> int:
    producer = publisher.make_producer(bootstrap)
    try:
        return publisher.send(producer, topics.models, record_key, value).offset
    finally:
        producer.close()


def artifact(model_repo, name: str, version: int) -> tuple[dict, bytes, bytes]:
    d = model_repo / name / str(version)
    return (json.loads((d / "model-card.json").read_text()), (d / "model.onnx").read_bytes(),
            (d / "holdout.csv").read_bytes())


def flipped_labels(holdout_csv: bytes, n: int) -> bytes:
    """The holdout set with the labels of its first `n` rows flipped (0 <-> 1)."""
    header, *rows = holdout_csv.decode().splitlines()
    for i in range(n):
        values = rows[i].split(",")
        values[-1] = str(1 - int(values[-1]))
        rows[i] = ",".join(values)
    return ("\n".join([header, *rows]) + "\n").encode()


def ready_version(url: str) -> int | None:
    r = httpx.get(f"{url}/readyz", timeout=5)
    return r.json().get("model_version") if r.status_code == 200 else None


def wait_for_version(url: str, version: int, polls: int = 300) -> None:
    for _ in range(polls):
        if ready_version(url) == version:
            return
        time.sleep(0.1)
    raise AssertionError(f"the app never served v{version}; it serves {ready_version(url)}")


def events_until(bootstrap: str, topics: Topics, predicate) -> list[dict]:
    records = read_topic(bootstrap, topics.events, until=lambda rs: predicate(json_values(rs)), max_polls=240)
    return json_values(records)


class Traffic:
    """Clients sending one holdout row per request, each answer kept with the row it was for."""

    def __init__(self, url: str, x: np.ndarray, threads: int = 2, max_requests: int = 50_000) -> None:
        self.url, self.x, self.max_requests = url, x, max_requests
        self.answers: list[tuple[int, int, int, list[float]]] = []  # (client, row, version, probabilities)
        self.failures: list[str] = []
        self.stop = threading.Event()
        self._lock = threading.Lock()
        self.threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(threads)]

    def _run(self, client_id: int) -> None:
        rows = self.x.tolist()
        with httpx.Client(base_url=self.url, timeout=10) as client:
            i = client_id
            while not self.stop.is_set() and len(self.answers) < self.max_requests:
                row = i % len(rows)
                try:
                    r = client.post("/predict", json={"instances": [rows[row]]})
                    if r.status_code != 200:
                        self.failures.append(f"{r.status_code}: {r.text[:200]}")
                    else:
                        body = r.json()
                        assert r.headers["x-model-version"] == f"{MODEL}:{body['model_version']}"
                        with self._lock:
                            self.answers.append((client_id, row, body["model_version"], body["probabilities"][0]))
                except Exception as exc:  # a connection error is a failed request too
                    self.failures.append(repr(exc))
                i += 1

    def __enter__(self) -> Traffic:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(30)

    def count(self, version: int | None = None) -> int:
        return sum(1 for a in list(self.answers) if version is None or a[2] == version)

    def wait(self, predicate, polls: int = 600) -> None:
        for _ in range(polls):
            if predicate() or self.failures or len(self.answers) >= self.max_requests:
                return
            time.sleep(0.05)


def check_exposition(text: str) -> None:
    """/metrics parses, and `promtool check metrics` accepts it when promtool is built."""
    from prometheus_client.parser import text_string_to_metric_families

    assert sum(1 for _ in text_string_to_metric_families(text)) > 0
    if promtool.path() is not None:
        result = promtool.check_metrics(text)
        assert result.returncode == 0, result.stdout.decode() + result.stderr.decode()


def check_answers(traffic: Traffic, ort_outputs) -> None:
    """Every answer equals ONNX Runtime's output of the version it names, for its row; per
    client, versions only move forward in publication order (no answer from a replaced model)."""
    assert not traffic.failures, traffic.failures[:5]
    for client, row, version, proba in traffic.answers:
        np.testing.assert_allclose(proba, ort_outputs[version][row], atol=1e-6,
                                   err_msg=f"client {client} row {row} labelled v{version}")


def test_publish_v1_served_then_v2_swapped_under_traffic(kafka_bootstrap_servers, start_service, topics, key,
                                                         holdout, ort_outputs):
    bootstrap = kafka_bootstrap_servers
    publish(bootstrap, topics, key, 1)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    start_service(app_process(port, bootstrap, topics, key))
    assert ready_version(url) == 1

    with Traffic(url, holdout[1]) as traffic:
        traffic.wait(lambda: traffic.count(1) >= 300)
        published = publish(bootstrap, topics, key, 2)
        traffic.wait(lambda: traffic.count(2) >= 300)
    check_answers(traffic, ort_outputs)
    assert traffic.count(1) >= 300 and traffic.count(2) >= 300, (traffic.count(1), traffic.count(2))
    for client in (0, 1):
        versions = [v for c, _, v, _ in traffic.answers if c == client]
        first_v2 = versions.index(2)
        assert set(versions[first_v2:]) == {2}, f"client {client} got v1 after v2"

    metrics = httpx.get(f"{url}/metrics").text
    assert f'model_served_version{{model_name="{MODEL}"}} 2.0' in metrics
    assert f'model_served_info{{model_name="{MODEL}",model_version="2"}} 1.0' in metrics
    assert f'model_swaps_total{{model_name="{MODEL}",model_version="2"}} 1.0' in metrics
    assert f'model_publish_to_swap_seconds_count{{model_name="{MODEL}",model_version="2"}} 1.0' in metrics
    check_exposition(metrics)
    events = events_until(bootstrap, topics, lambda es: any(e["event"] == "swapped" and e["model_version"] == 2
                                                            for e in es))
    swapped = [e for e in events if e["event"] == "swapped"]
    assert [(e["model_version"], e["from_version"]) for e in swapped] == [(1, None), (2, 1)]
    assert swapped[1]["source"]["offset"] == published.offset and swapped[1]["sha256"] == published.sha256
    assert any(e["event"] == "loaded" and e["model_version"] == 2 for e in events)


def test_bad_messages_are_refused_and_the_served_version_stays(kafka_bootstrap_servers, start_service, topics,
                                                               key, model_repo, holdout, ort_outputs):
    bootstrap = kafka_bootstrap_servers
    publish(bootstrap, topics, key, 1)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    start_service(app_process(port, bootstrap, topics, key))

    v2_card, v2_onnx, v2_holdout = artifact(model_repo, MODEL, 2)
    wine_card, wine_onnx, wine_holdout = artifact(model_repo, "wine", 2)
    good_v2 = messages.encode(v2_card, v2_onnx, v2_holdout, key)
    tampered = bytearray(good_v2)
    tampered[-100] ^= 0xFF  # one bit pattern inside the ONNX bytes
    garbage = b"\x08\x01 this is not an ONNX graph " * 50
    bad = {
        "signature/tampered": bytes(tampered),
        "signature/wrong key": messages.encode(v2_card, v2_onnx, v2_holdout, secrets.token_hex(32).encode()),
        "checksum/header": messages.encode(v2_card, v2_onnx, v2_holdout, key,
                                           sha256=hashlib.sha256(b"other").hexdigest()),
        "checksum/card": messages.encode(artifact(model_repo, MODEL, 1)[0], v2_onnx, v2_holdout, key),
        "contract/wine as breast-cancer": messages.encode({**wine_card, "name": MODEL, "version": 7}, wine_onnx,
                                                          wine_holdout, key),
        "load/corrupt onnx": messages.encode({**v2_card, "version": 8, "sha256": hashlib.sha256(garbage).hexdigest()},
                                             garbage, v2_holdout, key),
    }
    offsets = {}
    with Traffic(url, holdout[1], threads=1) as traffic:
        for name, value in bad.items():
            offsets[send_raw(bootstrap, topics, value)] = name.split("/")[0]
        events = events_until(bootstrap, topics,
                              lambda es: sum(e["event"] == "rejected" for e in es) >= len(bad))
        traffic.wait(lambda: traffic.count() >= 200)
    rejected = {e["source"]["offset"]: e for e in events if e["event"] == "rejected"}
    assert {off: e["reason"] for off, e in rejected.items()} == offsets
    assert all(e["model_name"] == MODEL and e["detail"] for e in rejected.values())
    assert "feature names" in next(e["detail"] for e in rejected.values() if e["reason"] == "contract")
    assert not any(e["event"] == "swapped" and e["model_version"] != 1 for e in events)
    check_answers(traffic, ort_outputs)
    assert {v for _, _, v, _ in traffic.answers} == {1}
    assert ready_version(url) == 1

    metrics = httpx.get(f"{url}/metrics").text
    for reason in ("signature", "checksum", "contract", "load"):
        assert f'reason="{reason}"' in metrics
    assert f'model_served_version{{model_name="{MODEL}"}} 1.0' in metrics
    check_exposition(metrics)

    # And a good message after all that is still taken.
    send_raw(bootstrap, topics, good_v2)
    wait_for_version(url, 2)


def test_a_version_whose_holdout_disagrees_with_its_card_is_refused_as_skew(kafka_bootstrap_servers, start_service,
                                                                           topics, key, model_repo, holdout,
                                                                           ort_outputs):
    """The integration check over Kafka: real v2 artifacts, signed and consistent, but one with its
    holdout labels altered and one with its card's accuracy altered. The app scores each holdout
    through its own input path, finds the card's claim unreachable, refuses the version (skew)
    and keeps serving v1; the real v2 after them is taken."""
    bootstrap = kafka_bootstrap_servers
    publish(bootstrap, topics, key, 1)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    start_service(app_process(port, bootstrap, topics, key))
    v2_card, v2_onnx, v2_holdout = artifact(model_repo, MODEL, 2)
    altered = {
        send_raw(bootstrap, topics, messages.encode(v2_card, v2_onnx, flipped_labels(v2_holdout, 3), key)): "labels",
        send_raw(bootstrap, topics, messages.encode({**v2_card, "metrics": {**v2_card["metrics"], "accuracy": 0.99}},
                                                    v2_onnx, v2_holdout, key)): "metric",
    }
    with Traffic(url, holdout[1], threads=1) as traffic:
        events = events_until(bootstrap, topics, lambda es: sum(e["event"] == "rejected" for e in es) >= 2)
        traffic.wait(lambda: traffic.count() >= 100)
    rejected = {e["source"]["offset"]: e for e in events if e["event"] == "rejected"}
    assert set(rejected) == set(altered)
    for e in rejected.values():
        assert (e["reason"], e["model_version"]) == ("skew", 2) and "training/serving skew" in e["detail"]
    assert "the card claims 0.990000" in next(e["detail"] for off, e in rejected.items() if altered[off] == "metric")
    assert not any(e["event"] == "swapped" and e["model_version"] == 2 for e in events)
    check_answers(traffic, ort_outputs)
    assert {v for _, _, v, _ in traffic.answers} == {1} and ready_version(url) == 1
    metrics = httpx.get(f"{url}/metrics").text
    assert f'model_rejections_total{{model_name="{MODEL}",model_version="2",reason="skew"}} 2.0' in metrics
    check_exposition(metrics)

    send_raw(bootstrap, topics, messages.encode(v2_card, v2_onnx, v2_holdout, key))
    wait_for_version(url, 2)


def test_restart_recovers_the_latest_accepted_model_and_rollback(kafka_bootstrap_servers, start_service, topics,
                                                                 key, model_repo):
    bootstrap = kafka_bootstrap_servers
    publish(bootstrap, topics, key, 1)
    publish(bootstrap, topics, key, 2)
    # Newest on the topic, but signed with another key: recovery must skip it for v2.
    send_raw(bootstrap, topics, messages.encode(*artifact(model_repo, MODEL, 3), b"not-the-key-0123456789abcdef"))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    app = start_service(app_process(port, bootstrap, topics, key))
    assert ready_version(url) == 2  # ready only once recovered, and with the latest accepted version
    app.stop()

    publish(bootstrap, topics, key, 1, rollback=True)  # the rollback, published while the app is down
    port2 = free_port()
    url2 = f"http://127.0.0.1:{port2}"
    start_service(app_process(port2, bootstrap, topics, key))
    assert ready_version(url2) == 1
    events = events_until(bootstrap, topics, lambda es: sum(e["event"] == "swapped" for e in es) >= 2)
    swapped = [(e["model_version"], e["from_version"]) for e in events if e["event"] == "swapped"]
    assert swapped == [(2, None), (1, None)]
    assert any(e["event"] == "rejected" and e["reason"] == "signature" and e["model_version"] == 3 for e in events)


def test_a_resent_old_record_is_refused_and_only_a_signed_rollback_rolls_back(kafka_bootstrap_servers,
                                                                              start_service, topics, key, holdout,
                                                                              ort_outputs):
    """Issue #11: re-sending the bytes of an older record (no key needed) rolled the app back. Now
    the release sequence inside the signed header is checked: the replay is refused and counted, v2
    keeps serving under traffic; a new signed rollback publication is taken; a gate-failed v3 is
    refused (the app does not take demo material by default)."""
    bootstrap = kafka_bootstrap_servers
    first = publish(bootstrap, topics, key, 1)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    start_service(app_process(port, bootstrap, topics, key))
    second = publish(bootstrap, topics, key, 2)
    wait_for_version(url, 2)
    on_topic = {r.offset: r.value for r in read_topic(bootstrap, topics.models,
                                                      until=lambda rs: len(rs) >= 2)}
    old_bytes = on_topic[first.offset]
    with Traffic(url, holdout[1], threads=1) as traffic:
        replayed = send_raw(bootstrap, topics, old_bytes)  # what an attacker with topic access can do
        gate_failed = publish(bootstrap, topics, key, 3).offset
        events = events_until(bootstrap, topics, lambda es: sum(e["event"] == "rejected" for e in es) >= 2)
        traffic.wait(lambda: traffic.count() >= 100)
    rejected = {e["source"]["offset"]: (e["reason"], e["model_version"]) for e in events if e["event"] == "rejected"}
    assert rejected == {replayed: ("replay", 1), gate_failed: ("gate", 3)}
    check_answers(traffic, ort_outputs)
    assert {v for _, _, v, _ in traffic.answers} == {2} and ready_version(url) == 2
    metrics = httpx.get(f"{url}/metrics").text
    assert f'model_rejections_total{{model_name="{MODEL}",model_version="1",reason="replay"}} 1.0' in metrics
    assert f'model_rejections_total{{model_name="{MODEL}",model_version="3",reason="gate"}} 1.0' in metrics

    rollback = publish(bootstrap, topics, key, 1, rollback=True)
    assert rollback.rollback and rollback.release > first.release
    wait_for_version(url, 1)
    replayed_v2 = send_raw(bootstrap, topics, on_topic[second.offset])
    events_until(bootstrap, topics, lambda es: any(e["source"]["offset"] == replayed_v2 and e["reason"] == "replay"
                                                   for e in es if e["event"] == "rejected"))
    assert ready_version(url) == 1
    # A restarted app reads the whole topic (the replayed v2 last by offset) and serves the newest release: v1.
    port2 = free_port()
    start_service(app_process(port2, bootstrap, topics, key))
    assert ready_version(f"http://127.0.0.1:{port2}") == 1


def test_app_keeps_serving_through_a_broker_outage_and_takes_later_versions(kafka_broker, start_service, topics, key,
                                                                            holdout, ort_outputs):
    if not kafka_broker.can_restart:
        pytest.skip("the broker comes from $KAFKA_BOOTSTRAP_SERVERS and is not ours to stop")
    bootstrap = kafka_broker.start()
    publish(bootstrap, topics, key, 1)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    start_service(app_process(port, bootstrap, topics, key))
    try:
        with Traffic(url, holdout[1], threads=1) as traffic:
            traffic.wait(lambda: traffic.count() >= 100)
            kafka_broker.stop()
            during = traffic.count()
            traffic.wait(lambda: traffic.count() >= during + 500)
            assert traffic.count() >= during + 500 and not traffic.failures
            assert ready_version(url) == 1
            kafka_broker.start()
            publish(bootstrap, topics, key, 2)
            traffic.wait(lambda: traffic.count(2) >= 100)
    finally:
        kafka_broker.start()
    check_answers(traffic, ort_outputs)
    assert traffic.count(2) >= 100
    assert ready_version(url) == 2
    # The outage was noticed (not silently absent), and the subscriber kept going.
    metrics = httpx.get(f"{url}/metrics").text
    assert f'model_served_version{{model_name="{MODEL}"}} 2.0' in metrics


def test_app_started_during_an_outage_becomes_ready_when_the_broker_returns(kafka_broker, topics, key, tmp_path):
    if not kafka_broker.can_restart:
        pytest.skip("the broker comes from $KAFKA_BOOTSTRAP_SERVERS and is not ours to stop")
    bootstrap = kafka_broker.start()
    publish(bootstrap, topics, key, 2)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    app = app_process(port, bootstrap, topics, key)
    kafka_broker.stop()
    try:
        app.start(tmp_path / "logs")
        for _ in range(300):
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        assert httpx.get(f"{url}/readyz").status_code == 503  # alive, but no model without the topic
        for _ in range(300):  # the subscriber keeps retrying, and says so
            if 'kafka_subscriber_errors_total{model_name="breast-cancer"} 0.0' not in httpx.get(f"{url}/metrics").text:
                break
            time.sleep(0.1)
        assert httpx.get(f"{url}/readyz").status_code == 503
        kafka_broker.start()
        app.wait_ready(60)
        assert ready_version(url) == 2
    finally:
        kafka_broker.start()
        app.stop()
