"""Stream scoring against the real broker: workers as real processes in a consumer group; every
request gets a result (duplicates only by redelivery), malformed records land in the DLQ."""

from __future__ import annotations

import os
import signal
import time
import uuid
from collections import defaultdict

import httpx
import numpy as np
import onnxruntime as ort
import orjson
import pytest

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
