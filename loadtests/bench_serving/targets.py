"""What the serving benchmark runs: the server processes, the targets on them, and MLServer's venv.

A *server* is one process started for a while (the embedded app serves one model, so it runs once
per model; the model server, MLServer and the baselines serve both models at once). A *target* is
one way of calling a server (protocol + endpoint): the model server carries three per process
(REST, TF Serving gRPC, Open Inference Protocol gRPC), MLServer two (REST, OIP gRPC). Each server
is started pinned to the server core (`taskset`), checked with one real request per model,
measured, and stopped (SIGTERM to its process group, as `make down`).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from loadtests.payloads import REPO_ROOT, ModelRef
from services.stack.process import ServiceProcess, free_port, http_ready, tcp_ready

BASELINES = REPO_ROOT / "loadtests" / "baselines"
MLSERVER_VENV = REPO_ROOT / ".venv-mlserver"
MLSERVER_REQUIREMENTS = BASELINES / "mlserver-requirements.txt"
MLSERVER_BATCH_SIZE = 32
"""MLServer's adaptive batching groups up to this many *requests* (the model server counts rows)."""
BATCH_MAX_DELAY_S = 0.001
"""Longest wait for a batch to fill, the same for the model server and MLServer."""


@dataclass(frozen=True)
class Target:
    key: str
    label: str
    protocol: str
    """`v2` (KServe V2 REST), `app` (the app's /predict), `tfs` (TF Serving gRPC Predict), `oip` (Open
    Inference Protocol gRPC ModelInfer)."""
    group: str
    """Family in the report: ours, peer, baseline."""
    url: str = ""
    """http://host:port for REST, host:port for gRPC."""


@dataclass
class Server:
    name: str
    process: ServiceProcess
    models: list[ModelRef]
    targets: list[Target]
    ready_timeout_s: float = 90.0
    notes: list[str] = field(default_factory=list)


def _pinned(argv: list[str], cpu: int | None) -> list[str]:
    full = [sys.executable, *argv] if argv[0] == "-m" else argv
    return ["taskset", "-c", str(cpu), *full] if cpu is not None else full


def embedded(model: ModelRef, cpu: int | None) -> Server:
    port = free_port()
    proc = ServiceProcess(
        f"embedded-{model.name}-{model.version}",
        _pinned(["-m", "services.apps.embedded"], cpu),
        env={"EMBEDDED_PORT": str(port), "EMBEDDED_MODEL_NAME": model.name,
             "EMBEDDED_MODEL_VERSION": str(model.version)},
        ready=http_ready(f"http://127.0.0.1:{port}/readyz"),
    )
    target = Target("embedded", "embedded app /predict", "app", "ours", f"http://127.0.0.1:{port}")
    return Server(proc.name, proc, [model], [target])


def model_server(models: list[ModelRef], batching: bool, cpu: int | None) -> Server:
    port, grpc_port = free_port(), free_port()
    mode = "on" if batching else "off"
    proc = ServiceProcess(
        f"model-server-batching-{mode}",
        _pinned(["-m", "services.model_server"], cpu),
        env={
            "MODEL_SERVER_PORT": str(port),
            "MODEL_SERVER_GRPC_PORT": str(grpc_port),
            "MODEL_SERVER_BATCHING": "true" if batching else "false",
            "MODEL_SERVER_VERSION_POLICY": "all",
        },
        ready=http_ready(f"http://127.0.0.1:{port}/v2/health/ready"),
    )
    label = f"batching {mode}"
    targets = [
        Target(f"model-server-rest-{mode}", f"model server REST ({label})", "v2", "ours", f"http://127.0.0.1:{port}"),
        Target(f"model-server-grpc-{mode}", f"model server gRPC ({label})", "tfs", "ours", f"127.0.0.1:{grpc_port}"),
        Target(f"model-server-oip-{mode}", f"model server OIP gRPC ({label})", "oip", "ours",
               f"127.0.0.1:{grpc_port}"),
    ]
    return Server(proc.name, proc, models, targets)


def fastapi_baseline(models: list[ModelRef], cpu: int | None) -> Server:
    port = free_port()
    proc = ServiceProcess(
        "fastapi-baseline",
        _pinned(["-m", "loadtests.baselines.fastapi_app", "--port", str(port), "--model", models[0].name], cpu),
        ready=http_ready(f"http://127.0.0.1:{port}/v2/health/ready"),
    )
    target = Target("fastapi", "bare FastAPI + ORT", "v2", "baseline", f"http://127.0.0.1:{port}")
    return Server(proc.name, proc, models, [target])


def grpc_aio_baseline(models: list[ModelRef], cpu: int | None) -> Server:
    port = free_port()
    proc = ServiceProcess(
        "grpc-aio-baseline",
        _pinned(["-m", "loadtests.baselines.grpc_aio_server", "--port", str(port), "--model", models[0].name], cpu),
        ready=tcp_ready("127.0.0.1", port),
    )
    target = Target("grpc-aio", "bare grpc.aio + ORT", "tfs", "baseline", f"127.0.0.1:{port}")
    return Server(proc.name, proc, models, [target])


def mlserver(models: list[ModelRef], batching: bool, cpu: int | None, work_dir: Path,
             repository: Path) -> Server:
    """MLServer 1.7.1 from its own venv, serving the ONNX files with `mlserver_onnx_runtime.OnnxRuntime`.

    Settings: loopback only, `debug: false` (no per-request access log), everything else MLServer's
    defaults, which include one parallel inference worker process (`parallel_workers: 1`): the
    server CPU counted includes that child.
    """
    mode = "on" if batching else "off"
    root = work_dir / f"mlserver-{mode}"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    port, grpc_port, metrics_port = free_port(), free_port(), free_port()
    settings = {"host": "127.0.0.1", "http_port": port, "grpc_port": grpc_port, "metrics_port": metrics_port,
                "debug": False, "metrics_dir": str(root / ".metrics")}
    (root / "settings.json").write_text(json.dumps(settings, indent=2))
    for model in models:
        model_settings = {
            "name": model.name,
            "implementation": "mlserver_onnx_runtime.OnnxRuntime",
            "parameters": {"uri": str(repository / model.name / str(model.version) / "model.onnx"),
                           "version": str(model.version)},
        }
        if batching:
            model_settings.update(max_batch_size=MLSERVER_BATCH_SIZE, max_batch_time=BATCH_MAX_DELAY_S)
        folder = root / f"{model.name}-{model.version}"
        folder.mkdir()
        (folder / "model-settings.json").write_text(json.dumps(model_settings, indent=2))
    last = models[-1]
    proc = ServiceProcess(
        f"mlserver-batching-{mode}",
        _pinned([str(MLSERVER_VENV / "bin" / "mlserver"), "start", str(root)], cpu),
        env={"PYTHONPATH": str(BASELINES)},
        ready=http_ready(f"http://127.0.0.1:{port}/v2/models/{last.name}/versions/{last.version}/ready"),
    )
    label = f"adaptive batching {mode}"
    return Server(proc.name, proc, models, [
        Target(f"mlserver-{mode}", f"MLServer ({label})", "v2", "peer", f"http://127.0.0.1:{port}"),
        Target(f"mlserver-grpc-{mode}", f"MLServer OIP gRPC ({label})", "oip", "peer", f"127.0.0.1:{grpc_port}"),
    ])


# -- MLServer's venv ----------------------------------------------------------------------------


def mlserver_version() -> str | None:
    python = MLSERVER_VENV / "bin" / "python"
    if not python.exists():
        return None
    out = subprocess.run([str(python), "-c", "import mlserver; print(mlserver.__version__)"],
                         capture_output=True, text=True)
    return out.stdout.strip() or None


def ensure_mlserver_venv(log) -> None:
    """Create `.venv-mlserver` from the pinned requirements, once (a stamp holds their hash)."""
    digest = hashlib.sha256(MLSERVER_REQUIREMENTS.read_bytes()).hexdigest()
    stamp = MLSERVER_VENV / ".bench-stamp"
    if stamp.exists() and stamp.read_text().strip() == digest and (MLSERVER_VENV / "bin" / "mlserver").exists():
        return
    log(f"creating {MLSERVER_VENV.name} (pinned: {MLSERVER_REQUIREMENTS.relative_to(REPO_ROOT)}) ...")
    if not (MLSERVER_VENV / "bin" / "python").exists():
        subprocess.run([sys.executable, "-m", "venv", str(MLSERVER_VENV)], check=True)
    subprocess.run(
        [str(MLSERVER_VENV / "bin" / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
         "-r", str(MLSERVER_REQUIREMENTS)],
        check=True,
    )
    stamp.write_text(digest + "\n")
