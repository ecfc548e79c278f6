"""Real server processes for the fuzz properties, started once per module and always stopped.

    model_server   the model server on the built repository (every version), REST + gRPC
    router         two model servers (stable v1, candidate v2) behind the router: REST, gRPC front,
                   admin API with a token, Gaussian Thompson bandit (feedback takes any real reward)
    apps           the embedded app and the remote app (gRPC to `model_server`)

`make fuzz` runs these with FUZZ_EXAMPLES x20 and prints the tally of outcomes per target.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import yaml

from services.core.settings import DEFAULT_MODEL_REPOSITORY
from services.stack.process import ServiceProcess, free_port, http_ready
from services.stack.routed import model_server as routed_model_server
from services.stack.routed import router_process
from tests.fuzz.checks import BASE_EXAMPLES, FINDINGS, TALLY
from tests.integration.model_server_helpers import Server, server_process

ADMIN_TOKEN = "fuzz-admin-token"
VALID_ROW = [0.5] * 30


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "fuzz: property-based fuzzing of real server processes (tests/fuzz)")


def pytest_terminal_summary(terminalreporter) -> None:
    if not TALLY:
        return
    tr = terminalreporter
    tr.section(f"fuzz summary (FUZZ_EXAMPLES={BASE_EXAMPLES} per property, weighted)")
    total = 0
    for target in sorted(TALLY):
        outcomes = TALLY[target]
        if not target.endswith("MiB"):
            total += sum(outcomes.values())
        tr.write_line(f"  {target:<44} " + ", ".join(f"{k}: {v}" for k, v in sorted(outcomes.items())))
    tr.write_line(f"  {'cases sent':<44} {total}")
    for kind, example in FINDINGS.items():
        tr.write_line(f"FINDING {kind}\n    {example}")


@pytest.fixture(scope="module")
def model_server(tmp_path_factory) -> Iterator[Server]:
    server = server_process(DEFAULT_MODEL_REPOSITORY, version_policy="all", poll_interval_s="0")
    server.proc.start(tmp_path_factory.mktemp("fuzz-logs"))
    try:
        server.proc.wait_ready(120)
        yield server
    finally:
        server.proc.stop()


@dataclass
class RouterStack:
    url: str
    grpc: str
    proc: ServiceProcess
    servers: list[ServiceProcess]
    request_ids: list[str] = field(default_factory=list)

    def admin(self) -> dict[str, str]:
        return {"authorization": f"Bearer {ADMIN_TOKEN}"}


@pytest.fixture(scope="module")
def router(tmp_path_factory) -> Iterator[RouterStack]:
    logs: Path = tmp_path_factory.mktemp("fuzz-router")
    started: list[ServiceProcess] = []
    try:
        variants = {}
        for name, version in (("stable", 1), ("candidate", 2)):
            proc, url = routed_model_server(f"model-server-{name}")
            proc.start(logs)
            started.append(proc)
            variants[name] = {"url": url, "grpc": f"127.0.0.1:{proc.env['MODEL_SERVER_GRPC_PORT']}",
                              "model": "breast-cancer", "version": version, "timeout_s": 5.0}
        for proc in started:
            proc.wait_ready(120)
        cfg = {"name": "fuzz", "model": "breast-cancer", "variants": variants,
               "policy": {"kind": "thompson", "params": {"reward": "gaussian"}}, "fallback": "stable",
               "override_header": "x-variant",
               "outlier_detection": {"consecutive_failures": 5, "base_ejection_s": 10, "max_ejection_s": 300}}
        config_path = logs / "routing.yaml"
        config_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        grpc_port = free_port()
        proc, url = router_process(config_path, logs / "state.json", ROUTER_ADMIN_TOKEN=ADMIN_TOKEN,
                                   ROUTER_GRPC_PORT=str(grpc_port), ROUTER_CONFIG_POLL_S="0")
        proc.start(logs)
        started.append(proc)
        proc.wait_ready(120)
        stack = RouterStack(url, f"127.0.0.1:{grpc_port}", proc, started[:2])
        with httpx.Client(base_url=url, timeout=30) as client:
            for _ in range(20):  # request ids that feedback can name
                r = client.post("/v2/models/breast-cancer/infer", json={"inputs": [
                    {"name": "input", "shape": [1, 30], "datatype": "FP32", "data": VALID_ROW}]})
                assert r.status_code == 200, r.text
                stack.request_ids.append(r.json()["request_id"])
        yield stack
    finally:
        for proc in reversed(started):
            proc.stop()


@dataclass
class Apps:
    embedded: str
    remote: str
    procs: dict[str, ServiceProcess]


@pytest.fixture(scope="module")
def apps(model_server: Server, tmp_path_factory) -> Iterator[Apps]:
    logs = tmp_path_factory.mktemp("fuzz-apps")
    e_port, r_port = free_port(), free_port()
    procs = {
        "embedded": ServiceProcess("embedded", ["-m", "services.apps.embedded"],
                                   env={"EMBEDDED_PORT": str(e_port)},
                                   ready=http_ready(f"http://127.0.0.1:{e_port}/readyz")),
        "remote": ServiceProcess("remote", ["-m", "services.apps.remote"],
                                 env={"REMOTE_PORT": str(r_port), "REMOTE_PROTOCOL": "grpc",
                                      "REMOTE_SERVER_ADDRESS": model_server.grpc,
                                      "REMOTE_SERVER_URL": model_server.rest},
                                 ready=http_ready(f"http://127.0.0.1:{r_port}/readyz")),
    }
    try:
        for proc in procs.values():
            proc.start(logs)
        for proc in procs.values():
            proc.wait_ready(120)
        yield Apps(f"http://127.0.0.1:{e_port}", f"http://127.0.0.1:{r_port}", procs)
    finally:
        for proc in procs.values():
            proc.stop()
