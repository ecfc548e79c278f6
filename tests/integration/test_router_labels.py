"""The router feeds the `labels` topic (ROUTER_LABELS_TOPIC): every process real. The real broker
(tests/integration/kafka_fixtures.py), a real streaming app serving breast-cancer v1 over KServe V2
with its prediction log (inputs on) as the router's variant, a real router process with the
feedback topic and the labels topic. Label feedback posted to the router lands on the labels topic
keyed by the id the router forwarded upstream (what the app's prediction log recorded), and the
trainer's own join (services/trainer/join.py) joins every record with its prediction."""

from __future__ import annotations

import json
import secrets
import time
import uuid

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from services.kafka import publisher
from services.kafka.messages import ensure_key_file
from services.router.tokens import TokenCodec, is_token, load_keys
from services.stack import promtool
from services.stack.kafka_tools import read_topic
from services.stack.online_learning import drive, online_learning
from services.stack.process import ServiceProcess, free_port, http_ready
from services.stack.routed import router_process
from services.trainer.join import Joiner

pytestmark = pytest.mark.integration

MODEL = "breast-cancer"


def metric(text: str, name: str, **labels: str) -> float:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return 0.0


def wait_for(check, what: str, timeout_s: float = 90.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def test_label_feedback_on_the_router_lands_on_the_labels_topic_with_the_upstream_ids(
        kafka_bootstrap_servers, start_service, holdout, tmp_path):
    bootstrap = kafka_bootstrap_servers
    tag = uuid.uuid4().hex[:8]
    topics = {name: f"rl-{name}-{tag}" for name in ("models", "model-events", "predictions", "labels", "feedback")}
    key = secrets.token_hex(32)
    publisher.publish(bootstrap, MODEL, 1, key=key.encode(), topic=topics["models"])
    app_port = free_port()
    app = f"http://127.0.0.1:{app_port}"
    start_service(ServiceProcess(
        f"streaming-{app_port}", ["-m", "services.apps.streaming"],
        env={"STREAMING_PORT": str(app_port), "STREAMING_BOOTSTRAP_SERVERS": bootstrap, "STREAMING_MODEL_NAME": MODEL,
             "STREAMING_MODELS_TOPIC": topics["models"], "STREAMING_MODEL_EVENTS_TOPIC": topics["model-events"],
             "STREAMING_V2_API": "true", "STREAMING_PREDICTION_LOG": "true", "STREAMING_PREDICTION_LOG_INPUTS": "true",
             "STREAMING_PREDICTIONS_TOPIC": topics["predictions"], "MODEL_SIGNING_KEY": key},
        ready=http_ready(f"{app}/readyz")), 120)
    config = tmp_path / "routing.yaml"
    config.write_text(yaml.safe_dump({
        "name": "labels", "model": MODEL,
        "variants": {"stable": {"url": app, "model": MODEL, "timeout_s": 5.0},
                     "candidate": {"url": app, "model": MODEL, "timeout_s": 5.0}},
        "policy": {"kind": "canary", "params": {"weights": {"stable": 50, "candidate": 50}}},
        "fallback": "stable", "sticky": {"header": "x-user-id"},
    }))
    token_key = ensure_key_file(tmp_path / "token.key")
    router, url = router_process(config, tmp_path / "router-state.json", ROUTER_KAFKA_BOOTSTRAP_SERVERS=bootstrap,
                                 ROUTER_FEEDBACK_TOPIC=topics["feedback"], ROUTER_LABELS_TOPIC=topics["labels"],
                                 ROUTER_TOKEN_KEY_FILE=str(token_key), ROUTER_CONFIG_POLL_S="0")
    start_service(router, 120)

    x, y = holdout[1], holdout[2]

    def infer(client: httpx.Client, i: int, **headers: str) -> str:
        body = {"inputs": [{"name": "input", "shape": [1, x.shape[1]], "datatype": "FP32", "data": x[i].tolist()}]}
        r = client.post(f"/v2/models/{MODEL}/infer", json=body, headers=headers)
        assert r.status_code == 200, r.text
        return r.headers["x-request-id"]

    with httpx.Client(base_url=url, timeout=30) as client:
        token = infer(client, 0)                                        # no client id: a feedback token
        assert is_token(token), token
        assert infer(client, 1, **{"x-request-id": "client-req-1"}) == "client-req-1"
        assert infer(client, 2, **{"x-request-id": "client-req-2", "x-user-id": "user-9"}) == "client-req-2"
        assert infer(client, 3, **{"x-request-id": "client-req-3"}) == "client-req-3"
        assert infer(client, 4, **{"x-request-id": "client-req-4"}) == "client-req-4"
        assert infer(client, 5, **{"x-request-id": "client/req/5"}) == "client/req/5"
        accepted = [client.post("/feedback", json={"request_id": token, "label": int(y[0])}),
                    client.post("/feedback", json={"request_id": "client-req-1", "labels": [int(y[1])]}),
                    client.post("/feedback", json={"key": "user-9", "label": int(y[2])}),      # by stickiness key
                    client.post("/feedback", json={"request_id": "client-req-3", "reward": 1.0}),  # no label
                    client.post("/feedback", json={"request_id": "client/req/5", "label": int(y[5])})]
        wrong_class = client.post("/feedback", json={"request_id": "client-req-4", "label": 7})
        assert [r.status_code in (200, 202) for r in accepted] == [True] * 5, [r.text for r in accepted]
        assert wrong_class.status_code == 400 and wrong_class.json()["field"] == "label", wrong_class.text

        def forwarded() -> bool:
            text = client.get("/metrics").text
            return metric(text, "kafka_emitter_sent_total", emitter="router-labels") >= 3
        wait_for(forwarded, "the router's labels emitter to have 3 records acknowledged")
        text = client.get("/metrics").text

    assert metric(text, "router_labels_forwarded_total", result="buffered") == 3
    assert metric(text, "router_labels_forwarded_total", result="skipped") == 1  # "client/req/5": not a labels id
    assert metric(text, "router_labels_forwarded_total", result="dropped") == 0
    if promtool.path() is not None:  # the cached promtool: the new metric passes its lint
        lint = promtool.check_metrics(text)
        assert lint.returncode == 0, lint.stdout.decode() + lint.stderr.decode()

    nonce = TokenCodec(load_keys(token_key.read_text())).verify(token).nonce
    labels = read_topic(bootstrap, topics["labels"])
    got = {r.key.decode(): json.loads(r.value) for r in labels}
    # The reward-only feedback, the refused label and the unusable id wrote nothing; each label once.
    assert len(labels) == 3 and set(got) == {nonce, "client-req-1", "client-req-2"}, got
    assert {k: (v["request_id"], v["labels"], v["source"]) for k, v in got.items()} == {
        nonce: (nonce, [int(y[0])], "router"), "client-req-1": ("client-req-1", [int(y[1])], "router"),
        "client-req-2": ("client-req-2", [int(y[2])], "router")}

    # The ids are the ones the app saw (its prediction log), and the trainer's join uses every record.
    predictions = read_topic(bootstrap, topics["predictions"], until=lambda rs: len(rs) >= 6)
    logged = {json.loads(r.value)["request_id"] for r in predictions}
    # The app logged "client/req/5" under an id of its own (it refuses that id too): skipping it lost nothing.
    assert len(logged) == 6 and "client/req/5" not in logged, logged
    assert {nonce, "client-req-1", "client-req-2", "client-req-3", "client-req-4"} <= logged, logged
    joiner = Joiner(model_name=MODEL, n_features=x.shape[1], n_classes=2, window=1000)
    joiner.add_predictions(predictions)
    joined = joiner.join(labels)
    assert joined.joined == 3 and not joined.rejected, [(r.reason, r.detail) for r in joined.rejected]
    assert sorted(joined.y.tolist()) == sorted(int(v) for v in y[:3])


def test_the_online_learning_stack_trains_on_labels_sent_once_to_the_router(
        kafka_bootstrap_servers, start_service, tmp_path):
    """`make up PATTERN=online-learning`'s own stack: `drive` sends each label to the router only; the
    trainer joins every one of them (none unknown: the router keyed them by the ids the apps logged)
    and the router scored them (the supervisor's accuracy)."""
    stack = online_learning(bootstrap_servers=kafka_bootstrap_servers, run_dir=tmp_path, supervisor_interval_s=2,
                            every_labels=150)
    for process in stack.processes:
        start_service(process)
    e = stack.endpoints
    n = 200
    assert drive(e, n, None, quiet=True)

    def trainer(outcome: str) -> float:
        return metric(httpx.get(e["trainer-metrics"], timeout=10).text, "trainer_labels_total", outcome=outcome)
    wait_for(lambda: trainer("joined") >= 150, "the trainer to join the router's labels", 120)
    quality = httpx.get(f"{e['router']}/quality", timeout=10).json()["variants"]
    assert sum(v["labels"] for v in quality.values()) == n, quality  # every request answered and scored
    router_metrics = httpx.get(f"{e['router']}/metrics", timeout=10).text
    assert metric(router_metrics, "router_labels_forwarded_total", result="buffered") == n
    assert all(trainer(reason) == 0 for reason in ("unknown_request", "duplicate", "no_inputs", "malformed"))
