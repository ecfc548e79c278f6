"""Reading the router's cumulative per-variant counters into `VariantSnapshot`s.

Two sources give the same samples:

- the router's ``/metrics`` text, parsed with ``prometheus_client.parser``
  (:func:`parse_exposition`);
- a Prometheus server's HTTP API (``/api/v1/query``, one instant query per series, summed over
  router instances; :func:`query_prometheus`).

Either way :func:`snapshot` turns the samples into one variant's cumulative snapshot:

    requests    router_requests_total{variant=v} (answered by v, any status)
                + router_upstream_errors_total{variant=v} (attempts on v that failed over or 502'd)
                + router_shadow_mirrored_total{variant=v} (copies sent to v as a shadow)
    errors      router_upstream_errors_total{variant=v} + answers of v with status >= 500
                + router_shadow_errors_total{variant=v} (mirrored copies v failed)
    latency     router_upstream_seconds_bucket{variant=v} (cumulative histogram)
    feedback    router_feedback_labels_total / router_feedback_correct_total{variant=v}
    rewards     router_feedback_rewards_total / _reward_sum / _reward_squares_sum{variant=v}
    shadow      router_shadow_compared_rows_total / _agreeing_rows_total / _abs_prob_diff_sum{variant=v}
    labels      router_predicted_labels_total{variant=v, label}
    restart     process_start_time_seconds

**Missing is not zero.** A metric family the source does not carry at all (an older router
without feedback metrics) gives ``None`` for that group; a family that is there but has no child
for the variant yet (nothing happened to it) gives 0. A NaN sample stays NaN, which the windows
read as missing. A counter name is accepted with or without the ``_total`` suffix.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

from .windows import Feedback, LatencyHistogram, Rewards, ShadowComparison, VariantSnapshot

REQUESTS = "router_requests_total"
UPSTREAM_ERRORS = "router_upstream_errors_total"
UPSTREAM_BUCKETS = "router_upstream_seconds_bucket"
FEEDBACK_LABELS = "router_feedback_labels_total"
FEEDBACK_CORRECT = "router_feedback_correct_total"
REWARDS_COUNT = "router_feedback_rewards_total"
REWARD_SUM = "router_feedback_reward_sum"
REWARD_SQUARES = "router_feedback_reward_squares_sum"
SHADOW_COMPARED = "router_shadow_compared_rows_total"
SHADOW_AGREEING = "router_shadow_agreeing_rows_total"
SHADOW_DP_SUM = "router_shadow_abs_prob_diff_sum"
SHADOW_MIRRORED = "router_shadow_mirrored_total"
SHADOW_ERRORS = "router_shadow_errors_total"
PREDICTED_LABELS = "router_predicted_labels_total"
CONFIG_VERSION = "router_config_version"
PROCESS_START = "process_start_time_seconds"

#: Every series the supervisor reads (the Prometheus source queries exactly these).
SERIES = (REQUESTS, UPSTREAM_ERRORS, UPSTREAM_BUCKETS, FEEDBACK_LABELS, FEEDBACK_CORRECT, REWARDS_COUNT, REWARD_SUM,
          REWARD_SQUARES, SHADOW_COMPARED, SHADOW_AGREEING, SHADOW_DP_SUM, SHADOW_MIRRORED, SHADOW_ERRORS,
          PREDICTED_LABELS, CONFIG_VERSION)


class ScrapeError(Exception):
    """The metrics could not be read or parsed; the message says why."""


@dataclass(frozen=True)
class Sample:
    name: str
    labels: Mapping[str, str]
    value: float


def _base(name: str) -> str:
    return name[:-6] if name.endswith("_total") else name


class Exposition:
    """The samples of one read, indexed by series name (``_total`` optional)."""

    def __init__(self, samples: Iterable[Sample], families: Iterable[str] = ()) -> None:
        self._by_name: dict[str, list[Sample]] = defaultdict(list)
        for s in samples:
            self._by_name[_base(s.name)].append(s)
        self._families = {_base(f) for f in families} | set(self._by_name)

    def has(self, name: str) -> bool:
        """Whether the source carries this series at all (possibly with no child yet)."""
        return _base(name) in self._families

    def samples(self, name: str, **match: str) -> list[Sample]:
        return [s for s in self._by_name.get(_base(name), ())
                if all(s.labels.get(k) == v for k, v in match.items())]

    def total(self, name: str, **match: str) -> float | None:
        """Sum of the matching samples; 0 when the series exists without a matching child; None
        when the source does not carry the series."""
        if not self.has(name):
            return None
        return float(sum(s.value for s in self.samples(name, **match)))

    def value(self, name: str) -> float | None:
        found = self.samples(name)
        return found[0].value if found else None


def parse_exposition(text: str) -> Exposition:
    """Parse Prometheus text format (a router's ``/metrics``)."""
    samples, families = [], []
    try:
        for family in text_string_to_metric_families(text):
            families.append(family.name)
            if family.type == "counter":
                families.append(family.name + "_total")
            if family.type == "histogram":
                families.extend(family.name + suffix for suffix in ("_bucket", "_count", "_sum"))
            for s in family.samples:
                samples.append(Sample(s.name, dict(s.labels), float(s.value)))
    except Exception as exc:  # the parser raises ValueError and friends on malformed text
        raise ScrapeError(f"the metrics text could not be parsed: {exc}") from exc
    return Exposition(samples, families)


def _count(value: float | None) -> float | None:
    """Counters as exposed are floats; a counter is a whole number (rounded against float noise)."""
    if value is None or math.isnan(value):
        return value
    return float(round(value))


def _histogram(expo: Exposition, variant: str) -> LatencyHistogram | None:
    buckets: dict[float, float] = defaultdict(float)
    for s in expo.samples(UPSTREAM_BUCKETS, variant=variant):
        le = s.labels.get("le")
        if le is None:
            continue
        buckets[float(le)] += s.value
    if not buckets or math.inf not in buckets or any(math.isnan(v) for v in buckets.values()):
        return None
    bounds = tuple(sorted(buckets))
    return LatencyHistogram(bounds, tuple(int(round(buckets[b])) for b in bounds))


def _status(sample: Sample) -> int:
    try:
        return int(sample.labels.get("status", "0"))
    except ValueError:
        return 0


def snapshot(expo: Exposition, variant: str, taken_at: float, version: int | str | None = None,
             process_start: float | None = None) -> VariantSnapshot:
    """One variant's cumulative counters (see the module docstring for the mapping)."""
    answered = expo.total(REQUESTS, variant=variant)
    failed = expo.total(UPSTREAM_ERRORS, variant=variant)
    if failed is None and answered is not None:
        failed = 0.0  # a router without the error counter yet: nothing failed
    requests = errors = None
    if answered is not None and failed is not None:
        requests = _count(answered + failed)
        errors_5xx = sum(s.value for s in expo.samples(REQUESTS, variant=variant) if _status(s) >= 500)
        errors = _count(failed + errors_5xx)
        # A shadow answers no client: its traffic is the copies mirrored to it (a shadow rollout's
        # error_rate and sample sizes), kept apart from the variant's own counters by the router.
        mirrored = expo.total(SHADOW_MIRRORED, variant=variant) or 0.0
        mirror_errors = expo.total(SHADOW_ERRORS, variant=variant) or 0.0
        if not (math.isnan(mirrored) or math.isnan(mirror_errors)):
            requests = _count(answered + failed + mirrored)
            errors = _count(failed + errors_5xx + mirror_errors)

    feedback = None
    labelled, correct = expo.total(FEEDBACK_LABELS, variant=variant), expo.total(FEEDBACK_CORRECT, variant=variant)
    if labelled is not None and correct is not None and not (math.isnan(labelled) or math.isnan(correct)):
        feedback = Feedback(int(round(labelled)), int(round(correct)))
    rewards = None
    count = expo.total(REWARDS_COUNT, variant=variant)
    total, squares = expo.total(REWARD_SUM, variant=variant), expo.total(REWARD_SQUARES, variant=variant)
    if count is not None and total is not None and squares is not None and not any(
            math.isnan(v) for v in (count, total, squares)):
        rewards = Rewards(int(round(count)), total, max(0.0, squares))
    shadow = None
    compared, agreeing = expo.total(SHADOW_COMPARED, variant=variant), expo.total(SHADOW_AGREEING, variant=variant)
    dp = expo.total(SHADOW_DP_SUM, variant=variant)
    if compared is not None and agreeing is not None and dp is not None and not any(
            math.isnan(v) for v in (compared, agreeing, dp)):
        shadow = ShadowComparison(int(round(compared)), int(round(agreeing)), max(0.0, dp))
    labels = None
    if expo.has(PREDICTED_LABELS):
        per_label: dict[str, float] = defaultdict(float)
        for s in expo.samples(PREDICTED_LABELS, variant=variant):
            per_label[s.labels.get("label", "")] += s.value
        labels = {k: (v if math.isnan(v) else int(round(v))) for k, v in per_label.items()}
    return VariantSnapshot(
        variant=variant,
        taken_at=taken_at,
        requests=requests,
        errors=errors,
        version=version,
        process_start=process_start if process_start is not None else expo.value(PROCESS_START),
        latency=_histogram(expo, variant),
        feedback=feedback,
        rewards=rewards,
        shadow=shadow,
        predicted_labels=labels,
    )


def prometheus_samples(name: str, result: list[Mapping]) -> list[Sample]:
    """Samples of one ``/api/v1/query`` vector result (``data.result``)."""
    out = []
    for item in result:
        labels = dict(item.get("metric", {}))
        labels.pop("__name__", None)
        _, raw = item["value"]
        out.append(Sample(name, labels, float(raw)))
    return out


def exposition_from_prometheus(results: Mapping[str, list[Mapping]]) -> Exposition:
    """An Exposition from the vector results of one instant query per series name. A series
    with no result at all counts as not carried (None, never 0): Prometheus cannot tell an
    absent family from one without children."""
    samples = [s for name, result in results.items() for s in prometheus_samples(name, result)]
    return Exposition(samples, [name for name, result in results.items() if result])


def newest_sample_time(result: list[Mapping]) -> float | None:
    """The newest sample time of a ``timestamp(...)`` query: when Prometheus last scraped."""
    times = [float(item["value"][1]) for item in result]
    return max(times) if times else None
