"""What every `make demo` scenario shares: the result row, the holdout set, one request per row."""

from __future__ import annotations

import csv
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np


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
