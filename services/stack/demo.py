"""`make demo`: bring up each pattern locally, drive the holdout set through it, print what it saw.

For each pattern: start its processes (as `make up` does), send every holdout row as its own
request over a keep-alive connection, compare answers with the holdout labels, report accuracy
and latency, and stop the processes again, even on failure.
"""

from __future__ import annotations

import csv
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import httpx
import numpy as np

from services.core.settings import DEFAULT_MODEL_REPOSITORY
from services.stack.__main__ import start_stack
from services.stack.process import REPO_ROOT

DEMO_LOG_DIR = REPO_ROOT / ".run" / "demo-logs"


@dataclass
class Row:
    pattern: str
    model: str
    requests: int
    errors: int
    accuracy: float
    p50_ms: float
    p99_ms: float
    note: str = ""


def load_holdout(path: Path) -> tuple[list[str], np.ndarray, np.ndarray]:
    with path.open() as f:
        reader = csv.reader(f)
        header = next(reader)
        rows = [[float(v) for v in r] for r in reader]
    data = np.array(rows)
    return header[:-1], data[:, :-1], data[:, -1].astype(np.int64)


def drive(url: str, x: np.ndarray, y: np.ndarray, before: Callable[[int], None] | None = None
          ) -> tuple[int, int, float, np.ndarray, list[int]]:
    """Send one row per request; returns (requests, errors, accuracy, latencies_s, versions served).

    `before(i)` runs before request i (the model-as-data demo publishes a new version mid-stream).
    """
    latencies, correct, errors, versions = [], 0, 0, []
    with httpx.Client(base_url=url, timeout=10.0) as client:
        for i, (row, label) in enumerate(zip(x.tolist(), y.tolist(), strict=True)):
            if before is not None:
                before(i)
            t0 = time.perf_counter()
            r = client.post("/predict", json={"instances": [row]})
            latencies.append(time.perf_counter() - t0)
            if r.status_code != 200:
                errors += 1
                continue
            body = r.json()
            correct += int(body["labels"][0] == label)
            versions.append(int(body["model_version"]))
    return len(y), errors, correct / len(y), np.array(latencies), versions


def demo_http_pattern(pattern: str, model: str) -> Row:
    version_dir = max((DEFAULT_MODEL_REPOSITORY / model).iterdir(), key=lambda p: int(p.name))
    _, x, y = load_holdout(version_dir / "holdout.csv")
    stack = start_stack(pattern, DEMO_LOG_DIR)
    try:
        n, errors, acc, lat, versions = drive(stack.endpoints["app"], x, y)
    finally:
        for proc in reversed(stack.processes):
            proc.stop()
    served = ",".join(str(v) for v in sorted(set(versions)))
    return Row(pattern, f"{model} v{served}", n, errors, acc, np.percentile(lat, 50) * 1e3,
               np.percentile(lat, 99) * 1e3)


def _kafka_scenario(name: str) -> Row:
    # Imported late: the Kafka scenarios (services/kafka/demo.py) import this module's helpers.
    from services.kafka import demo as kafka_demo

    return getattr(kafka_demo, name)()


SCENARIOS: list[tuple[str, Callable[[], Row]]] = [
    ("embedded: breast-cancer", lambda: demo_http_pattern("embedded", "breast-cancer")),
    ("model-as-service: breast-cancer", lambda: replace(
        demo_http_pattern("model-as-service", "breast-cancer"), note="app -> model server over gRPC")),
    ("model-as-data: breast-cancer v1 -> v2", lambda: _kafka_scenario("model_as_data")),
    ("stream-scoring: breast-cancer", lambda: _kafka_scenario("stream_scoring")),
    *[(f"{p}: breast-cancer v1 / v2 via the router", (lambda p=p: _routed_scenario(p)))
      for p in ("shadow", "canary", "ab-test", "bandit")],
]


def _routed_scenario(pattern: str) -> Row:
    from services.router.stack import demo_routed  # shadow / canary / A/B / bandit (services/router/stack.py)

    return demo_routed(pattern)


def print_table(rows: list[Row]) -> None:
    header = f"| {'pattern':<18} | {'model':<20} | {'requests':>8} | {'errors':>6} | {'accuracy':>8} | " \
             f"{'p50 ms':>7} | {'p99 ms':>7} | note"
    print(header)
    print("|" + "|".join("-" * (len(c) + 2) for c in header.strip("| ").split(" | ")) + "|")
    for r in rows:
        print(f"| {r.pattern:<18} | {r.model:<20} | {r.requests:>8} | {r.errors:>6} | {r.accuracy:>8.3f} | "
              f"{r.p50_ms:>7.2f} | {r.p99_ms:>7.2f} | {r.note}")


def main() -> int:
    rows, failed = [], 0
    for title, scenario in SCENARIOS:
        print(f"== {title}", flush=True)
        try:
            rows.append(scenario())
        except Exception as exc:  # a failed scenario is reported, the others still run
            failed += 1
            print(f"   FAILED: {exc}", file=sys.stderr)
    print()
    print_table(rows)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
