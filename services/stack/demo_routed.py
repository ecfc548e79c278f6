"""`make demo` for the routed patterns (shadow, canary, A/B, bandit): drive the holdout set through the router."""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

import httpx
import numpy as np

from services.core.settings import DEFAULT_MODEL_REPOSITORY
from services.stack.demo_common import Row, load_holdout
from services.stack.paths import DEMO_LOG_DIR
from services.stack.runner import start_stack


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
