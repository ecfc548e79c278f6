"""What the supervisor's dashboard page shows, gathered in one JSON document (``GET /api/dashboard``).

The page (``static/dashboard.html``) talks only to the supervisor; the supervisor reads the
router for it:

    router /metrics           per variant: request rate, error rate, p50 / p99 latency, accuracy over
                              the last `rate_window_s` (differences of two scrapes, the same
                              `scrape.snapshot` + `windows.window_between` the analysis uses)
    router /quality           cumulative accuracy and mean reward with their counts
    router /policy            policy kind, weights / arms (bandit arm shares), per-variant health
    router /shadow/summary    shadow agreement, mean |dp|, mirrored counts (when there are shadows)
    router /experiments/<n>   the A/B report and its verdict (A/B policy only)
    the supervisor itself     status (phase, step, next check, sequential tests), decision records

Reads are throttled (`min_interval_s`): however many pages poll, the router is read at most that
often, and each read adds one point to a bounded in-memory series (the charts). A router that
does not answer leaves the last good values out and the document says why (`router_errors`).
Missing numbers are null, never 0.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import httpx

from . import scrape
from .rules import json_safe
from .windows import VariantSnapshot, VariantWindow, window_between

SERIES_FIELDS = ("rps", "error_rate", "p50_ms", "p99_ms", "accuracy", "weight")
"""Per-variant series of the charts (one value per point, null when unknown)."""


def _ratio(num: float | None, den: float | None) -> float | None:
    if num is None or den is None or den <= 0 or math.isnan(num) or math.isnan(den):
        return None
    return num / den


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1000.0


def window_figures(window: VariantWindow) -> dict[str, Any]:
    """Rates and quantiles of one variant over a short window (None where the window cannot say)."""
    out: dict[str, Any] = {"rps": None, "error_rate": None, "p50_ms": None, "p99_ms": None, "accuracy": None,
                           "requests": window.requests, "errors": window.errors, "span_s": window.duration_s,
                           "problem": window.problem}
    if window.problem is not None:
        return out
    span = window.duration_s
    if window.requests is not None and span > 0:
        out["rps"] = window.requests / span
    out["error_rate"] = _ratio(window.errors, window.requests)
    if window.latency is not None:
        out["p50_ms"] = _ms(window.latency.quantile(0.5))
        out["p99_ms"] = _ms(window.latency.quantile(0.99))
    if window.feedback is not None:
        out["accuracy"] = _ratio(window.feedback.correct, window.feedback.labelled)
        out["labelled"] = window.feedback.labelled
    return out


def _weights(policy: dict[str, Any] | None) -> dict[str, float] | None:
    state = (policy or {}).get("state") or {}
    weights = state.get("weights")
    if isinstance(weights, dict):
        return {k: float(v) for k, v in weights.items()}
    return None


def arm_shares(policy: dict[str, Any] | None) -> dict[str, Any] | None:
    """Bandit (pulls) or A/B (assignments) share of traffic per arm; None for other policies."""
    state = (policy or {}).get("state") or {}
    arms = state.get("arms")
    if not isinstance(arms, dict) or not arms:
        return None
    key = "pulls" if all(isinstance(a, dict) and "pulls" in a for a in arms.values()) else "assignments"
    counts = {name: (a.get(key) or 0) for name, a in arms.items() if isinstance(a, dict)}
    total = sum(counts.values())
    out = {}
    for name, a in arms.items():
        if not isinstance(a, dict):
            continue
        mean = a.get("mean_reward")
        if mean is None and a.get("rewards"):
            mean = _ratio(a.get("reward_sum"), a.get("rewards"))
        if mean is None and a.get("outcomes"):  # A/B: conversions over outcomes received
            mean = _ratio(a.get("conversions"), a.get("outcomes"))
        out[name] = {"count": counts.get(name, 0), "share": _ratio(counts.get(name, 0), total), "mean_reward": mean}
    return {"counted_by": key, "total": total, "arms": out,
            "estimated_regret": state.get("estimated_regret")}


def drift_view(supervisor: Any) -> dict[str, Any]:
    """Per-feature drift when the supervisor has a drift report; otherwise why not."""
    report = getattr(supervisor, "drift_report", None)
    if report is not None:
        data = report.to_dict() if hasattr(report, "to_dict") else dict(report)
        return {"connected": True, **data}
    why = next((r.get("why") for r in getattr(supervisor, "skipped_rules", []) if r.get("metric") == "input_drift"),
               None)
    drift = getattr(supervisor, "drift", None)
    why = why or (drift.problem if drift is not None else None)
    return {"connected": False, "why": why or "the router's input sample has not been read yet"}


def compact_decision(record: dict[str, Any]) -> dict[str, Any]:
    """A decision record as the history table shows it (the evidence kept, the bulky parts left out)."""
    keep = ("check", "at", "verdict", "phase", "mode", "step_index", "candidate_weight", "candidate_version",
            "explanation", "failures", "failure_limit", "restarted", "bake")
    out = {k: record.get(k) for k in keep}
    action = record.get("action") or {}
    out["action"] = {"kind": action.get("kind"), "candidate_weight": action.get("candidate_weight")}
    applied = record.get("apply") or {}
    out["apply"] = {"status": applied.get("status"), "detail": applied.get("detail")}
    out["rules"] = [{k: r.get(k) for k in ("rule", "metric", "verdict", "reason", "threshold", "stable_value",
                                          "candidate_value", "stable_n", "candidate_n", "statistic", "p_value",
                                          "warning")} for r in record.get("rules") or []]
    out["sequential"] = [{k: s.get(k) for k in ("test", "stable_value", "candidate_value", "stable_n", "candidate_n",
                                               "statistic", "threshold", "p_value", "alpha", "rejected")}
                         for s in record.get("sequential") or []]
    return out


def history(records: list[dict[str, Any]], limit: int) -> list[dict[str, Any]]:
    """Newest first, at most `limit` entries; a run of consecutive records with the same action,
    verdict, apply status and explanation (a rollout holding, or finished) is one entry carrying
    `repeated` (how many) and `first_check`, so the steps, promotions and rollbacks stay in view."""
    out: list[dict[str, Any]] = []
    for record in reversed(records):
        entry = compact_decision(record)
        if out:
            last = out[-1]
            same = (last["action"], last["verdict"], last["apply"]["status"], last["explanation"])
            if same == (entry["action"], entry["verdict"], entry["apply"]["status"], entry["explanation"]):
                last["repeated"] += 1
                last["first_check"], last["first_at"] = entry["check"], entry["at"]
                continue
            if len(out) >= limit:
                break
        out.append({**entry, "repeated": 1, "first_check": entry["check"], "first_at": entry["at"]})
    return out


class Dashboard:
    """Reads the router for the page, at most every `min_interval_s`, and keeps the chart series."""

    def __init__(self, supervisor: Any, *, clock: Callable[[], float] = time.time, min_interval_s: float = 0.75,
                 rate_window_s: float = 10.0, max_points: int = 900, max_decisions: int = 40) -> None:
        self.supervisor = supervisor
        self.clock = clock
        self.min_interval_s = min_interval_s
        self.rate_window_s = rate_window_s
        self.max_decisions = max_decisions
        self.points: deque[dict[str, Any]] = deque(maxlen=max_points)
        self.snapshots: deque[tuple[float, dict[str, VariantSnapshot]]] = deque(maxlen=600)
        self.router: dict[str, Any] = {}
        self.router_errors: dict[str, str] = {}
        self.live: dict[str, dict[str, Any]] = {}
        self.read_at: float | None = None
        self._client: httpx.AsyncClient | None = None
        self._lock = asyncio.Lock()

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            settings = self.supervisor.settings
            self._client = httpx.AsyncClient(base_url=settings.router_url.rstrip("/"),
                                             timeout=httpx.Timeout(settings.request_timeout_s))
        return self._client

    async def _get(self, path: str) -> tuple[str, Any]:
        try:
            r = await self._http().get(path)
        except httpx.HTTPError as exc:
            return path, exc
        if r.status_code != 200:
            return path, RuntimeError(f"GET {path} answered {r.status_code}")
        return path, r.text if path == "/metrics" else r.json()

    async def refresh(self) -> None:
        """Read the router once more unless it was read less than `min_interval_s` ago."""
        async with self._lock:
            now = self.clock()
            if self.read_at is not None and now - self.read_at < self.min_interval_s:
                return
            self.read_at = now
            paths = ["/metrics", "/quality", "/policy", "/shadow/summary"]
            name = (self.router.get("policy") or {}).get("name")
            if (self.router.get("policy") or {}).get("kind") == "ab" and name:
                paths.append(f"/experiments/{name}")
            results = dict(await asyncio.gather(*(self._get(p) for p in paths)))
            self.router_errors = {p: str(v) for p, v in results.items() if isinstance(v, Exception)}
            # An endpoint that failed keeps what it last gave; router_errors names it.
            for key, path in (("quality", "/quality"), ("policy", "/policy"), ("shadow", "/shadow/summary")):
                value = results.get(path)
                if not isinstance(value, Exception):
                    self.router[key] = value
            experiment = next((v for p, v in results.items() if p.startswith("/experiments/")), None)
            if not isinstance(experiment, Exception):
                self.router["experiment"] = experiment
            text = results.get("/metrics")
            if isinstance(text, str):
                try:
                    self._add_point(now, scrape.parse_exposition(text))
                except (scrape.ScrapeError, ValueError, TypeError) as exc:
                    self.router_errors["/metrics"] = str(exc)

    def variants(self) -> list[str]:
        found = list(((self.router.get("policy") or {}).get("variants") or {}).keys())
        for extra in (self.supervisor.spec.stable, self.supervisor.spec.candidate):
            if extra not in found:
                found.append(extra)
        return found

    def _add_point(self, now: float, expo: scrape.Exposition) -> None:
        snaps = {v: scrape.snapshot(expo, v, now) for v in self.variants()}
        self.snapshots.append((now, snaps))
        # The base is the newest snapshot at least rate_window_s old (or the oldest one, when the
        # page has only just started polling); one far older than that is a gap and is dropped.
        while len(self.snapshots) > 1 and (now - self.snapshots[1][0] >= self.rate_window_s
                                           or now - self.snapshots[0][0] > 3 * self.rate_window_s):
            self.snapshots.popleft()
        base_t, base = self.snapshots[0]
        weights = _weights(self.router.get("policy")) or {}
        point: dict[str, Any] = {"t": now, "variants": {}}
        live: dict[str, dict[str, Any]] = {}
        for variant, snap in snaps.items():
            figures: dict[str, Any] = {f: None for f in SERIES_FIELDS}
            if base_t < now and variant in base:
                figures.update(window_figures(window_between(base[variant], snap)))
            figures["weight"] = weights.get(variant)
            figures["requests_total"] = snap.requests
            live[variant] = figures
            point["variants"][variant] = {f: figures.get(f) for f in SERIES_FIELDS}
        self.live = live
        if base_t < now:
            self.points.append(point)

    def series(self) -> dict[str, Any]:
        """Chart series: one list of times, per variant one list per field, aligned (null = unknown)."""
        points = list(self.points)
        variants = self.variants()
        return {
            "t": [p["t"] for p in points],
            "variants": {v: {f: [(p["variants"].get(v) or {}).get(f) for p in points] for f in SERIES_FIELDS}
                         for v in variants},
        }

    def variant_table(self) -> list[dict[str, Any]]:
        policy = self.router.get("policy") or {}
        quality = (self.router.get("quality") or {}).get("variants") or {}
        weights = _weights(policy) or (self.supervisor.status().get("weights_in_force") or {})
        rows = []
        for variant in self.variants():
            info = (policy.get("variants") or {}).get(variant) or {}
            q = quality.get(variant) or {}
            live = self.live.get(variant) or {}
            rows.append({
                "variant": variant,
                "version": info.get("version"),
                "role": ("stable" if variant == self.supervisor.spec.stable else
                         "candidate" if variant == self.supervisor.spec.candidate else None),
                "weight": weights.get(variant),
                "ejected": info.get("ejected"),
                "requests_total": live.get("requests_total"),
                "rps": live.get("rps"),
                "error_rate": live.get("error_rate"),
                "p50_ms": live.get("p50_ms"),
                "p99_ms": live.get("p99_ms"),
                "accuracy_window": live.get("accuracy"),
                "accuracy": q.get("accuracy"),
                "labels": q.get("labels"),
                "mean_reward": q.get("mean_reward"),
                "rewards": q.get("rewards"),
                "problem": live.get("problem"),
            })
        return rows

    def shadow_view(self) -> dict[str, Any] | None:
        shadow = self.router.get("shadow") or {}
        shadows = shadow.get("shadows") or {}
        if not shadows:
            return None
        return {"shadow_variants": shadow.get("shadow_variants"), "shadows": shadows}

    def ab_view(self) -> dict[str, Any] | None:
        experiment = self.router.get("experiment") or {}
        report = experiment.get("report")
        if not isinstance(report, dict) or "verdict" not in report:
            return None
        return {k: report.get(k) for k in ("control", "treatment", "verdict", "difference", "ci", "p_value",
                                           "always_valid_p_value", "alpha", "min_samples", "arms")}

    async def document(self) -> dict[str, Any]:
        """Everything the page shows (``GET /api/dashboard``)."""
        await self.refresh()
        decisions = list(self.supervisor.decisions)
        policy = self.router.get("policy") or {}
        return json_safe({
            "now": self.clock(),
            "read_at": self.read_at,
            "rate_window_s": self.rate_window_s,
            "router_url": self.supervisor.settings.router_url,
            "router_errors": self.router_errors,
            "status": self.supervisor.status(),
            "policy": {"kind": policy.get("kind"), "name": policy.get("name"),
                       "config_version": policy.get("config_version")},
            "variants": self.variant_table(),
            "series": self.series(),
            "decisions_total": len(decisions),
            "decisions": history(decisions, self.max_decisions),
            "shadow": self.shadow_view(),
            "arms": arm_shares(policy),
            "ab": self.ab_view(),
            "drift": drift_view(self.supervisor),
        })
