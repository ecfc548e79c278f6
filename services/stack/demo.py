"""`make demo`: bring up each pattern locally, drive the holdout set through it, print what it saw.

For each pattern: start its processes (as `make up` does), send every holdout row as its own
request over a keep-alive connection, compare answers with the holdout labels, report accuracy
and latency, and stop the processes again, even on failure. A line per scenario says how far
the tour is (elapsed time); the end points at the live dashboard, `make loadtest` and the
comparison report.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import replace

import numpy as np

from services.core.settings import DEFAULT_MODEL_REPOSITORY
from services.stack import demo_kafka
from services.stack.demo_common import Row, drive, load_holdout
from services.stack.demo_routed import demo_routed, demo_supervised
from services.stack.paths import DEMO_LOG_DIR
from services.stack.routed import ROUTED_PATTERNS
from services.stack.runner import start_stack


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


SCENARIOS: list[tuple[str, Callable[[], Row]]] = [
    ("embedded: breast-cancer", lambda: demo_http_pattern("embedded", "breast-cancer")),
    ("model-as-service: breast-cancer", lambda: replace(
        demo_http_pattern("model-as-service", "breast-cancer"), note="app -> model server over gRPC")),
    ("model-as-data: breast-cancer v1 -> v2", demo_kafka.model_as_data),
    ("stream-scoring: breast-cancer", demo_kafka.stream_scoring),
    *[(f"{p}: breast-cancer v1 / v2 via the router", (lambda p=p: demo_routed(p)))
      for p in ROUTED_PATTERNS if p != "canary"],
    ("canary + supervisor: breast-cancer v1 -> v2 (good), promoted step by step", lambda: demo_supervised(2)),
    ("canary + supervisor: breast-cancer v1 -> v3 (poor), rolled back", lambda: demo_supervised(3)),
]


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
    t0 = time.perf_counter()
    for i, (title, scenario) in enumerate(SCENARIOS, 1):
        s0 = time.perf_counter()
        print(f"[{s0 - t0:6.1f}s] ({i}/{len(SCENARIOS)}) {title} ...", flush=True)
        try:
            rows.append(scenario())
            print(f"[{time.perf_counter() - t0:6.1f}s]        done in {time.perf_counter() - s0:.1f}s", flush=True)
        except Exception as exc:  # a failed scenario is reported, the others still run
            failed += 1
            print(f"[{time.perf_counter() - t0:6.1f}s]        FAILED: {exc}", file=sys.stderr, flush=True)
    print()
    print_table(rows)
    print()
    print(f"{len(rows)} scenarios in {time.perf_counter() - t0:.0f}s" + (f", {failed} FAILED" if failed else ""))
    print("Next:")
    print("  live dashboard  make up PATTERN=canary, then open the `dashboard` URL it prints (the supervisor's page:")
    print("                  traffic, accuracy and weights per variant, the rollout's decisions)")
    print("  load test       make loadtest PATTERN=bandit   (Locust, headless -> reports/loadtests/<run>/)")
    print("  the comparison  reports/comparison.md: real-time vs batched, pattern vs pattern (make compare)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
