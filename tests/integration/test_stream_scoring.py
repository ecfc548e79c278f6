"""Stream scoring against the real broker: workers as real processes in a consumer group; every
request gets a result (duplicates only by redelivery), malformed records land in the DLQ."""

from __future__ import annotations

import json
import os
import secrets
import signal
import threading
import time
import uuid
from collections import defaultdict

import httpx
import numpy as np
import onnxruntime as ort
import orjson
import pytest

from services.kafka import messages, publisher
from services.stack import promtool
from services.stack.kafka_tools import json_values, read_topic, request_producer, send_requests
from services.stack.process import ServiceProcess, free_port, http_ready

pytestmark = pytest.mark.integration

MODEL, VERSION = "breast-cancer", 1


@pytest.fixture
def topics() -> dict[str, str]:
    suffix = uuid.uuid4().hex[:8]
    return {"requests": f"scoring-requests-{suffix}", "results": f"scoring-results-{suffix}",
            "dlq": f"scoring-dlq-{suffix}", "group": f"scoring-{suffix}"}


@pytest.fixture(scope="module")
def reference(model_repo, holdout):
    x32 = holdout[1].astype(np.float32)
    sess = ort.InferenceSession(str(model_repo / MODEL / str(VERSION) / "model.onnx"))
    labels, proba = sess.run(None, {"input": x32})
    return x32, labels, proba


def worker(bootstrap: str, topics: dict[str, str], **env: str) -> ServiceProcess:
    port = free_port()
    return ServiceProcess(
        f"scoring-{port}",
        ["-m", "services.kafka.scoring"],
        env={
            "SCORING_PORT": str(port),
            "SCORING_BOOTSTRAP_SERVERS": bootstrap,
            "SCORING_MODEL_NAME": MODEL,
            "SCORING_MODEL_VERSION": str(VERSION),
            "SCORING_REQUESTS_TOPIC": topics["requests"],
            "SCORING_RESULTS_TOPIC": topics["results"],
            "SCORING_DLQ_TOPIC": topics["dlq"],
            "SCORING_GROUP_ID": topics["group"],
            "SCORING_BACKOFF_MAX_S": "1",
            "SCORING_SESSION_TIMEOUT_MS": "6000",  # the broker's minimum: a killed worker is noticed sooner
            **env,
        },
        ready=http_ready(f"http://127.0.0.1:{port}/readyz"),
    )


def url_of(proc: ServiceProcess) -> str:
    return f"http://127.0.0.1:{proc.env['SCORING_PORT']}"


def results_by_id(bootstrap: str, topic: str, want: set[str]) -> dict[str, list[dict]]:
    records = read_topic(bootstrap, topic, until=lambda rs: want <= {r.key.decode() for r in rs}, max_polls=400)
    out: dict[str, list[dict]] = defaultdict(list)
    for r in records:
        body = orjson.loads(r.value)
        assert r.key.decode() == body["request_id"]
        out[body["request_id"]].append(body)
    return out


def check_results(results: dict[str, list[dict]], expected: dict[str, list[int]], reference) -> None:
    """Every request has a result; every copy of it (a redelivery) says the same; each equals ORT."""
    _, labels, proba = reference
    missing = set(expected) - set(results)
    assert not missing, f"{len(missing)} requests have no result, e.g. {sorted(missing)[:5]}"
    for rid, rows in expected.items():
        copies = results[rid]
        first = copies[0]
        for c in copies[1:]:
            assert (c["labels"], c["probabilities"]) == (first["labels"], first["probabilities"]), rid
        assert (first["model_name"], first["model_version"]) == (MODEL, VERSION)
        assert first["labels"] == labels[rows].tolist(), rid
        np.testing.assert_allclose(first["probabilities"], proba[rows], atol=1e-6, err_msg=rid)


def test_n_requests_in_n_results_out_and_malformed_to_the_dlq(kafka_bootstrap_servers, start_service, topics,
                                                               reference, holdout):
    bootstrap = kafka_bootstrap_servers
    proc = start_service(worker(bootstrap, topics, SCORING_BATCH_MAX_SIZE="300", SCORING_MAX_BATCH_SIZE="16"))
    x32, _, _ = reference
    names = holdout[0]
    n = len(x32)
    expected: dict[str, list[int]] = {}
    requests = []
    for i in range(3000):  # one-row requests, by array
        rid = f"req-{i}"
        expected[rid] = [i % n]
        requests.append((rid, [x32[i % n].tolist()]))
    for i in range(50):  # multi-row requests, rows by feature name
        rows = [(i * 7 + k) % n for k in range(1 + i % 5)]
        rid = f"multi-{i}"
        expected[rid] = rows
        requests.append((rid, [dict(zip(names, x32[r].tolist(), strict=True)) for r in rows]))

    producer = request_producer(bootstrap)
    try:
        send_requests(producer, topics["requests"], requests[:1500])
        malformed = {
            "bad-json": b'{"request_id": "bad-json", "instances": [[1, 2,',
            "not-object": b"[1, 2, 3]",
            "no-id": orjson.dumps({"instances": [x32[0].tolist()]}),
            "short-row": orjson.dumps({"request_id": "short-row", "instances": [[1.0, 2.0, 3.0]]}),
            "string-value": orjson.dumps({"request_id": "string-value", "instances": [["1"] * 30]}),
            "nan-ish": b'{"request_id": "nan-ish", "instances": [[' + b"1e39," * 29 + b"1]]}",
            "empty": orjson.dumps({"request_id": "empty", "instances": []}),
            "too-many-rows": orjson.dumps({"request_id": "too-many-rows", "instances": [x32[0].tolist()] * 17}),
            "unknown-feature": orjson.dumps({"request_id": "unknown-feature", "instances": [{"mean radios": 1}]}),
        }
        for k, v in malformed.items():
            producer.send(topics["requests"], key=k.encode(), value=v)
        send_requests(producer, topics["requests"], requests[1500:])
    finally:
        producer.close()

    results = results_by_id(bootstrap, topics["results"], set(expected))
    check_results(results, expected, reference)
    assert not set(results) - set(expected), "a malformed record got a result"

    letters = json_values(read_topic(bootstrap, topics["dlq"], until=lambda rs: len(rs) >= len(malformed)))
    by_key = {(d["request_id"] or d["key"]): d for d in letters}
    assert set(by_key) == set(malformed)
    codes = {k: d["code"] for k, d in by_key.items()}
    # The codes of the one error hierarchy (services/core/errors.py); `field` says where.
    assert codes == {k: "payload_too_large" if k == "too-many-rows" else "invalid_input" for k in malformed}
    assert {k: by_key[k]["field"] for k in ("bad-json", "not-object", "no-id", "too-many-rows")} == {
        "bad-json": "body", "not-object": "body", "no-id": "request_id", "too-many-rows": "instances"}
    assert "3 values" in by_key["short-row"]["reason"] and by_key["short-row"]["field"] == "instances[0]"
    assert "finite" in by_key["nan-ish"]["reason"]
    assert "unknown feature" in by_key["unknown-feature"]["reason"]
    assert by_key["bad-json"]["value"].startswith('{"request_id": "bad-json"')
    assert all(d["source"]["topic"] == topics["requests"] for d in letters)

    text = httpx.get(f"{url_of(proc)}/metrics", timeout=5).text
    assert 'kafka_scoring_dlq_total{code="invalid_input",model_name="breast-cancer"} 8.0' in text
    assert 'kafka_scoring_dlq_total{code="payload_too_large",model_name="breast-cancer"} 1.0' in text
    assert f'kafka_scoring_records_total{{model_name="{MODEL}",model_version="1",outcome="scored"}}' in text
    if promtool.path() is not None:
        result = promtool.check_metrics(text)
        assert result.returncode == 0, result.stdout.decode() + result.stderr.decode()
    # SIGTERM: HTTP stops, the worker finishes its micro-batch and closes, the process exits 0.
    assert proc.stop() == 0, proc.log_tail()
    assert "scoring worker stopped" in proc.log_path.read_text()


def test_two_workers_share_the_partitions_and_a_killed_one_loses_nothing(kafka_bootstrap_servers, start_service,
                                                                          topics, reference):
    bootstrap = kafka_bootstrap_servers
    a = start_service(worker(bootstrap, topics, SCORING_BATCH_MAX_SIZE="200"))
    b = start_service(worker(bootstrap, topics, SCORING_BATCH_MAX_SIZE="200"))

    def partitions(proc: ServiceProcess) -> list[int]:
        return httpx.get(f"{url_of(proc)}/readyz", timeout=5).json()["partitions"]

    for _ in range(300):  # the group rebalances once b joins
        pa, pb = partitions(a), partitions(b)
        if pa and pb and sorted(pa + pb) == [0, 1, 2, 3]:
            break
        time.sleep(0.1)
    assert pa and pb and sorted(pa + pb) == [0, 1, 2, 3], (pa, pb)

    x32, _, _ = reference
    n = len(x32)
    expected = {f"r-{i}": [i % n] for i in range(4000)}
    producer = request_producer(bootstrap)
    try:
        send_requests(producer, topics["requests"], [(rid, [x32[rows[0]].tolist()]) for rid, rows in
                                                     list(expected.items())[:2000]])
        # Both workers score their share.
        for _ in range(300):
            scored = [metric(p, "kafka_scoring_records_total", 'outcome="scored"') for p in (a, b)]
            if all(s > 0 for s in scored):
                break
            time.sleep(0.1)
        assert all(s > 0 for s in scored), scored
        # Kill one hard (no chance to commit), then send the rest: the survivor takes over its
        # partitions from their last committed offsets.
        os.killpg(b.pid, signal.SIGKILL)
        b.popen.wait(10)
        send_requests(producer, topics["requests"], [(rid, [x32[rows[0]].tolist()]) for rid, rows in
                                                     list(expected.items())[2000:]])
    finally:
        producer.close()

    results = results_by_id(bootstrap, topics["results"], set(expected))
    check_results(results, expected, reference)
    duplicates = sum(len(c) - 1 for c in results.values())
    # Duplicates can only come from records the killed worker scored but had not committed.
    assert duplicates <= 2000, duplicates


def metric(proc: ServiceProcess, name: str, label: str) -> float:
    text = httpx.get(f"{url_of(proc)}/metrics", timeout=5).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name) and label in line)


def test_a_broker_outage_loses_no_request(kafka_broker, start_service, topics, reference):
    if not kafka_broker.can_restart:
        pytest.skip("the broker comes from $KAFKA_BOOTSTRAP_SERVERS and is not ours to stop")
    bootstrap = kafka_broker.start()
    w = start_service(worker(bootstrap, topics, SCORING_BATCH_MAX_SIZE="100", SCORING_ACK_TIMEOUT_S="20"))
    x32, _, _ = reference
    n = len(x32)
    expected = {f"o-{i}": [i % n] for i in range(3000)}
    items = [(rid, [x32[rows[0]].tolist()]) for rid, rows in expected.items()]
    producer = request_producer(bootstrap)
    try:
        send_requests(producer, topics["requests"], items[:1500])
        for _ in range(300):
            if metric(w, "kafka_scoring_records_total", 'outcome="scored"') > 0:
                break
            time.sleep(0.05)
        kafka_broker.stop()  # mid-stream: results in flight, commits pending
        kafka_broker.start()
        send_requests(producer, topics["requests"], items[1500:])
    finally:
        producer.close()
        kafka_broker.start()
    results = results_by_id(bootstrap, topics["results"], set(expected))
    check_results(results, expected, reference)
    assert w.popen.poll() is None, "the worker died in the outage"


# -- following the models topic ------------------------------------------------------------------


def test_a_worker_following_the_models_topic_swaps_to_a_new_version_mid_stream(kafka_bootstrap_servers,
                                                                              start_service, topics, model_repo,
                                                                              holdout):
    """A running worker with SCORING_FOLLOW_MODELS scores a stream; v2 is published meanwhile. The
    worker takes it without a restart: every request gets exactly one result (none to the DLQ),
    each equal to ONNX Runtime's output of the version it names, and per partition the results
    switch from v1 to v2 once and stay there."""
    bootstrap = kafka_bootstrap_servers
    key = secrets.token_hex(32).encode()
    models, events = f"models-{uuid.uuid4().hex[:8]}", f"model-events-{uuid.uuid4().hex[:8]}"
    publisher.publish(bootstrap, MODEL, 1, key=key, topic=models)
    proc = start_service(worker(bootstrap, topics, SCORING_FOLLOW_MODELS="true", SCORING_MODELS_TOPIC=models,
                                SCORING_MODEL_EVENTS_TOPIC=events, SCORING_BATCH_MAX_SIZE="50",
                                MODEL_SIGNING_KEY=key.decode()))
    url = url_of(proc)
    assert httpx.get(f"{url}/readyz", timeout=5).json()["model_version"] == 1

    x32 = holdout[1].astype(np.float32)
    n = len(x32)
    ort_proba = {v: ort.InferenceSession(str(model_repo / MODEL / str(v) / "model.onnx")).run(None, {"input": x32})
                 for v in (1, 2)}
    sent: list[str] = []
    stop = threading.Event()

    def stream() -> None:
        producer = request_producer(bootstrap)
        try:
            i = 0
            while not stop.is_set():
                chunk = [(f"f-{i + k}", [x32[(i + k) % n].tolist()]) for k in range(20)]
                send_requests(producer, topics["requests"], chunk)
                sent.extend(rid for rid, _ in chunk)
                i += len(chunk)
                stop.wait(0.02)
        finally:
            producer.close()

    sender = threading.Thread(target=stream, daemon=True)
    sender.start()
    try:
        for _ in range(600):  # results on v1 first
            if metric(proc, "kafka_scoring_records_total", 'model_version="1",outcome="scored"') >= 200:
                break
            time.sleep(0.05)
        published = publisher.publish(bootstrap, MODEL, 2, key=key, topic=models)
        for _ in range(600):
            if metric(proc, "kafka_scoring_records_total", 'model_version="2",outcome="scored"') >= 200:
                break
            time.sleep(0.05)
    finally:
        stop.set()
        sender.join(30)
    want = set(sent)
    assert len(want) == len(sent)

    results = results_by_id(bootstrap, topics["results"], want)
    missing = want - set(results)
    assert not missing, f"{len(missing)} requests have no result, e.g. {sorted(missing)[:5]}"
    assert not set(results) - want
    assert read_topic(bootstrap, topics["dlq"]) == []
    by_partition: dict[int, list[tuple[int, int]]] = defaultdict(list)
    for rid, copies in results.items():
        assert len(copies) == 1, f"{rid} scored {len(copies)} times"
        r = copies[0]
        row = int(rid.split("-")[1]) % n
        assert r["model_name"] == MODEL and r["model_version"] in (1, 2)
        labels, proba = ort_proba[r["model_version"]]
        assert r["labels"] == [int(labels[row])], rid
        np.testing.assert_allclose(r["probabilities"], proba[row : row + 1], atol=1e-6, err_msg=rid)
        by_partition[r["source"]["partition"]].append((r["source"]["offset"], r["model_version"]))
    versions = {v for rows in by_partition.values() for _, v in rows}
    assert versions == {1, 2}
    for partition, rows in by_partition.items():
        in_order = [v for _, v in sorted(rows)]
        first_v2 = in_order.index(2) if 2 in in_order else len(in_order)
        assert set(in_order[first_v2:]) <= {2}, f"partition {partition}: a v1 result after a v2 one"

    assert httpx.get(f"{url}/readyz", timeout=5).json()["model_version"] == 2
    text = httpx.get(f"{url}/metrics", timeout=5).text
    assert f'model_swaps_total{{model_name="{MODEL}",model_version="2"}} 1.0' in text
    assert f'model_served_version{{model_name="{MODEL}"}} 2.0' in text
    assert metric(proc, "kafka_scoring_errors_total", "") == 0
    if promtool.path() is not None:
        result = promtool.check_metrics(text)
        assert result.returncode == 0, result.stdout.decode() + result.stderr.decode()
    swapped = [e for e in json_values(read_topic(bootstrap, events, until=lambda rs: any(
        orjson.loads(r.value)["event"] == "swapped" and orjson.loads(r.value)["model_version"] == 2 for r in rs)))
        if e["event"] == "swapped"]
    assert [(e["model_version"], e["from_version"], e["app"]) for e in swapped] == [(1, None, "scoring"),
                                                                                    (2, 1, "scoring")]
    assert swapped[1]["source"]["offset"] == published.offset


def test_a_following_worker_refuses_a_skewed_version_and_keeps_scoring(kafka_bootstrap_servers, start_service,
                                                                       topics, model_repo, reference):
    """A version whose card claims an accuracy its holdout set does not give, scored through the
    worker's own record path, is refused as skew; the worker keeps scoring with v1."""
    bootstrap = kafka_bootstrap_servers
    key = secrets.token_hex(32).encode()
    models, events = f"models-{uuid.uuid4().hex[:8]}", f"model-events-{uuid.uuid4().hex[:8]}"
    publisher.publish(bootstrap, MODEL, 1, key=key, topic=models)
    proc = start_service(worker(bootstrap, topics, SCORING_FOLLOW_MODELS="true", SCORING_MODELS_TOPIC=models,
                                SCORING_MODEL_EVENTS_TOPIC=events, MODEL_SIGNING_KEY=key.decode()))
    d = model_repo / MODEL / "2"
    card = json.loads((d / "model-card.json").read_text())
    card["metrics"]["accuracy"] = 0.9
    value = messages.encode(card, (d / "model.onnx").read_bytes(), (d / "holdout.csv").read_bytes(), key)
    producer = publisher.make_producer(bootstrap)
    try:
        offset = publisher.send(producer, models, MODEL, value).offset
    finally:
        producer.close()
    rejected = [e for e in json_values(read_topic(bootstrap, events, until=lambda rs: any(
        orjson.loads(r.value)["event"] == "rejected" for r in rs))) if e["event"] == "rejected"]
    assert [(e["reason"], e["model_version"], e["source"]["offset"]) for e in rejected] == [("skew", 2, offset)]
    assert "training/serving skew" in rejected[0]["detail"]

    x32, _, _ = reference
    expected = {f"s-{i}": [i % len(x32)] for i in range(300)}
    producer = request_producer(bootstrap)
    try:
        send_requests(producer, topics["requests"], [(rid, [x32[rows[0]].tolist()]) for rid, rows in expected.items()])
    finally:
        producer.close()
    check_results(results_by_id(bootstrap, topics["results"], set(expected)), expected, reference)
    text = httpx.get(f"{url_of(proc)}/metrics", timeout=5).text
    assert f'model_rejections_total{{model_name="{MODEL}",model_version="2",reason="skew"}} 1.0' in text
    assert httpx.get(f"{url_of(proc)}/readyz", timeout=5).json()["model_version"] == 1
