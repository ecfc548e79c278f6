"""Kafka benchmark (a report, never a test): model-as-data swap latency under load, and stream
scoring throughput and latency against in-process ONNX Runtime and real-time gRPC serving.

    .venv/bin/python -m loadtests.bench_kafka [--quick] [--out reports/kafka.md]

Everything runs on this machine: a throwaway Kafka broker (or $KAFKA_BOOTSTRAP_SERVERS), the
services as real processes, the load generators in this process. Writes `reports/kafka.md` and
`reports/kafka-throughput.png`. Never fails on timing; it reports what it measured.

1. **Swap latency under load.** The streaming app serves breast-cancer; client threads send
   one-row requests in a closed loop; versions 1 and 2 are published alternately. Per publish:
   *visible* = from just before the publisher's send to the first response computed by the new
   version (the client's view), and the app's own `model_publish_to_swap_seconds` (record
   timestamp to swap). Failed requests are counted over the whole run.
2. **In-process ceiling.** ONNX Runtime, one row per `run()` call, in a loop.
3. **Stream scoring throughput.** N one-row requests are produced first (a backlog), then 1 or 2
   workers drain it; rows/s = N / (last result timestamp - first result timestamp).
4. **Stream scoring latency.** Requests produced at a paced rate; request-record timestamp to
   result-record timestamp, p50/p99.
5. **Real-time gRPC.** The model server (TF Serving Predict over gRPC), one-row requests from
   concurrent asyncio clients: requests/s; and p50/p99 of sequential calls.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import os
import platform
import shutil
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
import orjson

from services.core.settings import DEFAULT_MODEL_REPOSITORY
from services.kafka import messages, publisher
from services.stack.kafka_broker import Broker
from services.stack.kafka_tools import read_topic, request_producer, send_requests
from services.stack.paths import ENV_BOOTSTRAP
from services.stack.process import REPO_ROOT, ServiceProcess, free_port, http_ready

MODEL = "breast-cancer"
VERSION = 1  # the logistic regression: the "about 120k rows/s" ceiling
LOG_DIR = REPO_ROOT / ".run" / "bench-kafka-logs"


def pct(values, q) -> float:
    return float(np.percentile(np.asarray(values), q)) if len(values) else float("nan")


def broker() -> str:
    if os.environ.get(ENV_BOOTSTRAP):
        return os.environ[ENV_BOOTSTRAP]
    data_dir = Path(tempfile.mkdtemp(prefix="bench-kafka-"))
    atexit.register(shutil.rmtree, data_dir, True)
    return Broker(data_dir).start()


def holdout_x() -> np.ndarray:
    from services.stack.demo_common import load_holdout

    return load_holdout(DEFAULT_MODEL_REPOSITORY / MODEL / "1" / "holdout.csv")[1].astype(np.float32)


def start(proc: ServiceProcess, procs: list[ServiceProcess]) -> ServiceProcess:
    proc.start(LOG_DIR)
    procs.append(proc)
    proc.wait_ready(90)
    return proc


# -- 1. swap latency under load --------------------------------------------------------------------


def bench_swap(boot: str, swaps: int, clients: int) -> dict:
    key = os.urandom(32).hex().encode()
    topic = f"models-bench-{uuid.uuid4().hex[:6]}"
    publisher.publish(boot, MODEL, 1, key=key, topic=topic)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    procs: list[ServiceProcess] = []
    start(ServiceProcess("bench-streaming-app", ["-m", "services.apps.streaming"], env={
        "STREAMING_PORT": str(port), "STREAMING_BOOTSTRAP_SERVERS": boot, "STREAMING_MODELS_TOPIC": topic,
        "STREAMING_MODEL_EVENTS_TOPIC": f"{topic}-events", "MODEL_SIGNING_KEY": key.decode(),
        "STREAMING_RANGE_POLICY": "off"}, ready=http_ready(f"{url}/readyz")), procs)
    rows = holdout_x().tolist()
    stop = threading.Event()
    seen: dict[int, float] = {}  # version -> first time a response from it was seen after `expect_since`
    state = {"expect": 1, "since": 0.0, "ok": 0, "failed": 0}
    lock = threading.Lock()

    def client(i: int) -> None:
        with httpx.Client(base_url=url, timeout=10) as c:
            j = i
            while not stop.is_set():
                try:
                    r = c.post("/predict", json={"instances": [rows[j % len(rows)]]})
                    now = time.perf_counter()
                    if r.status_code != 200:
                        state["failed"] += 1
                    else:
                        v = r.json()["model_version"]
                        with lock:
                            state["ok"] += 1
                            if v == state["expect"] and v not in seen:
                                seen[v] = now
                except httpx.HTTPError:
                    state["failed"] += 1
                j += 1

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(clients)]
    for t in threads:
        t.start()
    visible, producer = [], publisher.make_producer(boot)
    try:
        time.sleep(1.0)
        for k in range(swaps):
            version = 2 if k % 2 == 0 else 1
            # Back to v1 is a rollback: apps refuse an older version not marked as one (issue #11).
            value = messages.encode(*publisher.load_artifact(DEFAULT_MODEL_REPOSITORY, MODEL, version), key,
                                    rollback=version == 1)
            with lock:
                seen.pop(version, None)
                state["expect"] = version
            t0 = time.perf_counter()
            publisher.send(producer, topic, MODEL, value)
            for _ in range(1000):
                if version in seen:
                    break
                time.sleep(0.005)
            if version in seen:
                visible.append(seen[version] - t0)
            time.sleep(0.5)  # steady serving between swaps
        stop.set()
        for t in threads:
            t.join(15)
        text = httpx.get(f"{url}/metrics").text
    finally:
        stop.set()
        producer.close()
        for p in reversed(procs):
            p.stop()
    swap_sum = sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith("model_publish_to_swap_seconds_sum"))
    swap_count = sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                     if line.startswith("model_publish_to_swap_seconds_count"))
    return {"swaps": swaps, "observed": len(visible), "clients": clients, "requests": state["ok"],
            "failed": state["failed"], "visible_p50": pct(visible, 50), "visible_p99": pct(visible, 99),
            "visible_max": max(visible) if visible else float("nan"),
            "app_mean": swap_sum / swap_count if swap_count else float("nan")}


# -- 2. in-process ceiling ---------------------------------------------------------------------------


def bench_inprocess(seconds: float) -> float:
    so = ort.SessionOptions()
    so.intra_op_num_threads = so.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(DEFAULT_MODEL_REPOSITORY / MODEL / str(VERSION) / "model.onnx"), so,
                                providers=["CPUExecutionProvider"])
    x = holdout_x()
    one = [x[i : i + 1].copy() for i in range(len(x))]
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for row in one:
            sess.run(None, {"input": row})
        n += len(one)
    return n / (time.perf_counter() - t0)


# -- 3/4. stream scoring ------------------------------------------------------------------------------


def scoring_topics() -> dict[str, str]:
    s = uuid.uuid4().hex[:6]
    return {"SCORING_REQUESTS_TOPIC": f"bench-req-{s}", "SCORING_RESULTS_TOPIC": f"bench-res-{s}",
            "SCORING_DLQ_TOPIC": f"bench-dlq-{s}", "SCORING_GROUP_ID": f"bench-{s}"}


def workers(boot: str, n: int, topics: dict[str, str], procs: list[ServiceProcess]) -> None:
    for _ in range(n):
        port = free_port()
        start(ServiceProcess(f"bench-scoring-{port}", ["-m", "services.kafka.scoring"], env={
            "SCORING_PORT": str(port), "SCORING_BOOTSTRAP_SERVERS": boot, "SCORING_MODEL_NAME": MODEL,
            "SCORING_MODEL_VERSION": str(VERSION), "SCORING_RANGE_POLICY": "off", **topics},
            ready=http_ready(f"http://127.0.0.1:{port}/readyz")), procs)


def bench_drain(boot: str, n_workers: int, n: int) -> dict:
    from services.kafka.topics import SCORING_PARTITIONS, ensure_topics, plain_topic

    topics = scoring_topics()
    ensure_topics(boot, [plain_topic(t, SCORING_PARTITIONS) for k, t in topics.items() if k != "SCORING_GROUP_ID"])
    rows = holdout_x().tolist()
    producer = request_producer(boot)
    t0 = time.perf_counter()
    send_requests(producer, topics["SCORING_REQUESTS_TOPIC"], ((f"r{i}", [rows[i % len(rows)]]) for i in range(n)))
    produce_rate = n / (time.perf_counter() - t0)
    producer.close()
    procs: list[ServiceProcess] = []
    try:
        workers(boot, n_workers, topics, procs)
        results = read_topic(boot, topics["SCORING_RESULTS_TOPIC"], until=lambda rs: len(rs) >= n, max_polls=2400)
    finally:
        for p in reversed(procs):
            p.stop()
    ts = [r.timestamp for r in results]
    ids = {r.key for r in results}
    span = (max(ts) - min(ts)) / 1000 if ts else float("nan")
    return {"workers": n_workers, "requests": n, "results": len(results), "unique": len(ids),
            "rows_per_s": len(ids) / span if span else float("nan"), "produce_rate": produce_rate}


def bench_paced(boot: str, rate: int, seconds: float) -> dict:
    topics = scoring_topics()
    procs: list[ServiceProcess] = []
    rows = holdout_x().tolist()
    n = int(rate * seconds)
    try:
        workers(boot, 1, topics, procs)
        producer = request_producer(boot)
        t0 = time.perf_counter()
        for i in range(n):
            due = t0 + i / rate
            delay = due - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            producer.send(topics["SCORING_REQUESTS_TOPIC"], key=f"p{i}".encode(),
                          value=orjson.dumps({"request_id": f"p{i}", "instances": [rows[i % len(rows)]]}))
        producer.flush()
        producer.close()
        results = read_topic(boot, topics["SCORING_RESULTS_TOPIC"], until=lambda rs: len(rs) >= n, max_polls=1200)
    finally:
        for p in reversed(procs):
            p.stop()
    e2e = [(r.timestamp - orjson.loads(r.value)["source"]["timestamp_ms"]) / 1000 for r in results]
    return {"rate": rate, "requests": n, "results": len(results), "p50": pct(e2e, 50), "p99": pct(e2e, 99)}


# -- 5. real-time gRPC -----------------------------------------------------------------------------------


def bench_grpc(seconds: float, concurrency: int, sequential: int) -> dict:
    import grpc

    from loadtests.payloads import ModelRef, tfs_predict_request
    from services.protocols.tfs import prediction_service_pb2_grpc

    rest, grpc_port = free_port(), free_port()
    procs: list[ServiceProcess] = []
    request = tfs_predict_request(ModelRef(MODEL, VERSION), 1)
    try:
        start(ServiceProcess("bench-model-server", ["-m", "services.model_server"], env={
            "MODEL_SERVER_PORT": str(rest), "MODEL_SERVER_GRPC_PORT": str(grpc_port),
            "MODEL_SERVER_VERSION_POLICY": "all"}, ready=http_ready(f"http://127.0.0.1:{rest}/v2/health/ready")),
            procs)
        with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as ch:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(ch)
            for _ in range(200):
                stub.Predict(request, timeout=10)
            lat = []
            for _ in range(sequential):
                t0 = time.perf_counter()
                stub.Predict(request, timeout=10)
                lat.append(time.perf_counter() - t0)

        async def load() -> tuple[int, int]:
            done, failed = 0, 0
            async with grpc.aio.insecure_channel(f"127.0.0.1:{grpc_port}") as ch:
                stub = prediction_service_pb2_grpc.PredictionServiceStub(ch)
                deadline = time.perf_counter() + seconds

                async def user() -> None:
                    nonlocal done, failed
                    while time.perf_counter() < deadline:
                        try:
                            await stub.Predict(request, timeout=10)
                            done += 1
                        except grpc.RpcError:
                            failed += 1

                await asyncio.gather(*(user() for _ in range(concurrency)))
            return done, failed

        t0 = time.perf_counter()
        done, failed = asyncio.run(load())
        rps = done / (time.perf_counter() - t0)
    finally:
        for p in reversed(procs):
            p.stop()
    return {"rps": rps, "failed": failed, "concurrency": concurrency, "p50": pct(lat, 50), "p99": pct(lat, 99)}


# -- report ------------------------------------------------------------------------------------------------


def write_report(out: Path, r: dict, quick: bool) -> None:
    swap, drain1, drain2, paced, grpc_r, ceiling = (r["swap"], r["drain1"], r["drain2"], r["paced"], r["grpc"],
                                                    r["ceiling"])
    best = max(drain1["rows_per_s"], drain2["rows_per_s"])
    lines = [
        "# Kafka: model-as-data swaps and stream scoring",
        "",
        f"Written by `python -m loadtests.bench_kafka{' --quick' if quick else ''}` on "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {os.cpu_count()} cores, Python "
        f"{platform.python_version()}, ONNX Runtime {ort.__version__}, kafka-python, one local Kafka broker. "
        f"Model: {MODEL} v{VERSION} (logistic regression). Load generators, broker and services share the "
        "same cores, so every figure is a floor for this machine, not a property of the pattern. "
        f"Load average when the run started: {r['loadavg']:.1f} (anything above ~0.5 means other work shared "
        "the cores and the figures are depressed accordingly).",
        "",
        "## Goals (issue 5) and what was measured",
        "",
        "| goal | measured | met |",
        "|---|---|---|",
        f"| swap visible within 1 s at p99, zero failed requests | p99 {swap['visible_p99'] * 1e3:.0f} ms over "
        f"{swap['observed']} swaps; {swap['failed']} failed of {swap['requests']:,} | "
        f"{'yes' if swap['visible_p99'] < 1 and swap['failed'] == 0 else 'no'} |",
        f"| stream scoring >= 50% of the in-process one-row ceiling | {best:,.0f} rows/s = "
        f"{best / ceiling:.0%} of {ceiling:,.0f} | {'yes' if best >= 0.5 * ceiling else 'no'} |",
        f"| stream scoring >= 10x real-time gRPC requests/s | {best / grpc_r['rps']:.1f}x "
        f"({grpc_r['rps']:,.0f} req/s) | {'yes' if best >= 10 * grpc_r['rps'] else 'no'} |",
        "",
        "## 1. Model-as-data swap latency under load",
        "",
        f"{swap['clients']} closed-loop clients send one-row requests to the streaming app; v2 and v1 are "
        f"published alternately, {swap['swaps']} times, 0.5 s apart.",
        "",
        "| swaps seen | visible p50 | visible p99 | visible max | app publish-to-swap (mean) | requests | failed |",
        "|---|---|---|---|---|---|---|",
        f"| {swap['observed']}/{swap['swaps']} | {swap['visible_p50'] * 1e3:.1f} ms | "
        f"{swap['visible_p99'] * 1e3:.1f} ms | {swap['visible_max'] * 1e3:.1f} ms | {swap['app_mean'] * 1e3:.1f} ms | "
        f"{swap['requests']:,} | {swap['failed']} |",
        "",
        "*visible*: from just before the publisher's send to the first response computed by the new version, "
        "as a client saw it (includes the publish round trip, the subscriber's poll, verify, load, warm-up, "
        "swap). *app publish-to-swap*: the app's `model_publish_to_swap_seconds` (record timestamp to "
        "swap).",
        "",
        "## 2. Stream scoring vs in-process and real-time serving",
        "",
        "| what | rows/s (one-row records/requests) |",
        "|---|---|",
        f"| in-process ONNX Runtime, one row per call (the ceiling) | {ceiling:,.0f} |",
        f"| stream scoring, 1 worker, backlog drain | {drain1['rows_per_s']:,.0f} |",
        f"| stream scoring, 2 workers, backlog drain | {drain2['rows_per_s']:,.0f} |",
        f"| real-time gRPC (model server, {grpc_r['concurrency']} concurrent asyncio clients) | "
        f"{grpc_r['rps']:,.0f} |",
        "",
        f"Backlog: {drain1['requests']:,} (1 worker) and {drain2['requests']:,} (2 workers) one-row requests "
        f"produced first (the producer managed {drain2['produce_rate']:,.0f} records/s), then drained; rows/s = "
        "distinct request ids / (last result timestamp - first result timestamp). Results: "
        f"{drain1['unique']:,}/{drain1['requests']:,} and {drain2['unique']:,}/{drain2['requests']:,} request ids.",
        "",
        "| latency | p50 | p99 |",
        "|---|---|---|",
        f"| stream scoring, request record to result record, paced {paced['rate']:,}/s, 1 worker | "
        f"{paced['p50'] * 1e3:.1f} ms | {paced['p99'] * 1e3:.1f} ms |",
        f"| real-time gRPC, sequential one-row calls | {grpc_r['p50'] * 1e3:.2f} ms | {grpc_r['p99'] * 1e3:.2f} ms |",
        "",
        "## Reading it",
        "",
        "- Stream scoring's cost per one-row record is the Kafka client's, not the model's: kafka-python "
        "decodes every fetched record and builds every produced one in Python (about 20 us to consume and "
        "30 us to produce a small record here), against ~6-10 us for the model call. One ONNX Runtime call "
        "per micro-batch makes the model nearly free; the client caps a worker at roughly 20-25k rows/s, and "
        "two workers on two cores add less than 2x because the broker and the client threads share them. "
        "`crc32c` (C extension) must be installed: without it kafka-python checksums record batches in pure "
        "Python and a worker manages about a third of this.",
        "- Requests carrying many rows each amortise the per-record cost; the 50% goal is in reach there, "
        "not with one-row records on this client.",
        "- Latency is the price: tens of milliseconds request to result (micro-batch wait, producer linger, "
        "acks, commit) against about a millisecond for a real-time call.",
        "- A swap costs the app one ONNX Runtime session creation and a warm-up prediction on the subscriber "
        "thread; requests never wait for it.",
        "",
    ]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines))
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 3.2))
        names = ["in-process ORT\n(one row/call)", "stream scoring\n1 worker", "stream scoring\n2 workers",
                 "real-time gRPC"]
        vals = [ceiling, drain1["rows_per_s"], drain2["rows_per_s"], grpc_r["rps"]]
        ax.barh(names[::-1], vals[::-1], color=["#888", "#4a7", "#4a7", "#47a"][::-1])
        ax.set_xlim(0, max(vals) * 1.2)
        ax.set_xlabel("rows per second (one-row records / requests)")
        ax.set_title(f"{MODEL} v{VERSION} on {os.cpu_count()} shared cores")
        for i, v in enumerate(vals[::-1]):
            ax.text(v, i, f" {v:,.0f}", va="center", fontsize=8)
        fig.tight_layout()
        fig.savefig(out.with_name("kafka-throughput.png"), dpi=110)
    except Exception as exc:  # the chart is a nicety; the numbers are in the Markdown
        print(f"no chart: {exc!r}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtests.bench_kafka")
    parser.add_argument("--quick", action="store_true", help="fewer swaps and records: a look, not a report")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "reports" / "kafka.md")
    args = parser.parse_args(argv)
    q = args.quick
    boot = broker()
    results: dict = {"loadavg": os.getloadavg()[0]}
    print("== swap latency under load", flush=True)
    results["swap"] = bench_swap(boot, swaps=6 if q else 30, clients=4)
    print(results["swap"], flush=True)
    print("== in-process ceiling", flush=True)
    results["ceiling"] = bench_inprocess(1.0 if q else 3.0)
    print(f"{results['ceiling']:,.0f} rows/s", flush=True)
    print("== stream scoring backlog drain", flush=True)
    results["drain1"] = bench_drain(boot, 1, 20_000 if q else 100_000)
    print(results["drain1"], flush=True)
    results["drain2"] = bench_drain(boot, 2, 20_000 if q else 100_000)
    print(results["drain2"], flush=True)
    print("== stream scoring paced latency", flush=True)
    results["paced"] = bench_paced(boot, rate=1000, seconds=3 if q else 10)
    print(results["paced"], flush=True)
    print("== real-time gRPC", flush=True)
    results["grpc"] = bench_grpc(seconds=3 if q else 10, concurrency=16, sequential=500 if q else 2000)
    print(results["grpc"], flush=True)
    write_report(args.out, results, q)
    print(f"report written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
