"""`make demo` for the routed patterns (shadow, canary, A/B, bandit): drive the holdout set through the router.

The canary rows are supervised (`demo_supervised`): the model supervisor runs beside the router on
a demo-specific rollout spec (0.5 s checks, 2 s bake) while the demo sends holdout rows and feeds
back their true labels; one row shows the good candidate (v2) promoted step by step to 100 %, the
other the deliberately poor v3 (trained on shuffled labels) rolled back, with the decision trail.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import yaml

from services.core.settings import DEFAULT_MODEL_REPOSITORY
from services.stack.demo_common import Row, load_holdout
from services.stack.paths import DEMO_LOG_DIR, RUN_DIR
from services.stack.routed import routed_pattern
from services.stack.runner import start, start_stack

DEMO_SPEC: dict[str, Any] = {
    "name": "breast-cancer-demo",
    "kind": "canary",
    "stable": "stable",
    "candidate": "candidate",
    "candidate_version": 2,
    "steps": [5, 25, 50, 100],
    "bake_s": 2.0,
    "interval_s": 0.5,
    "stale_after_s": 3.0,
    "min_samples": 30,
    "failure_limit": 2,
    "max_inconclusive": None,
    # No misprediction-rate sequential test here: it has no tolerance, and v2 is 2.8 points less
    # accurate than v1 on the holdout -- a real difference it would flag in a minority of runs.
    # The accuracy rule carries the tolerance (5 points) and catches v3 within two checks.
    "sequential": {"enabled": True, "alpha": 0.01, "tests": ["error_rate"]},
    "rules": [
        {"metric": "error_rate", "threshold": 0.02},
        {"metric": "accuracy", "threshold": 0.05, "min_samples": 30},
    ],
}
"""The demo's rollout: patterns/canary/rollout.yaml's steps with demo-sized intervals and samples."""


def v2_body(row: list[float], user: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"inputs": [{"name": "input", "shape": [1, len(row)], "datatype": "FP32", "data": row}]}
    if user is not None:
        body["parameters"] = {"user_id": user}
    return body


def demo_routed(pattern: str, model: str = "breast-cancer") -> Row:
    """Start the pattern, send every holdout row through the router (with a user id), feed back
    outcomes (label correct = 1) for A/B and bandits, and summarise what the router saw."""
    version_dir = max((DEFAULT_MODEL_REPOSITORY / model).iterdir(), key=lambda p: int(p.name))
    _, x, y = load_holdout(version_dir / "holdout.csv")
    stack = start_stack(pattern, DEMO_LOG_DIR)
    try:
        url = stack.endpoints["router"]
        latencies, correct, errors, served = [], 0, 0, Counter()
        learns = pattern in ("ab-test", "bandit")
        with httpx.Client(base_url=url, timeout=10.0) as client:
            for rounds in range(3 if learns else 1):  # bandits need a few rounds to show a preference
                for i, (row, label) in enumerate(zip(x.tolist(), y.tolist(), strict=True)):
                    user = f"user-{rounds}-{i}"
                    t0 = time.perf_counter()
                    r = client.post(f"/v2/models/{model}/infer", json=v2_body(row),
                                    headers={"x-user-id": user})
                    latencies.append(time.perf_counter() - t0)
                    if r.status_code != 200:
                        errors += 1
                        continue
                    answer = r.json()
                    ok = int(answer["outputs"][0]["data"][0] == label)
                    correct += ok
                    served[r.headers["x-variant"]] += 1
                    if learns:
                        client.post("/feedback", json={"request_id": r.headers["x-request-id"], "reward": ok})
            note = ", ".join(f"{v}: {n}" for v, n in sorted(served.items()))
            if pattern == "shadow":
                time.sleep(0.5)  # let the last mirrors finish
                s = client.get("/shadow/summary").json()["shadows"]
                note += "; " + "; ".join(
                    f"shadow {name}: agreement {d['label_agreement_rate'] or 0:.3f}, "
                    f"mean |dp| {d['mean_abs_prob_diff'] or 0:.4f}, dropped {d['dropped_queue_full']}"
                    for name, d in s.items())
            elif pattern == "ab-test":
                report = client.get("/experiments/breast-cancer-ab").json()["report"]
                note += f"; verdict: {report['verdict']}"
            elif pattern == "bandit":
                state = client.get("/bandit").json()["state"]
                note += "; mean reward " + ", ".join(
                    f"{v}: {a['mean_reward']:.3f}" for v, a in state["arms"].items() if a["mean_reward"] is not None)
    finally:
        for proc in reversed(stack.processes):
            proc.stop()
    n = len(latencies)
    lat = np.array(latencies)
    return Row(pattern, f"{model} v1|v2", n, errors, correct / n, np.percentile(lat, 50) * 1e3,
               np.percentile(lat, 99) * 1e3, note)


def _trail(decisions: list[dict[str, Any]], t0: float) -> str:
    """'start 5% -> step 25% (3.1 s) -> ...' from the decisions that changed the routing."""
    parts = []
    for d in decisions:
        kind = d["action"]["kind"]
        if kind in ("hold", "pause", "none"):
            continue
        weight = d["action"]["candidate_weight"]
        parts.append(f"{kind} {weight:g}% @{d['at'] - t0:.1f}s" + ("" if d["apply"]["status"] == "applied"
                                                                    else f" [{d['apply']['status']}]"))
    return " -> ".join(parts)


def demo_supervised(candidate_version: int = 2, model: str = "breast-cancer", timeout_s: float = 60.0) -> Row:
    """The canary pattern with the supervisor: traffic with label feedback until the rollout ends."""
    version_dir = max((DEFAULT_MODEL_REPOSITORY / model).iterdir(), key=lambda p: int(p.name))
    _, x, y = load_holdout(version_dir / "holdout.csv")
    rows = list(zip(x.tolist(), y.tolist(), strict=True))
    spec_path = Path(RUN_DIR) / f"demo-canary-rollout-v{candidate_version}.yaml"
    spec_path.parent.mkdir(parents=True, exist_ok=True)
    spec_path.write_text(yaml.safe_dump({**DEMO_SPEC, "name": f"breast-cancer-v{candidate_version}",
                                         "candidate_version": candidate_version}, sort_keys=False))
    stack = start(routed_pattern("canary", rollout_spec=spec_path, candidate_version=candidate_version,
                                  supervisor_interval_s=None), DEMO_LOG_DIR)
    t0 = time.time()
    try:
        url, sup = stack.endpoints["router"], stack.endpoints["supervisor"]
        latencies, correct, errors, served = [], 0, 0, Counter()
        phase = "running"
        with httpx.Client(base_url=url, timeout=10.0) as client, httpx.Client(base_url=sup, timeout=5.0) as watch:
            deadline = time.monotonic() + timeout_s
            i = 0
            while time.monotonic() < deadline:
                row, label = rows[i % len(rows)]
                t = time.perf_counter()
                r = client.post(f"/v2/models/{model}/infer", json=v2_body(row), headers={"x-user-id": f"user-{i}"})
                latencies.append(time.perf_counter() - t)
                i += 1
                if r.status_code != 200:
                    errors += 1
                else:
                    correct += int(r.json()["outputs"][0]["data"][0] == label)
                    served[r.headers["x-variant"]] += 1
                    client.post("/feedback", json={"request_id": r.headers["x-request-id"], "label": label})
                if i % 100 == 0:
                    phase = watch.get("/status").json()["phase"]
                    if phase in ("promoted", "rolled_back"):
                        break
            decisions = watch.get("/decisions").json()
            phase = watch.get("/status").json()["phase"]
    finally:
        for proc in reversed(stack.processes):
            proc.stop()
    checks = decisions[-1]["check"] if decisions else 0
    note = f"supervisor: {phase.replace('_', ' ')} after {checks} checks; {_trail(decisions, t0)}"
    final = next((d for d in reversed(decisions) if d["action"]["kind"] in ("promote", "rollback")), None)
    if final is not None and final["action"]["kind"] == "rollback":
        note += f"; why: {final['explanation'][:220]}"
    note += "; served " + ", ".join(f"{v}: {n}" for v, n in sorted(served.items()))
    lat = np.array(latencies)
    return Row("canary+supervisor", f"{model} v1|v{candidate_version}", len(latencies), errors,
               correct / max(1, len(latencies)), np.percentile(lat, 50) * 1e3, np.percentile(lat, 99) * 1e3, note)
