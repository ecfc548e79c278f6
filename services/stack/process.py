"""Start a service as a real background process, wait until it is ready, stop it.

Used by the local stack (`make up`), the demo and the integration tests, so all three start
services the same way. Each process gets its own session (process group) so stopping it also
stops anything it spawned, and its output goes to a log file whose tail is shown on failure.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from services.stack.paths import REPO_ROOT


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_ready(url: str) -> Callable[[], bool]:
    def check() -> bool:
        try:
            return httpx.get(url, timeout=1.0).status_code == 200
        except httpx.HTTPError:
            return False

    return check


def tcp_ready(host: str, port: int) -> Callable[[], bool]:
    def check() -> bool:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return True
        except OSError:
            return False

    return check


class StartError(RuntimeError):
    pass


@dataclass
class ServiceProcess:
    """One service process. `argv` runs with this repository's Python when it starts with '-m'."""

    name: str
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    ready: Callable[[], bool] | None = None
    log_path: Path | None = None
    popen: subprocess.Popen | None = None

    @property
    def pid(self) -> int | None:
        return self.popen.pid if self.popen else None

    def start(self, log_dir: Path) -> None:
        log_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = log_dir / f"{self.name}.log"
        argv = [sys.executable, *self.argv] if self.argv[0] == "-m" else self.argv
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.env}
        with open(self.log_path, "ab") as log:
            self.popen = subprocess.Popen(
                argv, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )

    def wait_ready(self, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.popen and self.popen.poll() is not None:
                raise StartError(f"{self.name} exited with status {self.popen.returncode}\n{self.log_tail()}")
            if self.ready is None or self.ready():
                return
            time.sleep(0.1)
        raise StartError(f"{self.name} not ready after {timeout_s:.0f}s\n{self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        if not self.log_path or not self.log_path.exists():
            return "(no log)"
        text = self.log_path.read_text(errors="replace").splitlines()[-lines:]
        return f"--- last lines of {self.log_path} ---\n" + "\n".join(text)

    def terminate(self) -> None:
        if self.popen and self.popen.poll() is None:
            try:
                os.killpg(self.popen.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    def stop(self, timeout_s: float = 15.0) -> int | None:
        """SIGTERM the process group, SIGKILL after `timeout_s`; returns the exit status."""
        if not self.popen:
            return None
        self.terminate()
        try:
            return self.popen.wait(timeout_s)
        except subprocess.TimeoutExpired:
            stop_pid(self.popen.pid, 0)
            return self.popen.wait(5)


def stop_pid(pid: int, timeout_s: float = 15.0) -> None:
    """Stop a process group started by another invocation (make down): TERM, wait, KILL."""
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            os.killpg(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


@dataclass
class PatternStack:
    """What one pattern runs: processes started in order, endpoints to publish, extras for endpoints.json."""

    processes: list[ServiceProcess]
    endpoints: dict[str, str]
    """Name -> URL (http://...) or address (host:port for gRPC, Kafka)."""
    extra: dict[str, str] = field(default_factory=dict)
