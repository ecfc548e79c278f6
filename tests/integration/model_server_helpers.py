"""Shared by the model server's tests: temp repositories, the server as a real process, ORT references."""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from services.core.settings import DEFAULT_MODEL_REPOSITORY
from services.stack.process import ServiceProcess, free_port, http_ready

CARD = "model-card.json"


def copy_repository(dst: Path, versions: dict[str, list[int]] | None = None) -> Path:
    """A private copy of the built repository (all of it, or only `versions` per model)."""
    dst.mkdir(parents=True, exist_ok=True)
    models = versions or {p.name: None for p in DEFAULT_MODEL_REPOSITORY.iterdir() if p.is_dir()}
    for name, wanted in models.items():
        for vdir in sorted((DEFAULT_MODEL_REPOSITORY / name).iterdir()):
            if vdir.name.isdigit() and (wanted is None or int(vdir.name) in wanted):
                add_version(dst, name, int(vdir.name))
    return dst


def add_version(repo: Path, name: str, version: int) -> Path:
    """Copy one built version into `repo` the way a release should: every file first, the card last."""
    src = DEFAULT_MODEL_REPOSITORY / name / str(version)
    dst = repo / name / str(version)
    dst.mkdir(parents=True, exist_ok=True)
    for f in sorted(src.iterdir()):
        if f.name != CARD:
            shutil.copyfile(f, dst / f.name)
    shutil.copyfile(src / CARD, dst / CARD)
    return dst


@dataclass
class Server:
    proc: ServiceProcess
    rest: str  # http://127.0.0.1:port
    grpc: str  # 127.0.0.1:port
    rest_port: int
    repo: Path


def server_process(repo: Path, **env: str) -> Server:
    rest_port, grpc_port = free_port(), free_port()
    proc = ServiceProcess(
        "model-server",
        ["-m", "services.model_server"],
        env={
            "MODEL_SERVER_PORT": str(rest_port),
            "MODEL_SERVER_GRPC_PORT": str(grpc_port),
            "MODEL_SERVER_MODEL_REPOSITORY": str(repo),
            **{f"MODEL_SERVER_{k.upper()}": str(v) for k, v in env.items()},
        },
        ready=http_ready(f"http://127.0.0.1:{rest_port}/v2/health/ready"),
    )
    return Server(proc, f"http://127.0.0.1:{rest_port}", f"127.0.0.1:{grpc_port}", rest_port, repo)


@contextlib.contextmanager
def running_server(repo: Path, log_dir: Path, **env: str) -> Iterator[Server]:
    """A model server process for a module-scoped fixture; always stopped, pass or fail."""
    server = server_process(repo, **env)
    server.proc.start(log_dir)
    try:
        server.proc.wait_ready()
        yield server
    finally:
        server.proc.stop()


class Reference:
    """In-process ONNX Runtime on the built artifacts: what every answer is compared with."""

    def __init__(self) -> None:
        self._sessions: dict[tuple[str, int], ort.InferenceSession] = {}

    def __call__(self, name: str, version: int, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        key = (name, version)
        if key not in self._sessions:
            path = DEFAULT_MODEL_REPOSITORY / name / str(version) / "model.onnx"
            self._sessions[key] = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        labels, proba = self._sessions[key].run(["label", "probabilities"], {"input": x.astype(np.float32)})
        return labels, proba


def assert_same_predictions(got_labels, got_proba, want_labels, want_proba) -> None:
    np.testing.assert_array_equal(np.asarray(got_labels), want_labels)
    np.testing.assert_allclose(np.asarray(got_proba), want_proba, rtol=0, atol=1e-6)


def metric_value(metrics_text: str, name: str, **labels: str) -> float | None:
    """The value of one sample in a Prometheus exposition, or None."""
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(metrics_text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return None
