"""What each pattern runs locally: its processes, their settings and their endpoints.

A pattern is a function returning the processes to start in order (each waits for the ones
before it to be ready) and the endpoints to publish. Ports are free ports on 127.0.0.1.
Adding a pattern is one function here plus its folder under patterns/.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from services.stack.process import ServiceProcess, free_port, http_ready


@dataclass
class PatternStack:
    processes: list[ServiceProcess]
    endpoints: dict[str, str]
    """Name -> URL (http://...) or address (host:port for gRPC, Kafka)."""
    extra: dict[str, str] = field(default_factory=dict)


def embedded(model_name: str = "breast-cancer") -> PatternStack:
    port = free_port()
    app = ServiceProcess(
        name="embedded-app",
        argv=["-m", "services.apps.embedded"],
        env={"EMBEDDED_PORT": str(port), "EMBEDDED_MODEL_NAME": model_name},
        ready=http_ready(f"http://127.0.0.1:{port}/readyz"),
    )
    return PatternStack([app], {"app": f"http://127.0.0.1:{port}"})


PATTERNS: dict[str, Callable[..., PatternStack]] = {
    "embedded": embedded,
}
