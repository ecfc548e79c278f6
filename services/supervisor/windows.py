"""The supervisor's input: what one variant did over one window of time.

A :class:`VariantWindow` holds a variant's counts over ``[start, end]`` — requests, errors,
latency (a p99, or better a histogram it is computed from), outcome feedback (labelled and
correct predictions), rewards (count, sum, sum of squares), shadow comparisons with the primary
(compared rows, agreeing labels, sum of mean |p_shadow - p_primary|) and predicted-label counts —
plus ``observed_at``, when the numbers were read (the staleness clock).

Where the numbers come from is not this module's business. Two ways in:

- the service loop reads cumulative counters (a router's or model server's ``/metrics``) into
  :class:`VariantSnapshot` objects and calls :func:`window_between` on two consecutive ones;
- a Prometheus server's ``increase(...[w])`` queries give a window directly.

Missing is not zero. Every count is ``None`` when it was not reported (a NaN handed in becomes
``None`` too); optional groups (feedback, rewards, shadow, latency, labels) are ``None`` when
absent. The rules turn missing data into an *inconclusive* verdict, never a pass.

Counters reset when a process restarts. :func:`window_between` detects it (a counter that went
down, or a changed process start time) and returns a window whose ``problem`` says so, with no
counts, instead of negative numbers; the analysis discards that interval.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

# Prometheus-style histograms end with an +Inf bucket.
INF = math.inf


def _count(value: Any, where: str) -> int | None:
    """A non-negative integer count, or None for missing (None or NaN)."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise ValueError(f"{where}: expected a count, got a boolean")
    if isinstance(value, float):
        if math.isnan(value):
            return None
        if math.isinf(value) or not value.is_integer():
            raise ValueError(f"{where}: expected a whole number, got {value!r}")
        value = int(value)
    if not isinstance(value, int):
        raise ValueError(f"{where}: expected a count, got {type(value).__name__}")
    if value < 0:
        raise ValueError(f"{where}: counts are never negative, got {value}")
    return value


def _real(value: Any, where: str) -> float | None:
    """A finite float, or None for missing (None or NaN)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{where}: expected a number, got {value!r}")
    value = float(value)
    if math.isnan(value):
        return None
    if math.isinf(value):
        raise ValueError(f"{where}: expected a finite number, got {value}")
    return value


@dataclass(frozen=True)
class LatencyHistogram:
    """A Prometheus-style latency histogram: cumulative counts per upper bound (``le``).

    ``bounds`` ascend and end with ``inf``; ``counts[i]`` is the number of observations
    ``<= bounds[i]``, so ``counts[-1]`` is the total.
    """

    bounds: tuple[float, ...]
    counts: tuple[int, ...]

    def __post_init__(self) -> None:
        bounds = tuple(float(b) for b in self.bounds)
        counts = tuple(_count(c, "histogram count") for c in self.counts)
        if not bounds or bounds[-1] != INF:
            raise ValueError("histogram: the last bound must be +Inf")
        if len(bounds) != len(counts):
            raise ValueError(f"histogram: {len(bounds)} bounds but {len(counts)} counts")
        if any(b >= a for a, b in zip(bounds[1:], bounds[:-1], strict=True)):
            raise ValueError("histogram: bounds must increase strictly")
        if any(c is None for c in counts):
            raise ValueError("histogram: a bucket count is missing")
        if any(b < a for a, b in zip(counts[:-1], counts[1:], strict=True)):  # type: ignore[operator]
            raise ValueError("histogram: cumulative counts must not decrease")
        object.__setattr__(self, "bounds", bounds)
        object.__setattr__(self, "counts", counts)

    @property
    def total(self) -> int:
        return self.counts[-1]

    def quantile(self, q: float) -> float | None:
        """The q-quantile as Prometheus' ``histogram_quantile`` estimates it, None when empty.

        Linear interpolation inside the bucket holding the rank (the first bucket starts at 0);
        a rank in the +Inf bucket returns the largest finite bound, a lower bound of the truth.
        """
        if not 0.0 <= q <= 1.0:
            raise ValueError(f"q: must be within [0, 1], got {q}")
        total = self.total
        if total == 0:
            return None
        rank = q * total
        for i, (bound, cumulative) in enumerate(zip(self.bounds, self.counts, strict=True)):
            if cumulative >= rank:
                if bound == INF:
                    return self.bounds[-2] if len(self.bounds) > 1 else None
                lower = self.bounds[i - 1] if i > 0 else 0.0
                below = self.counts[i - 1] if i > 0 else 0
                in_bucket = cumulative - below
                if in_bucket == 0:
                    return lower
                return lower + (bound - lower) * (rank - below) / in_bucket
        return None  # unreachable: counts[-1] == total >= rank

    def _check_same_bounds(self, other: LatencyHistogram) -> None:
        if self.bounds != other.bounds:
            raise ValueError("histograms with different bucket bounds cannot be combined")

    def minus(self, earlier: LatencyHistogram) -> LatencyHistogram | None:
        """This cumulative histogram minus an earlier one; None if a bucket went down (reset)."""
        self._check_same_bounds(earlier)
        diff = tuple(a - b for a, b in zip(self.counts, earlier.counts, strict=True))
        if any(d < 0 for d in diff):
            return None
        return LatencyHistogram(self.bounds, diff)

    def plus(self, other: LatencyHistogram) -> LatencyHistogram:
        self._check_same_bounds(other)
        return LatencyHistogram(self.bounds, tuple(a + b for a, b in zip(self.counts, other.counts, strict=True)))

    def to_dict(self) -> dict[str, Any]:
        # JSON has no Infinity: the last bound is implied.
        return {"bounds": list(self.bounds[:-1]), "counts": list(self.counts)}

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> LatencyHistogram:
        return cls(tuple([*raw["bounds"], INF]), tuple(raw["counts"]))


@dataclass(frozen=True)
class Feedback:
    """Outcome labels joined to this variant's predictions."""

    labelled: int
    """Predictions whose true label arrived."""
    correct: int
    """Of those, predictions equal to the label."""

    def __post_init__(self) -> None:
        labelled, correct = _count(self.labelled, "feedback.labelled"), _count(self.correct, "feedback.correct")
        if labelled is None or correct is None:
            raise ValueError("feedback: labelled and correct are both required (pass feedback=None when missing)")
        if correct > labelled:
            raise ValueError(f"feedback: correct ({correct}) exceeds labelled ({labelled})")
        object.__setattr__(self, "labelled", labelled)
        object.__setattr__(self, "correct", correct)

    @property
    def accuracy(self) -> float | None:
        return self.correct / self.labelled if self.labelled else None


@dataclass(frozen=True)
class Rewards:
    """Rewards reported for this variant's decisions: count, sum and sum of squares."""

    count: int
    total: float
    total_sq: float

    def __post_init__(self) -> None:
        count = _count(self.count, "rewards.count")
        total, total_sq = _real(self.total, "rewards.total"), _real(self.total_sq, "rewards.total_sq")
        if count is None or total is None or total_sq is None:
            raise ValueError("rewards: count, total and total_sq are all required (pass rewards=None when missing)")
        if total_sq < 0:
            raise ValueError(f"rewards.total_sq: a sum of squares is never negative, got {total_sq}")
        object.__setattr__(self, "count", count)
        object.__setattr__(self, "total", total)
        object.__setattr__(self, "total_sq", total_sq)

    @property
    def mean(self) -> float | None:
        return self.total / self.count if self.count else None

    @property
    def variance(self) -> float | None:
        """Sample variance (n - 1 denominator), None below two rewards."""
        if self.count < 2:
            return None
        return max(0.0, (self.total_sq - self.total * self.total / self.count) / (self.count - 1))


@dataclass(frozen=True)
class ShadowComparison:
    """Rows where this (shadow) variant's output was compared with the primary's."""

    compared: int
    agreeing: int
    """Rows with the same predicted label."""
    abs_dp_sum: float
    """Sum over rows of the mean |p_shadow - p_primary| across classes."""

    def __post_init__(self) -> None:
        compared, agreeing = _count(self.compared, "shadow.compared"), _count(self.agreeing, "shadow.agreeing")
        abs_dp_sum = _real(self.abs_dp_sum, "shadow.abs_dp_sum")
        if compared is None or agreeing is None or abs_dp_sum is None:
            raise ValueError("shadow: compared, agreeing and abs_dp_sum are all required (pass shadow=None)")
        if agreeing > compared:
            raise ValueError(f"shadow: agreeing ({agreeing}) exceeds compared ({compared})")
        if abs_dp_sum < 0:
            raise ValueError(f"shadow.abs_dp_sum: never negative, got {abs_dp_sum}")
        object.__setattr__(self, "compared", compared)
        object.__setattr__(self, "agreeing", agreeing)
        object.__setattr__(self, "abs_dp_sum", abs_dp_sum)

    @property
    def agreement(self) -> float | None:
        return self.agreeing / self.compared if self.compared else None

    @property
    def mean_abs_dp(self) -> float | None:
        return self.abs_dp_sum / self.compared if self.compared else None


def _labels(raw: Mapping[str, Any] | None, where: str) -> dict[str, int] | None:
    if raw is None:
        return None
    out = {}
    for label, value in raw.items():
        n = _count(value, f"{where}[{label!r}]")
        if n is None:
            return None  # one NaN bucket makes the whole distribution unknown
        out[str(label)] = n
    return out


@dataclass(frozen=True)
class VariantWindow:
    """One variant's activity over ``[start, end]`` (unix seconds), read at ``observed_at``."""

    variant: str
    start: float
    end: float
    observed_at: float
    requests: int | None
    """Requests this variant answered (for a shadow: mirrored requests sent to it)."""
    errors: int | None
    """Of those, failed ones (5xx, timeouts, connection errors)."""
    version: int | str | None = None
    """Model version the variant served, when known; a change restarts the analysis."""
    latency_p99_s: float | None = None
    """p99 latency in seconds when no histogram is available (e.g. a PromQL histogram_quantile)."""
    latency: LatencyHistogram | None = None
    """Latency histogram of the window; preferred: windows merge exactly and p99 follows."""
    feedback: Feedback | None = None
    rewards: Rewards | None = None
    shadow: ShadowComparison | None = None
    predicted_labels: dict[str, int] | None = None
    """Predicted label -> count over the window."""
    problem: str | None = None
    """Why the window cannot be trusted (a counter reset...); its counts are then None."""

    def __post_init__(self) -> None:
        for name in ("start", "end", "observed_at"):
            value = _real(getattr(self, name), name)
            if value is None:
                raise ValueError(f"{name}: a window needs a finite time")
            object.__setattr__(self, name, value)
        if self.end < self.start:
            raise ValueError(f"window ends ({self.end}) before it starts ({self.start})")
        requests, errors = _count(self.requests, "requests"), _count(self.errors, "errors")
        if requests is not None and errors is not None and errors > requests:
            raise ValueError(f"errors ({errors}) exceed requests ({requests})")
        object.__setattr__(self, "requests", requests)
        object.__setattr__(self, "errors", errors)
        p99 = _real(self.latency_p99_s, "latency_p99_s")
        if p99 is not None and p99 < 0:
            raise ValueError(f"latency_p99_s: never negative, got {p99}")
        object.__setattr__(self, "latency_p99_s", p99)
        object.__setattr__(self, "predicted_labels", _labels(self.predicted_labels, "predicted_labels"))

    @property
    def duration_s(self) -> float:
        return self.end - self.start

    @property
    def error_rate(self) -> float | None:
        if self.requests is None or self.errors is None or self.requests == 0:
            return None
        return self.errors / self.requests

    @property
    def p99_s(self) -> float | None:
        """p99 from the histogram when there is one, else the reported p99, else None."""
        if self.latency is not None:
            return self.latency.quantile(0.99)
        return self.latency_p99_s

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, LatencyHistogram):
                value = value.to_dict()
            elif isinstance(value, (Feedback, Rewards, ShadowComparison)):
                value = {g.name: getattr(value, g.name) for g in fields(value)}
            out[f.name] = value
        return out

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> VariantWindow:
        data = dict(raw)
        if data.get("latency") is not None:
            data["latency"] = LatencyHistogram.from_dict(data["latency"])
        for key, kind in (("feedback", Feedback), ("rewards", Rewards), ("shadow", ShadowComparison)):
            if data.get(key) is not None:
                data[key] = kind(**data[key])
        return cls(**data)


@dataclass(frozen=True)
class VariantSnapshot:
    """Cumulative counters of one variant at ``taken_at`` (what a ``/metrics`` scrape gives).

    Field meanings follow :class:`VariantWindow`, as totals since the process started.
    ``process_start`` (Prometheus ``process_start_time_seconds``) catches a restart even when the
    new counters have already grown past the old ones.
    """

    variant: str
    taken_at: float
    requests: int | None
    errors: int | None
    version: int | str | None = None
    process_start: float | None = None
    latency: LatencyHistogram | None = None
    feedback: Feedback | None = None
    rewards: Rewards | None = None
    shadow: ShadowComparison | None = None
    predicted_labels: dict[str, int] | None = field(default=None)

    def __post_init__(self) -> None:
        object.__setattr__(self, "requests", _count(self.requests, "requests"))
        object.__setattr__(self, "errors", _count(self.errors, "errors"))
        object.__setattr__(self, "predicted_labels", _labels(self.predicted_labels, "predicted_labels"))


class _Reset(Exception):
    """A counter went down between two snapshots."""


def _diff(after: int | None, before: int | None, name: str) -> int | None:
    if after is None or before is None:
        return None
    if after < before:
        raise _Reset(f"{name} went down from {before} to {after}")
    return after - before


def window_between(before: VariantSnapshot, after: VariantSnapshot, observed_at: float | None = None) -> VariantWindow:
    """The window ``[before.taken_at, after.taken_at]`` as the difference of two snapshots.

    A counter that went down, or a changed ``process_start``, means the process restarted and
    part of the window's activity is lost: the window then has no counts and a ``problem``
    naming the reset, so the analysis treats it as inconclusive instead of reading negative
    numbers. A changed model version is a problem too: the window mixes two models.
    ``observed_at`` defaults to ``after.taken_at``.
    """
    if before.variant != after.variant:
        raise ValueError(f"snapshots of different variants: {before.variant!r} and {after.variant!r}")
    if after.taken_at < before.taken_at:
        raise ValueError(f"snapshots out of order: {after.taken_at} is before {before.taken_at}")
    base = VariantWindow(
        variant=after.variant,
        start=before.taken_at,
        end=after.taken_at,
        observed_at=after.taken_at if observed_at is None else observed_at,
        requests=None,
        errors=None,
        version=after.version,
    )
    if before.process_start is not None and after.process_start is not None and (
        after.process_start != before.process_start
    ):
        return replace(base, problem=f"counter reset: {after.variant} restarted (process start time changed)")
    if before.version is not None and after.version is not None and before.version != after.version:
        return replace(
            base, problem=f"{after.variant} changed model version from {before.version} to {after.version}"
        )
    try:
        # The core counters first: the reason names the most telling one.
        requests = _diff(after.requests, before.requests, "requests")
        errors = _diff(after.errors, before.errors, "errors")
        latency = None
        if before.latency is not None and after.latency is not None:
            latency = after.latency.minus(before.latency)
            if latency is None:
                raise _Reset("the latency histogram went down")
        feedback = None
        if before.feedback is not None and after.feedback is not None:
            feedback = Feedback(
                _diff(after.feedback.labelled, before.feedback.labelled, "feedback.labelled"),  # type: ignore[arg-type]
                _diff(after.feedback.correct, before.feedback.correct, "feedback.correct"),  # type: ignore[arg-type]
            )
        rewards = None
        if before.rewards is not None and after.rewards is not None:
            # Sums of rewards may go down legitimately (negative rewards); the count may not.
            rewards = Rewards(
                _diff(after.rewards.count, before.rewards.count, "rewards.count"),  # type: ignore[arg-type]
                after.rewards.total - before.rewards.total,
                max(0.0, after.rewards.total_sq - before.rewards.total_sq),
            )
        shadow = None
        if before.shadow is not None and after.shadow is not None:
            if after.shadow.abs_dp_sum < before.shadow.abs_dp_sum:
                raise _Reset("shadow.abs_dp_sum went down")
            shadow = ShadowComparison(
                _diff(after.shadow.compared, before.shadow.compared, "shadow.compared"),  # type: ignore[arg-type]
                _diff(after.shadow.agreeing, before.shadow.agreeing, "shadow.agreeing"),  # type: ignore[arg-type]
                after.shadow.abs_dp_sum - before.shadow.abs_dp_sum,
            )
        labels = None
        if before.predicted_labels is not None and after.predicted_labels is not None:
            labels = {
                k: _diff(v, before.predicted_labels.get(k, 0), f"predicted_labels[{k!r}]")
                for k, v in after.predicted_labels.items()
            }
            gone = set(before.predicted_labels) - set(after.predicted_labels)
            if gone:
                raise _Reset(f"predicted label counters disappeared: {sorted(gone)}")
        return replace(
            base,
            requests=requests,
            errors=errors,
            latency=latency,
            feedback=feedback,
            rewards=rewards,
            shadow=shadow,
            predicted_labels=labels,
        )
    except _Reset as reset:
        return replace(base, problem=f"counter reset: {reset} ({after.variant} probably restarted)")


def _sum_counts(a: int | None, b: int | None) -> int | None:
    return None if a is None or b is None else a + b


def merge_pair(
    accumulated: tuple[VariantWindow, VariantWindow] | None, interval: tuple[VariantWindow, VariantWindow]
) -> tuple[VariantWindow, VariantWindow]:
    """Extend an accumulated (stable, candidate) pair by the next interval's pair.

    ``accumulated`` None starts a new accumulation. An optional group (latency, feedback,
    rewards, labels) is added only when *both* variants reported it for that interval, so the
    accumulated pair stays a comparison over the same window; an interval missing it for either
    side leaves that group as it was. Shadow comparisons are paired by nature (the shadow's and
    the primary's outputs on the same requests) and accumulate on the side reporting them.
    Scalar p99s (no histogram) combine as a request-weighted mean of the intervals' p99s — an
    approximation; histograms combine exactly.
    """
    stable_next, candidate_next = interval
    if accumulated is None:
        accumulated = (_empty_like(stable_next), _empty_like(candidate_next))
    stable, candidate = accumulated
    return (
        _merge(stable, stable_next, candidate_next),
        _merge(candidate, candidate_next, stable_next),
    )


def _empty_like(window: VariantWindow) -> VariantWindow:
    return VariantWindow(
        variant=window.variant,
        start=window.start,
        end=window.start,
        observed_at=window.observed_at,
        requests=0,
        errors=0,
        version=window.version,
    )


def _merge(acc: VariantWindow, nxt: VariantWindow, other_nxt: VariantWindow) -> VariantWindow:
    if acc.variant != nxt.variant:
        raise ValueError(f"cannot merge windows of {acc.variant!r} and {nxt.variant!r}")
    if acc.problem or nxt.problem:
        raise ValueError("windows with a problem are never merged")

    def both(group: str) -> bool:
        if group == "shadow":
            # Shadow comparisons are paired already (shadow vs primary on the same requests):
            # only the shadow reports them.
            return nxt.shadow is not None
        return getattr(nxt, group) is not None and getattr(other_nxt, group) is not None

    def combine(group: str, add) -> Any:
        mine, theirs = getattr(acc, group), getattr(nxt, group)
        if not both(group):
            return mine
        return theirs if mine is None else add(mine, theirs)

    latency = combine("latency", lambda a, b: a.plus(b))
    p99 = acc.latency_p99_s
    if nxt.latency_p99_s is not None and other_nxt.latency_p99_s is not None:
        n_acc, n_next = acc.requests or 0, nxt.requests or 0
        if p99 is None or n_acc + n_next == 0:
            p99 = nxt.latency_p99_s
        else:
            p99 = (p99 * n_acc + nxt.latency_p99_s * n_next) / (n_acc + n_next)
    labels = combine(
        "predicted_labels", lambda a, b: {k: a.get(k, 0) + b.get(k, 0) for k in sorted(set(a) | set(b))}
    )
    return VariantWindow(
        variant=acc.variant,
        start=min(acc.start, nxt.start),
        end=max(acc.end, nxt.end),
        observed_at=max(acc.observed_at, nxt.observed_at),
        requests=_sum_counts(acc.requests, nxt.requests),
        errors=_sum_counts(acc.errors, nxt.errors),
        version=nxt.version if nxt.version is not None else acc.version,
        latency_p99_s=p99,
        latency=latency,
        feedback=combine("feedback", lambda a, b: Feedback(a.labelled + b.labelled, a.correct + b.correct)),
        rewards=combine(
            "rewards", lambda a, b: Rewards(a.count + b.count, a.total + b.total, a.total_sq + b.total_sq)
        ),
        shadow=combine(
            "shadow",
            lambda a, b: ShadowComparison(
                a.compared + b.compared, a.agreeing + b.agreeing, a.abs_dp_sum + b.abs_dp_sum
            ),
        ),
        predicted_labels=labels,
    )
