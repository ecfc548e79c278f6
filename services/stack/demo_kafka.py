"""`make demo` scenarios for the Kafka patterns (listed in services/stack/demo.py's SCENARIOS).

Both share one throwaway broker in a temp dir, started on first use and stopped when the demo
exits (or $KAFKA_BOOTSTRAP_SERVERS, if set).

- model-as-data: serve v1, drive the holdout set twice one row per request, publish v2 after
  the first 100 requests; report errors (must be 0), which versions answered, publish-to-swap.
- stream-scoring: two workers in a group; the holdout rows as N one-row request records;
  every result read back and checked; end-to-end latency (request record timestamp to result
  record timestamp) and rows/s.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import orjson

from services.core.settings import DEFAULT_MODEL_REPOSITORY
from services.kafka.messages import load_signing_key
from services.kafka.publisher import publish
from services.stack import patterns
from services.stack.demo_common import Row, drive, load_holdout
from services.stack.kafka_broker import Broker
from services.stack.kafka_tools import read_topic, request_producer, send_requests
from services.stack.paths import DEMO_LOG_DIR, ENV_BOOTSTRAP, SIGNING_KEY_FILE
from services.stack.runner import start

_broker: str | None = None


def bootstrap() -> str:
    global _broker
    if _broker is None:
        if os.environ.get(ENV_BOOTSTRAP):
            _broker = os.environ[ENV_BOOTSTRAP]
        else:
            data_dir = Path(tempfile.mkdtemp(prefix="demo-kafka-"))
            broker = Broker(data_dir)  # stop_at_exit: stopped when the demo exits
            atexit.register(shutil.rmtree, data_dir, True)  # registered first, so it runs after the stop
            _broker = broker.start()
    return _broker


def _metric(url: str, name: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=5).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))


def model_as_data(model: str = "breast-cancer"):
    pattern = patterns.model_as_data

    _, x, y = load_holdout(DEFAULT_MODEL_REPOSITORY / model / "1" / "holdout.csv")
    boot = bootstrap()
    stack = start(pattern(model, version=1, bootstrap_servers=boot), DEMO_LOG_DIR)
    url = stack.endpoints["app"]
    publisher: threading.Thread | None = None

    def publish_v2_at_100(i: int) -> None:
        nonlocal publisher
        if i == 100:  # publish v2 while requests keep coming
            publisher = threading.Thread(target=publish, args=(boot, model, 2),
                                         kwargs={"key": load_signing_key(SIGNING_KEY_FILE)})
            publisher.start()
        elif i == 200 and publisher is not None:
            # The rest of the run must show the swap: wait for it here if 100 requests were not enough
            # (the publisher reads the topic for the release sequence first; on a busy machine it can lag).
            publisher.join()
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline and httpx.get(f"{url}/model", timeout=5).json().get("version") != 2:
                time.sleep(0.05)

    try:
        n, errors, acc, lat, versions = drive(url, np.vstack([x, x]), np.concatenate([y, y]), publish_v2_at_100)
        if publisher:
            publisher.join()
        swap_s = _metric(url, "model_publish_to_swap_seconds_sum")
    finally:
        for proc in reversed(stack.processes):
            proc.stop()
    counts = {v: versions.count(v) for v in sorted(set(versions))}
    seen = ", ".join(f"{count}x v{v}" for v, count in counts.items())
    return Row("model-as-data", f"{model} v1->v2", n, errors, acc,
               np.percentile(lat, 50) * 1e3, np.percentile(lat, 99) * 1e3,
               f"v2 published after request 100; answered by {seen}; publish-to-swap {swap_s * 1e3:.0f} ms")


def stream_scoring(model: str = "breast-cancer", repeat: int = 100, workers: int = 2):
    pattern = patterns.stream_scoring

    _, x, y = load_holdout(DEFAULT_MODEL_REPOSITORY / model / "1" / "holdout.csv")
    boot = bootstrap()
    suffix = f"demo-{os.getpid()}-{int(time.time())}"
    topics = {"requests": f"scoring-requests-{suffix}", "results": f"scoring-results-{suffix}",
              "dlq": f"scoring-dlq-{suffix}"}
    stack = start(pattern(model, workers=workers, bootstrap_servers=boot,
                           SCORING_REQUESTS_TOPIC=topics["requests"], SCORING_RESULTS_TOPIC=topics["results"],
                           SCORING_DLQ_TOPIC=topics["dlq"], SCORING_GROUP_ID=f"scoring-{suffix}"), DEMO_LOG_DIR)
    rows = x.astype(np.float32).tolist()
    n = len(rows) * repeat
    want = {f"r{i}" for i in range(n)}
    try:
        producer = request_producer(boot)
        try:
            send_requests(producer, topics["requests"], ((f"r{i}", [rows[i % len(rows)]]) for i in range(n)))
        finally:
            producer.close()
        results = read_topic(boot, topics["results"], until=lambda rs: len(rs) >= n, max_polls=600)
        version = orjson.loads(results[0].value)["model_version"] if results else "?"
        dlq = read_topic(boot, topics["dlq"])
    finally:
        for proc in reversed(stack.processes):
            proc.stop()
    got: dict[str, dict] = {}
    e2e = []
    first_request_ms, last_result_ms = None, 0
    for r in results:
        body = orjson.loads(r.value)
        got.setdefault(body["request_id"], body)
        sent_ms = body["source"]["timestamp_ms"]
        e2e.append((r.timestamp - sent_ms) / 1000)
        first_request_ms = sent_ms if first_request_ms is None else min(first_request_ms, sent_ms)
        last_result_ms = max(last_result_ms, r.timestamp)
    correct = sum(int(got[f"r{i}"]["labels"][0] == y[i % len(y)]) for i in range(n) if f"r{i}" in got)
    missing = len(want - set(got))
    span_s = max((last_result_ms - (first_request_ms or 0)) / 1000, 1e-3)
    lat = np.array(e2e) if e2e else np.zeros(1)
    return Row("stream-scoring", f"{model} v{version}", n, missing + len(dlq), correct / n,
               np.percentile(lat, 50) * 1e3, np.percentile(lat, 99) * 1e3,
               f"{workers} workers; {n / span_s:,.0f} rows/s first request to last result; "
               f"{len(results) - len(got)} duplicates; p50/p99 = request to result")
