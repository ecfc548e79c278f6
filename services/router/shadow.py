"""The shadow mirror: copies of answered requests go to shadow variants, off the response path.

    primary path:  request -> primary -> response to the client -> mirror.offer(...)  (put_nowait)
    off the path:  worker tasks -> shadow variant -> compare with the primary's answer -> stats

Protocol-neutral: a mirror carries the codec's request and its `Upstream` (services.router.dispatch),
which sends the copy the way the client's request came (REST to the shadow's `url`, gRPC to its
`grpc` address) and reads labels and probabilities out of both answers (`Outputs`).

`offer` never waits: the queue is bounded (`shadow.queue_size`) and a full queue drops the
mirror and counts it. Workers (`shadow.workers`) send each mirror with its own timeout; a shadow
that is down, slow or ejected costs the client nothing — its errors are only counted, and it is
ejected like any variant (mirrors then skip it). A mirror is offered after the client's response
is sent, so the shadow never competes with the primary for the request's own time.

Comparison, per shadow variant: label agreement rate (rows whose label is equal), mean absolute
probability difference (per row, mean over classes of |p_shadow - p_primary|; then averaged over
rows), the latency difference (shadow - primary, mean and percentiles of recent requests) and
shadow errors by kind. Exposed as metrics (`router_shadow_*`) and at GET /shadow/summary. A compared
shadow's labels are also handed to the dispatcher (`on_outputs`): they count as the shadow's
predicted labels and are kept with the request awaiting feedback, so a true label sent later
scores the shadow too (its accuracy, beside the primary's).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from services.router import metrics
from services.router.ejection import OutlierDetector
from services.router.upstream import UpstreamError

log = logging.getLogger(__name__)
_RECENT = 2048


Outputs = tuple[list, list | None]
"""An answer's labels (one per row) and probabilities (flat, rows x classes; None if absent)."""


@dataclass(slots=True)
class Mirror:
    shadow: Any  # services.router.table.Variant
    request: Any  # the codec's services.router.dispatch.Request
    upstream: Any  # the codec's services.router.dispatch.Upstream
    primary_variant: str
    primary_body: bytes
    primary_latency_s: float


@dataclass(slots=True)
class _Children:
    mirrored: Any
    dropped: Any
    skipped: Any
    seconds: Any
    rows: Any
    agree: Any
    prob_diff: Any
    latency_diff: Any


@dataclass
class ShadowStats:
    """Running comparison of one shadow variant against whatever answered the client."""

    variant: str
    mirrored: int = 0
    dropped: int = 0
    skipped_ejected: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    compared_requests: int = 0
    incomparable: int = 0
    rows: int = 0
    agreeing_rows: int = 0
    abs_diff_sum: float = 0.0
    abs_diff_max: float = 0.0
    latency_n: int = 0
    latency_diff_sum: float = 0.0
    primary_recent: deque = field(default_factory=lambda: deque(maxlen=_RECENT))
    shadow_recent: deque = field(default_factory=lambda: deque(maxlen=_RECENT))
    m: Any = None
    """Metric children of this variant, resolved once."""

    def __post_init__(self) -> None:
        name = self.variant
        self.m = _Children(
            mirrored=metrics.SHADOW_MIRRORED.labels(name), dropped=metrics.SHADOW_DROPPED.labels(name),
            skipped=metrics.SHADOW_SKIPPED.labels(name), seconds=metrics.SHADOW_SECONDS.labels(name),
            rows=metrics.SHADOW_ROWS.labels(name), agree=metrics.SHADOW_AGREE.labels(name),
            prob_diff=metrics.SHADOW_PROB_DIFF.labels(name), latency_diff=metrics.SHADOW_LATENCY_DIFF.labels(name),
        )

    def summary(self) -> dict[str, Any]:
        def pct(values: deque, q: float) -> float | None:
            return round(float(np.percentile(np.fromiter(values, float), q)) * 1e3, 3) if values else None

        return {
            "variant": self.variant,
            "mirrored": self.mirrored,
            "dropped_queue_full": self.dropped,
            "skipped_ejected": self.skipped_ejected,
            "errors": dict(self.errors),
            "error_count": sum(self.errors.values()),
            "compared_requests": self.compared_requests,
            "incomparable": self.incomparable,
            "compared_rows": self.rows,
            "label_agreement_rate": self.agreeing_rows / self.rows if self.rows else None,
            "mean_abs_prob_diff": self.abs_diff_sum / self.rows if self.rows else None,
            "max_abs_prob_diff": self.abs_diff_max if self.rows else None,
            "latency": {
                "samples": self.latency_n,
                "mean_diff_ms": round(self.latency_diff_sum / self.latency_n * 1e3, 3) if self.latency_n else None,
                "primary_p50_ms": pct(self.primary_recent, 50),
                "shadow_p50_ms": pct(self.shadow_recent, 50),
                "primary_p99_ms": pct(self.primary_recent, 99),
                "shadow_p99_ms": pct(self.shadow_recent, 99),
                "window": f"last {_RECENT} compared requests",
            },
        }


class ShadowMirror:
    """Bounded queue + worker tasks. Start with `start()`, stop with `await stop()`."""

    def __init__(self, detector: OutlierDetector, *, queue_size: int, workers: int, timeout_s: float | None,
                 sample_rate: float) -> None:
        self._detector = detector
        self.timeout_s = timeout_s
        self.sample_rate = sample_rate
        self._queue: asyncio.Queue[Mirror] = asyncio.Queue(queue_size)
        self._n_workers = workers
        self._workers: list[asyncio.Task] = []
        self.stats: dict[str, ShadowStats] = {}
        self._rng = random.Random()
        self.on_outputs: Callable[[str, str, list, list | None], None] | None = None
        """Called with (request id, shadow variant, its labels, its probabilities) for each compared
        mirror: the dispatcher counts the labels and keeps them for outcome feedback."""

    @property
    def queue_size(self) -> int:
        return self._queue.maxsize

    @property
    def depth(self) -> int:
        return self._queue.qsize()

    def reconfigure(self, *, queue_size: int, workers: int, timeout_s: float | None, sample_rate: float) -> None:
        """Apply new shadow settings; a resized queue starts empty (mirrors are best effort)."""
        self.timeout_s = timeout_s
        self.sample_rate = sample_rate
        if queue_size != self._queue.maxsize:
            old = self._queue
            self._queue = asyncio.Queue(queue_size)
            while not old.empty() and not self._queue.full():
                self._queue.put_nowait(old.get_nowait())
            # workers blocked on the old queue's get() are restarted below
            self._restart_workers(workers)
        elif workers != self._n_workers:
            self._restart_workers(workers)

    def _restart_workers(self, workers: int) -> None:
        running = bool(self._workers)
        for task in self._workers:
            task.cancel()
        self._n_workers = workers
        self._workers = []
        if running:
            self.start()

    def start(self) -> None:
        if self._workers:
            return
        self._workers = [asyncio.create_task(self._work(), name=f"shadow-{i}") for i in range(self._n_workers)]

    async def stop(self) -> None:
        for task in self._workers:
            task.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        self._workers = []

    def _stats(self, variant: str) -> ShadowStats:
        stats = self.stats.get(variant)
        if stats is None:
            stats = self.stats[variant] = ShadowStats(variant)
        return stats

    def offer(self, shadows: tuple[Any, ...], request: Any, upstream: Any, primary_variant: str,
              primary_body: bytes, primary_latency_s: float) -> None:
        """Queue one mirror per shadow; never blocks, drops (and counts) when the queue is full."""
        if self.sample_rate < 1.0 and self._rng.random() >= self.sample_rate:
            return
        queue = self._queue
        for shadow in shadows:
            if self._detector.is_ejected(shadow.name):
                stats = self._stats(shadow.name)
                stats.skipped_ejected += 1
                stats.m.skipped.inc()
                continue
            try:
                queue.put_nowait(Mirror(shadow, request, upstream, primary_variant, primary_body, primary_latency_s))
            except asyncio.QueueFull:
                stats = self._stats(shadow.name)
                stats.dropped += 1
                stats.m.dropped.inc()

    async def _work(self) -> None:
        while True:
            queue = self._queue
            mirror = await queue.get()
            try:
                await self._mirror(mirror)
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug in comparison must not kill the worker
                log.exception("shadow comparison failed", extra={"variant": mirror.shadow.name})

    async def _mirror(self, mirror: Mirror) -> None:
        shadow = mirror.shadow
        stats = self._stats(shadow.name)
        m = stats.m
        timeout = self.timeout_s if self.timeout_s is not None else shadow.timeout_s
        stats.mirrored += 1
        m.mirrored.inc()
        t0 = time.perf_counter()
        try:
            answer = await mirror.upstream.mirror(shadow, mirror.request, timeout)
        except UpstreamError as exc:
            self._detector.failure(shadow.name)
            self._error(stats, exc.kind)
            return
        latency = time.perf_counter() - t0
        self._detector.success(shadow.name)
        m.seconds.observe(latency)
        if answer.status >= 400:
            self._error(stats, f"http_{answer.status // 100}xx")
            return
        stats.latency_n += 1
        stats.latency_diff_sum += latency - mirror.primary_latency_s
        stats.primary_recent.append(mirror.primary_latency_s)
        stats.shadow_recent.append(latency)
        m.latency_diff.set(stats.latency_diff_sum / stats.latency_n)
        outputs = mirror.upstream.outputs
        primary, candidate = outputs(mirror.primary_body), outputs(answer.body)
        result = compare(primary, candidate) if primary is not None and candidate is not None else None
        if result is None:
            stats.incomparable += 1
            return
        rows, agree, diff_sum, diff_max = result
        if self.on_outputs is not None:
            self.on_outputs(mirror.request.request_id, shadow.name, candidate[0], candidate[1])  # type: ignore[index]
        stats.compared_requests += 1
        stats.rows += rows
        stats.agreeing_rows += agree
        stats.abs_diff_sum += diff_sum
        stats.abs_diff_max = max(stats.abs_diff_max, diff_max)
        m.rows.inc(rows)
        m.agree.inc(agree)
        m.prob_diff.inc(diff_sum)

    def _error(self, stats: ShadowStats, kind: str) -> None:
        stats.errors[kind] = stats.errors.get(kind, 0) + 1
        metrics.SHADOW_ERRORS.labels(stats.variant, kind).inc()

    def summary(self) -> dict[str, Any]:
        return {
            "queue": {"depth": self._queue.qsize(), "size": self._queue.maxsize, "workers": self._n_workers},
            "shadows": {name: s.summary() for name, s in self.stats.items()},
        }


def compare(primary: Outputs, shadow: Outputs) -> tuple[int, int, float, float] | None:
    """(rows, rows with equal labels, sum over rows of mean |dp|, max |dp|), or None if the two
    answers cannot be compared (no rows, row counts differ).

    Plain Python for the usual few rows (numpy's per-call overhead is larger than the work)."""
    la, pa = primary
    lb, pb = shadow
    if len(la) != len(lb) or not la:
        return None
    rows = len(la)
    agree = sum(1 for x, y in zip(la, lb, strict=True) if x == y)
    diff_sum = diff_max = 0.0
    if pa is not None and pb is not None and len(pa) == len(pb) and pa and len(pa) % rows == 0:
        try:
            diffs = [abs(float(x) - float(y)) for x, y in zip(pa, pb, strict=True)]
        except (TypeError, ValueError):
            return rows, agree, 0.0, 0.0
        width = len(diffs) // rows
        diff_sum = sum(diffs) / width  # = sum over rows of the row's mean |dp|
        diff_max = max(diffs)
    return rows, agree, diff_sum, diff_max
