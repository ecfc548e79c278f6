"""The online-learning pattern's supervised rollout, every process real: the real broker, a pinned
streaming app and a candidate app behind the router, the supervisor, the trainer as
`python -m services.trainer run`. The stack is `make up PATTERN=online-learning`'s own
(services/stack/online_learning.py) in a temp run dir with its own topics.

The labels the trainer learns from are poisoned (flipped) while the router gets the true ones: the
trainer's gates cannot tell (the rolling holdout is poisoned too), the app's integration check
cannot either (it re-scores that holdout); the supervised rollout, measuring on trusted labels,
rolls the candidate back to 0%."""

from __future__ import annotations

import time

import httpx
import pytest

from services.stack.online_learning import drive, online_learning

pytestmark = pytest.mark.integration


def supervisor_status(url: str) -> dict:
    return httpx.get(f"{url}/status", timeout=10).json()


def test_a_poisoned_online_version_passes_the_gates_and_the_supervisor_rolls_it_back(
        kafka_bootstrap_servers, start_service, tmp_path):
    stack = online_learning(bootstrap_servers=kafka_bootstrap_servers, run_dir=tmp_path, supervisor_interval_s=2,
                            every_labels=300)
    for process in stack.processes:
        start_service(process)
    e = stack.endpoints

    answered: dict[str, float] = {}
    rollbacks: list[dict] = []
    deadline = time.monotonic() + 200
    while time.monotonic() < deadline and not rollbacks:
        answered.update(drive(e, 200, None, poison_from=0, quiet=True))
        decisions = httpx.get(f"{e['supervisor']}/decisions", timeout=10).json()
        decisions = decisions if isinstance(decisions, list) else decisions["decisions"]
        rollbacks = [d for d in decisions if d["action"]["kind"] == "rollback"]
    online = {v: a for v, a in answered.items() if int(v.split(":")[1]) >= 100}
    # Learned from flipped labels, measured on a flipped holdout: the gates passed it, the app took it,
    # the router served it, and it is wrong nearly every time.
    assert online and max(online.values()) < 0.5, answered
    assert rollbacks, answered
    decision = rollbacks[-1]
    assert int(decision["candidate_version"]) >= 100
    assert "accuracy" in decision["explanation"] or "misprediction" in decision["explanation"], decision
    status = httpx.get(f"{e['supervisor']}/status", timeout=10).json()
    assert status["weights_in_force"]["candidate"] == 0.0
    assert httpx.get(f"{e['app-stable']}/readyz").json()["model_version"] == 1  # the stable stays pinned
