"""A few-second headless Locust run per user type against real servers (requests made, none failed,
accuracy counted, CSV and summary written). Never a timing.

Real processes on free ports, shared by the module and stopped afterwards: the model server (REST
and gRPC) and the embedded app; the session's Kafka broker with one stream-scoring worker on
topics of its own. `make loadtest`'s command (`python -m loadtests.run`) runs once against a given
host (with the client's ceiling) and once bringing the bandit pattern's stack up and down itself
(with rewards fed back to the router).
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from services.stack.process import REPO_ROOT, ServiceProcess, free_port, http_ready

pytestmark = pytest.mark.integration

MODEL = ["--model", "breast-cancer", "--model-version", "1"]


@pytest.fixture(scope="module")
def serving(tmp_path_factory):
    """The model server (REST + gRPC) and the embedded app serving breast-cancer v1; stopped at teardown."""
    logs = tmp_path_factory.mktemp("logs")
    rest, grpc_port, app = free_port(), free_port(), free_port()
    procs = [
        ServiceProcess(
            "model-server",
            ["-m", "services.model_server"],
            env={"MODEL_SERVER_PORT": str(rest), "MODEL_SERVER_GRPC_PORT": str(grpc_port),
                 "MODEL_SERVER_VERSION_POLICY": "all", "MODEL_SERVER_POLL_INTERVAL_S": "0"},
            ready=http_ready(f"http://127.0.0.1:{rest}/v2/health/ready"),
        ),
        ServiceProcess(
            "embedded",
            ["-m", "services.apps.embedded"],
            env={"EMBEDDED_PORT": str(app), "EMBEDDED_MODEL_NAME": "breast-cancer", "EMBEDDED_MODEL_VERSION": "1"},
            ready=http_ready(f"http://127.0.0.1:{app}/readyz"),
        ),
    ]
    started = []
    try:
        for proc in procs:
            proc.start(logs)
            started.append(proc)
        for proc in started:
            proc.wait_ready(90)
        yield {"v2": f"http://127.0.0.1:{rest}", "grpc": f"127.0.0.1:{grpc_port}", "app": f"http://127.0.0.1:{app}"}
    finally:
        for proc in reversed(started):
            proc.stop()


@pytest.fixture(scope="module")
def scoring(kafka_broker, tmp_path_factory):
    """One stream-scoring worker (breast-cancer v1) on topics of this module; (bootstrap, topics)."""
    boot = kafka_broker.start()
    s = uuid.uuid4().hex[:6]
    topics = {"requests": f"lt-req-{s}", "results": f"lt-res-{s}"}
    port = free_port()
    worker = ServiceProcess("scoring-worker", ["-m", "services.kafka.scoring"], env={
        "SCORING_PORT": str(port), "SCORING_BOOTSTRAP_SERVERS": boot, "SCORING_MODEL_NAME": "breast-cancer",
        "SCORING_MODEL_VERSION": "1", "SCORING_REQUESTS_TOPIC": topics["requests"],
        "SCORING_RESULTS_TOPIC": topics["results"], "SCORING_DLQ_TOPIC": f"lt-dlq-{s}",
        "SCORING_GROUP_ID": f"lt-{s}"}, ready=http_ready(f"http://127.0.0.1:{port}/readyz"))
    worker.start(tmp_path_factory.mktemp("scoring-logs"))
    try:
        worker.wait_ready(120)
        yield boot, topics
    finally:
        worker.stop()


def run_locust(tmp_path: Path, locustfile: str, host: str, *extra: str) -> tuple[list[dict], dict]:
    """Locust headless; (rows of its stats CSV, its summary JSON). Fails the test unless it exited 0."""
    prefix = tmp_path / "stats"
    summary = tmp_path / "summary.json"
    argv = [sys.executable, "-m", "locust", "-f", str(REPO_ROOT / "loadtests" / locustfile), "--headless",
            "--only-summary", "--host", host, "--csv", str(prefix), "--csv-full-history", "--stop-timeout", "5",
            "--summary-json", str(summary), *extra]
    proc = subprocess.run(argv, cwd=REPO_ROOT, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, f"locust exited {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    assert Path(f"{prefix}_stats_history.csv").stat().st_size > 0
    with open(f"{prefix}_stats.csv") as f:
        return list(csv.DictReader(f)), json.loads(summary.read_text())


def assert_requests_without_failures(rows: list[dict], *name_parts: str) -> None:
    agg = next(r for r in rows if r["Name"] == "Aggregated")
    assert int(agg["Request Count"]) > 0, rows
    assert int(agg["Failure Count"]) == 0, rows
    for part in name_parts:
        assert any(part in r["Name"] and int(r["Request Count"]) > 0 for r in rows if r["Name"] != "Aggregated"), rows


def assert_accuracy_counted(summary: dict) -> None:
    quality = summary["quality"]
    assert quality["rows_checked"] > 0, summary
    # breast-cancer v1's holdout accuracy is ~0.98 (its card); a broken comparison would be ~0.5 or 0.
    assert quality["accuracy"] > 0.9, quality


def test_kserve_v2_one_row_and_client_batches_in_two_processes(serving, tmp_path):
    rows, summary = run_locust(tmp_path, "locust_kserve_v2.py", serving["v2"], "-u", "4", "-r", "4", "-t", "3s",
                               *MODEL, "--batch-rows", "16", "--processes", "2", "V2OneRow", "V2Batch")
    assert_requests_without_failures(rows, "V2 infer breast-cancer:1 x1", "V2 infer breast-cancer:1 x16")
    assert_accuracy_counted(summary)
    assert summary["processes"] == 2
    # the accuracy of both worker processes reached the master: every answered row was checked
    assert summary["quality"]["rows_checked"] == sum(e["requests"] * e["rows_per_request"]
                                                     for e in summary["entries"])


def test_app_locustfile_realtime_profile(serving, tmp_path):
    # The real-time stage table, compressed to ~3 s: warm-up, steady, spike, recover.
    rows, summary = run_locust(tmp_path, "locust_app.py", serving["app"], "--load-profile", "realtime",
                               "--time-scale", "0.03", *MODEL)
    assert_requests_without_failures(rows, "/predict x1")
    assert_accuracy_counted(summary)


def test_tfs_grpc_batched_profile(serving, tmp_path):
    rows, summary = run_locust(tmp_path, "locust_tfs_grpc.py", serving["grpc"], "--load-profile", "batched",
                               "--time-scale", "0.04", *MODEL)
    assert_requests_without_failures(rows, "TFS Predict breast-cancer:1 x64")
    assert_accuracy_counted(summary)


def test_stream_scoring_over_kafka_one_row_and_multi_row_records(scoring, tmp_path):
    boot, topics = scoring
    rows, summary = run_locust(tmp_path, "locust_kafka.py", boot, "-u", "4", "-r", "4", "-t", "4s", *MODEL,
                               "--requests-topic", topics["requests"], "--results-topic", topics["results"],
                               "--kafka-window", "4", "--batch-rows", "8", "KafkaOneRow", "KafkaBatch")
    assert_requests_without_failures(rows, "score breast-cancer:1 x1", "score breast-cancer:1 x8")
    assert_accuracy_counted(summary)


def test_make_loadtest_against_a_host_measures_the_client_ceiling_and_a_ramp(serving, tmp_path):
    from loadtests import report

    argv = [sys.executable, "-m", "loadtests.run", "--pattern", "model-as-service", "--endpoint", "model-server-rest",
            "--host", serving["v2"], "--profile", "ramp", "--ramp-users", "1,2", "--stage-s", "3",
            "--ceiling-s", "2", "--out", str(tmp_path), "--name", "smoke"]
    proc = subprocess.run(argv, cwd=REPO_ROOT, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (run,) = tmp_path.glob("*-smoke")
    for name in ("locust_stats.csv", "locust_stats_history.csv", "locust_failures.csv", "report.html",
                 "summary.json", "ceiling/summary.json"):
        assert (run / name).stat().st_size > 0, name
    summary = json.loads((run / "summary.json").read_text())
    assert summary["requests"] > 0 and summary["failures"] == 0, summary
    assert summary["ceiling"]["rps"] > 0 and isinstance(summary["client_bound"], bool), summary
    stages = report.ramp_stages(report.read_history(run / "locust_stats_history.csv"))
    assert [s["users"] for s in stages] == [1, 2], stages


def test_make_loadtest_brings_the_bandit_stack_up_feeds_rewards_back_and_takes_it_down(tmp_path):
    argv = [sys.executable, "-m", "loadtests.run", "--pattern", "bandit", "--users", "4", "--duration", "4s",
            "--ceiling-s", "0", "--out", str(tmp_path), "--name", "bandit"]
    proc = subprocess.run(argv, cwd=REPO_ROOT, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (run,) = tmp_path.glob("*-bandit")
    summary = json.loads((run / "summary.json").read_text())
    assert summary["requests"] > 0 and summary["failures"] == 0, summary
    assert summary["stack_started_here"] is True
    quality = summary["quality"]
    assert quality["feedback"]["sent"] == summary["requests"] and quality["feedback"]["refused"] == 0, quality
    assert set(quality["variants"]) <= {"v1", "v2"} and quality["variants"], quality
    timeline = json.loads((run / "timeline.json").read_text())
    final = next(p["policy"] for p in reversed(timeline) if p.get("policy"))
    assert sum(a["rewards"] for a in final["arms"].values()) > 0, final
    assert "stopping the bandit stack" in proc.stdout
