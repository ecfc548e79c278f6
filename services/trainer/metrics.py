"""Prometheus metrics of the online trainer."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

LABELS = Counter(
    "trainer_labels_total",
    "Label records taken by the trainer, by outcome: joined (learned from), or the DLQ reason "
    "(unknown_request, duplicate, no_inputs, malformed).",
    ["model_name", "outcome"],
)
ROWS = Counter(
    "trainer_rows_total", "Joined rows, by use: train (learned from) or holdout (held out for the gates).",
    ["model_name", "use"],
)
CANDIDATES = Counter(
    "trainer_candidates_total",
    "Candidates exported, by outcome: published, passed (not published: dry run), gate_failed.",
    ["model_name", "outcome"],
)
CYCLE_SECONDS = Histogram(
    "trainer_cycle_seconds", "One cycle: read, join, learn, export, gate, commit, publish.", ["model_name"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
LATEST_VERSION = Gauge(
    "trainer_latest_version", "Version number of the newest candidate (published or not).", ["model_name"]
)
PUBLISHED_VERSION = Gauge(
    "trainer_published_version", "Version number of the newest published candidate.", ["model_name"]
)
