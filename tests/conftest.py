"""Shared fixtures: the model repository and real service processes that are always stopped."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from services.core.settings import DEFAULT_MODEL_REPOSITORY
from services.stack.demo_common import load_holdout
from services.stack.process import ServiceProcess

pytest_plugins = ["tests.integration.kafka_fixtures"]

# tests/compat runs in its own venv with the official TF Serving client (TensorFlow), which
# cannot share a process with our wire-compatible stubs: `make test` runs it separately.
collect_ignore = ["compat"]


@pytest.fixture(scope="session")
def model_repo() -> Path:
    if not (DEFAULT_MODEL_REPOSITORY / "breast-cancer" / "1" / "model-card.json").exists():
        pytest.fail("the model repository is missing: run `make models` (make test does it for you)")
    return DEFAULT_MODEL_REPOSITORY


@pytest.fixture(scope="session")
def holdout(model_repo: Path):
    """(feature names, X, y) of breast-cancer's holdout set."""
    return load_holdout(model_repo / "breast-cancer" / "1" / "holdout.csv")


@pytest.fixture
def start_service(tmp_path: Path) -> Iterator:
    """Start real service processes; every one is stopped at teardown, pass or fail."""
    started: list[ServiceProcess] = []

    def start(proc: ServiceProcess, timeout_s: float = 60.0) -> ServiceProcess:
        proc.start(tmp_path / "logs")
        started.append(proc)
        proc.wait_ready(timeout_s)
        return proc

    yield start
    for proc in reversed(started):
        proc.stop()
