"""The `helm test` pod's script (helm/serving-patterns/files/smoke_test.py) against real services.

The script runs in the image as `python3 -c <script> --mode ...`; here it runs the same way
against real local processes (the embedded app, a model server) on free ports, and against a
server that answers wrongly, which it must refuse (exit 1). The probe paths the chart renders are
asked too: each must answer 200 on the real service.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from services.core.settings import DEFAULT_MODEL_REPOSITORY
from services.stack.process import ServiceProcess, free_port, http_ready
from tests.chart.helpers import CHART, containers, module_of, render

SCRIPT = (CHART / "files" / "smoke_test.py").read_text()


def run_script(*args: str, timeout: float = 20) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", SCRIPT, "--repository", str(DEFAULT_MODEL_REPOSITORY), *args,
                           "--timeout", str(timeout)], capture_output=True, text=True, timeout=timeout + 30)


def test_the_test_pod_runs_the_script_with_the_patterns_entry_point():
    for pattern, mode, url in (("embedded", "app", "http://sp-serving-patterns-app.serving.svc.cluster.local:8080"),
                               ("canary", "v2", "http://sp-serving-patterns-router.serving.svc.cluster.local:8080"),
                               ("stream-scoring", "kafka", None)):
        pod = next(d for d in render(pattern) if d["kind"] == "Pod")
        assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
        cmd = pod["spec"]["containers"][0]["command"]
        assert cmd[:2] == ["python3", "-c"] and cmd[2].strip() == SCRIPT.strip()
        args = dict(zip(cmd[3::2], cmd[4::2], strict=True))
        assert args["--mode"] == mode
        if url:
            assert args["--url"] == url
        else:
            assert args["--bootstrap"].startswith("sp-serving-patterns-kafka.serving.svc")


@pytest.fixture(scope="module")
def services(tmp_path_factory):
    logs = tmp_path_factory.mktemp("logs")
    app_port, rest, grpc = free_port(), free_port(), free_port()
    procs = [
        ServiceProcess("embedded-app", ["-m", "services.apps.embedded"],
                       {"EMBEDDED_PORT": str(app_port), "EMBEDDED_MODEL_NAME": "breast-cancer"},
                       http_ready(f"http://127.0.0.1:{app_port}/readyz")),
        ServiceProcess("model-server", ["-m", "services.model_server"],
                       {"MODEL_SERVER_PORT": str(rest), "MODEL_SERVER_GRPC_PORT": str(grpc),
                        "MODEL_SERVER_VERSION_POLICY": "specific:2"},
                       http_ready(f"http://127.0.0.1:{rest}/v2/health/ready")),
    ]
    try:
        for p in procs:
            p.start(logs)
        for p in procs:
            p.wait_ready(60)
        yield {"app": f"http://127.0.0.1:{app_port}", "model-server": f"http://127.0.0.1:{rest}"}
    finally:
        for p in procs:
            p.stop()


def test_the_script_accepts_the_embedded_apps_answer(services):
    proc = run_script("--mode", "app", "--url", services["app"], "--model", "breast-cancer")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.startswith("ok: breast-cancer v"), proc.stdout


def test_the_script_accepts_a_model_servers_kserve_v2_answer(services):
    proc = run_script("--mode", "v2", "--url", services["model-server"], "--model", "breast-cancer")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "breast-cancer v2" in proc.stdout, proc.stdout


def test_the_rendered_probe_paths_answer_on_the_real_services(services):
    wanted = {"services.apps.embedded": services["app"], "services.model_server": services["model-server"]}
    for pattern in ("embedded", "model-as-service"):
        for doc, c in containers(render(pattern)):
            base = wanted.get(module_of(c))
            if doc["kind"] != "Deployment" or base is None:
                continue
            for probe in ("readinessProbe", "livenessProbe"):
                path = c[probe]["httpGet"]["path"]
                assert httpx.get(base + path, timeout=5).status_code == 200, f"{module_of(c)} {probe} {path}"


class _Wrong(BaseHTTPRequestHandler):
    """A KServe V2 server that answers every row with the other label."""

    def do_POST(self):  # noqa: N802
        self.rfile.read(int(self.headers["content-length"]))
        body = json.dumps({"model_name": "breast-cancer", "model_version": 1, "outputs": [
            {"name": "label", "shape": [1], "datatype": "INT64", "data": [0]},
            {"name": "probabilities", "shape": [1, 2], "datatype": "FP32", "data": [0.99, 0.01]}]}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_the_script_refuses_a_wrong_answer_and_an_absent_service():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Wrong)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        proc = run_script("--mode", "v2", "--url", f"http://127.0.0.1:{server.server_port}", "--model", "breast-cancer")
    finally:
        server.shutdown()
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "FAIL: wrong label from breast-cancer v1" in proc.stdout, proc.stdout
    proc = run_script("--mode", "app", "--url", f"http://127.0.0.1:{free_port()}", "--model", "breast-cancer",
                      timeout=3)
    assert proc.returncode == 1 and "FAIL: no answer" in proc.stdout, proc.stdout
