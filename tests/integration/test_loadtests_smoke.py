"""Smoke check of the locustfiles: each one imports and drives a real server headless for a few seconds.

Real servers (the model server with REST and gRPC, the embedded app) are started on free ports and
stopped afterwards. What is checked is that requests were made and none failed; never a timing.
"""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest

from services.stack.process import REPO_ROOT, ServiceProcess, free_port, http_ready

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    """The model server (REST + gRPC) and the embedded app serving wine v1; stopped at teardown."""
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
            env={"EMBEDDED_PORT": str(app), "EMBEDDED_MODEL_NAME": "wine", "EMBEDDED_MODEL_VERSION": "1"},
            ready=http_ready(f"http://127.0.0.1:{app}/readyz"),
        ),
    ]
    started = []
    try:
        for proc in procs:
            proc.start(logs)
            started.append(proc)
            proc.wait_ready(60)
        yield {"v2": f"http://127.0.0.1:{rest}", "grpc": f"127.0.0.1:{grpc_port}", "app": f"http://127.0.0.1:{app}"}
    finally:
        for proc in reversed(started):
            proc.stop()


def run_locust(tmp_path: Path, locustfile: str, host: str, *extra: str) -> list[dict]:
    prefix = tmp_path / "stats"
    argv = [sys.executable, "-m", "locust", "-f", str(REPO_ROOT / "loadtests" / locustfile), "--headless",
            "--only-summary", "--host", host, "--csv", str(prefix), "--stop-timeout", "5", *extra]
    proc = subprocess.run(argv, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"locust exited {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    with open(f"{prefix}_stats.csv") as f:
        return list(csv.DictReader(f))


def assert_requests_without_failures(rows: list[dict], name_part: str) -> None:
    agg = next(r for r in rows if r["Name"] == "Aggregated")
    assert int(agg["Request Count"]) > 0, rows
    assert int(agg["Failure Count"]) == 0, rows
    assert any(name_part in r["Name"] for r in rows if r["Name"] != "Aggregated"), rows


def test_kserve_v2_locustfile_fixed_users(servers, tmp_path):
    rows = run_locust(tmp_path, "locust_kserve_v2.py", servers["v2"], "-u", "4", "-r", "4", "-t", "3s",
                      "--model", "wine", "--model-version", "2", "V2OneRow", "V2Batch64")
    assert_requests_without_failures(rows, "V2 infer wine:2")


def test_app_locustfile_realtime_profile(servers, tmp_path):
    # The real-time stage table, compressed to ~3 s: warm-up, steady, spike, recover.
    rows = run_locust(tmp_path, "locust_app.py", servers["app"], "--load-profile", "realtime",
                      "--time-scale", "0.03")
    assert_requests_without_failures(rows, "/predict x1")


def test_tfs_grpc_locustfile_batched_profile(servers, tmp_path):
    rows = run_locust(tmp_path, "locust_tfs_grpc.py", servers["grpc"], "--load-profile", "batched",
                      "--time-scale", "0.04", "--model", "wine", "--model-version", "1")
    assert_requests_without_failures(rows, "/tensorflow.serving.PredictionService/Predict")
