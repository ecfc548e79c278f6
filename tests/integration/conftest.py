"""Fixtures shared by the integration tests of the routed patterns (router, supervisor, dashboard)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from services.stack.process import ServiceProcess
from services.stack.routed import model_server


@pytest.fixture(scope="module")
def servers(tmp_path_factory) -> Iterator[dict[str, str]]:
    """stable and candidate model servers, shared by the module's non-destructive tests."""
    log_dir = tmp_path_factory.mktemp("model-servers")
    started: list[ServiceProcess] = []
    urls = {}
    try:
        for name in ("stable", "candidate"):
            proc, url = model_server(f"model-server-{name}")
            proc.start(log_dir)
            started.append(proc)
            urls[name] = url
            urls[f"{name}-grpc"] = f"127.0.0.1:{proc.env['MODEL_SERVER_GRPC_PORT']}"
        for proc in started:
            proc.wait_ready(90)
        yield urls
    finally:
        for proc in reversed(started):
            proc.stop()


@pytest.fixture(scope="module")
def rows(holdout) -> list[tuple[list[float], int]]:
    _, x, y = holdout
    return list(zip(x.tolist(), y.tolist(), strict=True))
