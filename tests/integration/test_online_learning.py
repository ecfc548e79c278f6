"""Online learning against the real broker: the streaming app (prediction log with inputs, POST
/feedback) as a real process, the trainer's cycles run in this process against the same broker
(each `Trainer` a fresh one, its state only what it committed to Kafka), `replay` as a real
`python -m services.trainer` process. One set of topics per test."""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest
from kafka import KafkaProducer

from services.core.settings import REPO_ROOT
from services.kafka import labels as label_records
from services.kafka import publisher
from services.stack.kafka_tools import json_values, read_topic
from services.stack.process import ServiceProcess, free_port, http_ready
from services.trainer.service import Trainer
from services.trainer.settings import TrainerSettings

pytestmark = pytest.mark.integration

MODEL = "breast-cancer"


class Setup:
    def __init__(self, bootstrap: str, tmp_path: Path) -> None:
        tag = uuid.uuid4().hex[:8]
        self.bootstrap = bootstrap
        self.key = secrets.token_hex(32)
        self.topics = {name: f"{name}-{tag}" for name in
                       ("models", "model-events", "predictions", "labels", "dlq", "state", "trainer-events")}
        self.tmp_path = tmp_path

    def app_env(self, port: int) -> dict[str, str]:
        t = self.topics
        return {"STREAMING_PORT": str(port), "STREAMING_BOOTSTRAP_SERVERS": self.bootstrap,
                "STREAMING_MODEL_NAME": MODEL, "STREAMING_MODELS_TOPIC": t["models"],
                "STREAMING_MODEL_EVENTS_TOPIC": t["model-events"], "STREAMING_PREDICTION_LOG": "true",
                "STREAMING_PREDICTION_LOG_INPUTS": "true", "STREAMING_PREDICTIONS_TOPIC": t["predictions"],
                "STREAMING_FEEDBACK": "true", "STREAMING_LABELS_TOPIC": t["labels"], "STREAMING_BACKOFF_MAX_S": "1",
                "MODEL_SIGNING_KEY": self.key}

    def trainer_env(self, **overrides: str) -> dict[str, str]:
        t = self.topics
        return {"TRAINER_BOOTSTRAP_SERVERS": self.bootstrap, "TRAINER_MODEL_NAME": MODEL,
                "TRAINER_LABELS_TOPIC": t["labels"], "TRAINER_PREDICTIONS_TOPIC": t["predictions"],
                "TRAINER_DLQ_TOPIC": t["dlq"], "TRAINER_STATE_TOPIC": t["state"],
                "TRAINER_EVENTS_TOPIC": t["trainer-events"], "TRAINER_MODELS_TOPIC": t["models"],
                "TRAINER_OUTPUT_DIR": str(self.tmp_path / "candidates"), "TRAINER_JOIN_GRACE_S": "2",
                "TRAINER_MIN_HOLDOUT_ROWS": "20", "MODEL_SIGNING_KEY": self.key, **overrides}

    def trainer(self, monkeypatch, **overrides: str) -> Trainer:
        for name, value in self.trainer_env(**overrides).items():
            monkeypatch.setenv(name, value)
        trainer = Trainer(TrainerSettings())
        trainer.start()
        return trainer

    def labels_end(self, trainer: Trainer, at_least: int) -> dict[int, int]:
        """The labels' end offsets once `at_least` records are there (the app's emitter is asynchronous)."""
        for _ in range(240):
            ends = trainer.io.end_offsets(self.topics["labels"])
            if sum(ends.values()) >= at_least:
                return ends
            time.sleep(0.25)
        raise AssertionError(f"only {sum(ends.values())} label records arrived; expected {at_least}")


@pytest.fixture
def setup(kafka_bootstrap_servers, tmp_path) -> Setup:
    s = Setup(kafka_bootstrap_servers, tmp_path)
    publisher.publish(s.bootstrap, MODEL, 1, key=s.key.encode(), topic=s.topics["models"])
    return s


def start_app(start_service, setup: Setup) -> str:
    port = free_port()
    start_service(ServiceProcess(f"streaming-{port}", ["-m", "services.apps.streaming"], env=setup.app_env(port),
                                 ready=http_ready(f"http://127.0.0.1:{port}/readyz")))
    return f"http://127.0.0.1:{port}"


def drive(url: str, holdout, start: int, n: int, *, feedback: bool = True) -> list[str]:
    """n requests with their true labels as feedback; the request ids."""
    x, y = holdout[1], holdout[2]
    ids = []
    with httpx.Client(base_url=url, timeout=10) as client:
        for i in range(start, start + n):
            rid = f"req-{i}"
            r = client.post("/predict", json={"instances": [x[i % len(x)].tolist()]}, headers={"x-request-id": rid})
            assert r.status_code == 200, r.text
            if feedback:
                f = client.post("/feedback", json={"request_id": rid, "label": int(y[i % len(y)])})
                assert f.status_code == 202, f.text
            ids.append(rid)
    return ids


def ready_version(url: str) -> int | None:
    r = httpx.get(f"{url}/readyz", timeout=5)
    return r.json().get("model_version") if r.status_code == 200 else None


def wait_for_version(url: str, version: int) -> None:
    for _ in range(300):
        if ready_version(url) == version:
            return
        time.sleep(0.1)
    raise AssertionError(f"the app never served v{version}; it serves {ready_version(url)}")


def test_feedback_endpoint_checks_labels_and_writes_them_keyed_by_request_id(setup, start_service, holdout):
    url = start_app(start_service, setup)
    with httpx.Client(base_url=url, timeout=10) as client:
        ok = [client.post("/feedback", json={"request_id": "a-1", "label": 1}),
              client.post("/feedback", json={"request_id": "a-2", "label": "malignant"}),
              client.post("/feedback", json={"request_id": "a-3", "labels": [0, 1]})]
        bad = {
            "class": client.post("/feedback", json={"request_id": "a-4", "label": 2}),
            "name": client.post("/feedback", json={"request_id": "a-4", "label": "cat"}),
            "id": client.post("/feedback", json={"request_id": "a b\u00e9", "label": 1}),
            "reward": client.post("/feedback", json={"request_id": "a-5", "reward": 1.0}),
            "both": client.post("/feedback", json={"request_id": "a-6", "label": 1, "labels": [1]}),
            "extra": client.post("/feedback", json={"request_id": "a-7", "label": 1, "x": 1}),
            "bool": client.post("/feedback", json={"request_id": "a-8", "label": True}),
            "text": client.post("/feedback", content=b"request_id=a", headers={"content-type": "text/plain"}),
        }
    assert [r.status_code for r in ok] == [202, 202, 202]
    assert ok[1].json()["labels"] == [0]  # class names map to indices: "malignant" is class 0
    statuses = {k: r.status_code for k, r in bad.items()}
    assert statuses == {**{k: 400 for k in bad}, "text": 415}, {k: r.text for k, r in bad.items()}
    assert bad["class"].json()["field"] == "label" and "classes are" in bad["class"].json()["error"]
    assert "router" in bad["reward"].json()["error"] and bad["id"].json()["field"] == "request_id"
    records = read_topic(setup.bootstrap, setup.topics["labels"], until=lambda rs: len(rs) >= 3)
    got = {r.key.decode(): json.loads(r.value)["labels"] for r in records}
    assert got == {"a-1": [1], "a-2": [0], "a-3": [0, 1]}


def test_labels_join_publish_gate_and_replay(setup, start_service, holdout, monkeypatch, tmp_path):
    url = start_app(start_service, setup)
    ids = drive(url, holdout, 0, 240)
    with httpx.Client(base_url=url, timeout=10) as client:
        assert client.post("/feedback", json={"request_id": "never-answered", "label": 1}).status_code == 202
        assert client.post("/feedback", json={"request_id": ids[0], "label": 0}).status_code == 202  # a duplicate
    # What the app would refuse, written by someone else straight to the topic: the trainer checks again.
    producer = KafkaProducer(bootstrap_servers=setup.bootstrap)
    producer.send(setup.topics["labels"], key=b"bad-json", value=b"{not json").get(30)
    producer.send(setup.topics["labels"], key=ids[1].encode(),
                  value=label_records.encode(ids[1], [5], "attacker")).get(30)
    producer.close()

    trainer = setup.trainer(monkeypatch)
    try:
        outcome = trainer.step(setup.labels_end(trainer, 244))
    finally:
        trainer.close()
    assert outcome.join.joined == 240
    assert outcome.trained + outcome.held_out == 240 and outcome.held_out == 48
    candidate = outcome.candidate
    assert candidate is not None and candidate.passed, candidate and candidate.reason
    assert candidate.version == 100
    wait_for_version(url, 100)  # published, signed, and taken by the app (its own gates and integration check)

    dlq = json_values(read_topic(setup.bootstrap, setup.topics["dlq"], until=lambda rs: len(rs) >= 4))
    reasons = sorted((e["reason"], e["source"]["offset"] >= 0) for e in dlq)
    assert [r for r, _ in reasons] == ["duplicate", "malformed", "malformed", "unknown_request"]
    assert any("labels[0] = 5" in e["detail"] for e in dlq) and any("not JSON" in e["detail"] for e in dlq)
    card = candidate.card
    assert card["data"]["rows"] == 240 and card["data"]["parent_version"] is None
    assert card["data"]["labels"]["topic"] == setup.topics["labels"]
    assert sum(e - s for s, e in card["data"]["labels"]["partitions"].values()) == 244
    events = json_values(read_topic(setup.bootstrap, setup.topics["trainer-events"], until=lambda rs: len(rs) >= 1))
    assert (events[0]["model_version"], events[0]["passed"]) == (100, True)

    # A stricter floor: the next candidate fails its gate; recorded, not published, the app keeps v100.
    floors = tmp_path / "thresholds.yaml"
    floors.write_text(f"{MODEL}:\n  metric: accuracy\n  floor: 1.01\n")
    drive(url, holdout, 240, 60)
    strict = setup.trainer(monkeypatch, TRAINER_THRESHOLDS_FILE=str(floors))
    try:
        second = strict.step(setup.labels_end(strict, 304)).candidate
    finally:
        strict.close()
    assert second is not None and second.version == 101 and not second.passed
    assert "below the floor 1.0100" in second.reason
    events = json_values(read_topic(setup.bootstrap, setup.topics["trainer-events"], until=lambda rs: len(rs) >= 2))
    assert (events[1]["model_version"], events[1]["passed"]) == (101, False)
    on_topic = publisher.latest_messages(setup.bootstrap, setup.topics["models"], all_records=True)
    assert [e["model_version"] for e in on_topic] == [1, 100]
    assert ready_version(url) == 100
    assert (tmp_path / "candidates" / MODEL / "101" / "model-card.json").is_file()  # recorded

    # Replay, as a real process: the same bytes from the topics and the offsets in the card.
    card_path = tmp_path / "candidates" / MODEL / "101" / "model-card.json"
    env = {**setup.trainer_env(), "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-m", "services.trainer", "replay", "--card", str(card_path),
                           "--out", str(tmp_path / "replayed")], cwd=REPO_ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "the same bytes" in done.stdout
    assert (tmp_path / "replayed" / MODEL / "101" / "model.onnx").read_bytes() == second.onnx_bytes


def test_a_restarted_trainer_resumes_from_its_committed_offsets_without_double_learning(
        setup, start_service, holdout, monkeypatch):
    url = start_app(start_service, setup)
    drive(url, holdout, 0, 150)
    first = setup.trainer(monkeypatch)
    try:
        one = first.step(setup.labels_end(first, 150))
    finally:
        first.close()  # the process goes away; only what it committed to Kafka remains
    drive(url, holdout, 150, 100)
    second = setup.trainer(monkeypatch)  # a new trainer: replays the committed cycle, then continues
    try:
        assert second.trainer.learner.rows_seen == 150  # rebuilt, not learned twice
        two = second.step(setup.labels_end(second, 250))
    finally:
        second.close()
    assert one.join.joined == 150 and two.join.joined == 100  # the second cycle took only the new labels
    card = two.candidate.card
    assert card["data"]["rows_total"] == 250 and card["training"]["rows"] == 200
    assert card["data"]["parent_version"] == one.candidate.version
    assert [c["rows"] for c in card["data"]["lineage"]["cycles"]] == [150, 100]
    state = json.loads(read_topic(setup.bootstrap, setup.topics["state"], until=lambda rs: len(rs) >= 3)[-1].value)
    assert state["lineage"]["cycles"] == card["data"]["lineage"]["cycles"]

    # The same two cycles by one trainer that never stopped: the same bytes.
    for name, value in setup.trainer_env(TRAINER_STATE_TOPIC=f"state-{uuid.uuid4().hex[:8]}",
                                         TRAINER_PUBLISH="false").items():
        monkeypatch.setenv(name, value)
    steady = Trainer(TrainerSettings())
    steady.start()
    try:
        for c in card["data"]["lineage"]["cycles"]:
            last = steady.step({int(p): o for p, o in c["labels_end"].items()})
    finally:
        steady.close()
    # Its predictions' end offsets may differ (more were logged later), but every prediction was logged
    # before its label was sent, so the joined rows, their order, and so the model, are the same.
    assert steady.trainer.learner.rows_seen == 250
    assert last.candidate.onnx_bytes == two.candidate.onnx_bytes


def test_the_apps_kserve_v2_face_answers_and_refuses_bad_tensors_with_4xx(setup, start_service, holdout):
    port = free_port()
    start_service(ServiceProcess(f"streaming-{port}", ["-m", "services.apps.streaming"],
                                 env={**setup.app_env(port), "STREAMING_V2_API": "true"},
                                 ready=http_ready(f"http://127.0.0.1:{port}/v2/health/ready")))
    url = f"http://127.0.0.1:{port}"
    x = holdout[1][:3]
    path = f"{url}/v2/models/{MODEL}/infer"

    def tensor(**kw):
        return {"inputs": [{"name": "input", "shape": [3, 30], "datatype": "FP32", "data": x.ravel().tolist(), **kw}]}

    with httpx.Client(timeout=10) as client:
        ok = client.post(path, json=tensor(), headers={"x-request-id": "v2-1"})
        nested = client.post(path, json=tensor(data=x.tolist()))
        bad = {
            "shape": client.post(path, json=tensor(shape=[3, 29])),
            "count": client.post(path, json=tensor(shape=[4, 30])),
            "dtype": client.post(path, json=tensor(datatype="BYTES")),
            "data": client.post(path, json=tensor(data=["a"] * 90)),
            "inf": client.post(path, json=tensor(data=[1e39] * 90)),
            "rows": client.post(path, json=tensor(shape=[2**31, 30])),
            "inputs": client.post(path, json={"inputs": []}),
            "model": client.post(f"{url}/v2/models/wine/infer", json=tensor()),
            "text": client.post(path, content=b"{}", headers={"content-type": "text/plain"}),
        }
        meta = client.get(f"{url}/v2/models/{MODEL}").json()
    assert ok.status_code == 200, ok.text
    body = ok.json()
    assert (body["model_name"], body["model_version"], body["id"]) == (MODEL, "1", "v2-1")
    assert ok.headers["x-model-version"] == f"{MODEL}:1"
    assert [o["name"] for o in body["outputs"]] == ["label", "probabilities"]
    assert body["outputs"][1]["shape"] == [3, 2] and nested.json()["outputs"] == body["outputs"]
    statuses = {k: r.status_code for k, r in bad.items()}
    assert statuses == {**{k: 400 for k in bad}, "rows": 413, "model": 404, "text": 415}, \
        {k: r.text for k, r in bad.items()}
    assert all("error" in r.json() for r in bad.values())
    assert meta["versions"] == ["1"] and meta["inputs"][0]["shape"] == [-1, 30]
