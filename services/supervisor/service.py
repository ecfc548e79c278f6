"""The supervisor's control loop: read, evaluate, act, explain, persist — once per interval.

One check (:meth:`Supervisor.check`):

1. **Read** the routing config in force (``GET /admin/routing``: its version, the candidate's
   model version, the weights) and the router's cumulative per-variant counters (its
   ``/metrics``, or a Prometheus server), as one :class:`VariantSnapshot` per variant.
2. **Windows**: the difference with the previous check's snapshots (``windows.window_between``).
   No previous snapshot (a restarted supervisor) -> this check is the baseline and decides
   nothing. The router unreachable or its metrics unreadable -> windows that carry the reason,
   so the analysis holds and the record says why.
3. **Evaluate** (``analysis.evaluate``): decision + next state.
4. **Act** (``actions.apply_action``): write the routing the action asks for with ``If-Match``.
   A 412 (someone changed the routing) or a failed write leaves the analysis state and the
   previous snapshots as they were (the next check judges both intervals together) and turns the
   recorded action into a hold that names the conflict.
5. **Explain**: the record (the decision's JSON + ``apply`` + ``observed``) is kept in memory
   (``GET /decisions``), logged as one JSON line, produced to Kafka when configured, and the
   state file (rollout state, known routing, recent decisions) is rewritten atomically.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import orjson

from services.core.files import atomic_write

from . import metrics, scrape
from .actions import WRITES, ApplyResult, RouterAdmin, RouterUnavailable, Routing, RoutingStore, apply_action
from .analysis import INITIAL_MODE, candidate_weight, evaluate, resume
from .decisions import Action, Decision, RolloutState
from .inputs import POOLED, InputDrift, InputsUnavailable, Reference, drift_from_sample, fetch_inputs, finite
from .rules import Evidence, json_safe
from .settings import SupervisorSettings
from .spec import RolloutSpec, parse_spec
from .windows import VariantSnapshot, VariantWindow, window_between

log = logging.getLogger("services.supervisor")
STATE_FORMAT = 1


UNSUPPORTED_METRICS: dict[str, str] = {}
"""Rule metrics the service cannot feed -> why; such rules are dropped at load, logged, and listed
in /status and in every decision record (``skipped_rules``). None today: input_drift reads the
router's input tap, and is left out per check (with the reason) only while the tap is off."""
TAP_OFF = ("the router's input tap is off (ROUTER_INPUT_TAP_ROWS=0), so there are no live inputs to compare "
           "with the training bins: the rule is left out rather than holding every rollout as inconclusive")


def load_spec(path: Path, interval_s: float | None = None) -> tuple[RolloutSpec, list[dict[str, str]]]:
    """The rollout spec of a YAML file, and the rules left out (see UNSUPPORTED_METRICS).
    `interval_s` (a setting) replaces the spec's interval."""
    import yaml

    raw = yaml.safe_load(Path(path).read_text())
    parse_spec(raw, str(path))  # the file as written must be valid
    if interval_s is not None:
        raw["interval_s"] = interval_s
        stale = raw.get("stale_after_s")
        if stale is not None and stale < interval_s:
            raw["stale_after_s"] = 2 * interval_s
    skipped = [{"rule": r.get("name") or r["metric"], "metric": r["metric"], "why": UNSUPPORTED_METRICS[r["metric"]]}
               for r in raw.get("rules", []) if r.get("metric") in UNSUPPORTED_METRICS]
    raw["rules"] = [r for r in raw.get("rules", []) if r.get("metric") not in UNSUPPORTED_METRICS]
    return parse_spec(raw, str(path)), skipped


def figures(window: VariantWindow | None) -> dict[str, Any] | None:
    """The per-variant numbers a person looks at first."""
    if window is None:
        return None
    out: dict[str, Any] = {"requests": window.requests, "errors": window.errors, "error_rate": window.error_rate,
                           "p99_s": window.p99_s, "version": window.version, "span_s": window.duration_s,
                           "problem": window.problem}
    if window.feedback is not None:
        out.update(labelled=window.feedback.labelled, accuracy=window.feedback.accuracy)
    if window.rewards is not None:
        out.update(rewards=window.rewards.count, mean_reward=window.rewards.mean)
    if window.shadow is not None and window.shadow.compared:
        out.update(shadow_compared=window.shadow.compared, shadow_agreement=window.shadow.agreement)
    if window.predicted_labels:
        out["predicted_labels"] = window.predicted_labels
    return out


class Supervisor:
    """One rollout under supervision. Not thread-safe: owned by the event loop."""

    def __init__(self, settings: SupervisorSettings, spec: RolloutSpec, *,
                 clock: Callable[[], float] = time.time, emitter: Any = None,
                 skipped_rules: list[dict[str, str]] | None = None) -> None:
        self.settings = settings
        self.spec = spec
        self.skipped_rules = list(skipped_rules or [])
        self._static_skipped = list(self.skipped_rules)
        self._drift_rules = [r for r in spec.rules if r.metric == "input_drift"]
        self._spec_without_drift = spec.model_copy(update={"rules": [r for r in spec.rules
                                                                     if r.metric != "input_drift"]})
        self._reference = Reference(settings.model_repository)
        self.drift: InputDrift | None = None
        self.drift_report = None
        """The pooled input drift report of the last check (the dashboard's drift panel)."""
        self.clock = clock
        self.emitter = emitter
        self.state: RolloutState | None = None
        self.known: Routing | None = None
        self.in_force: Routing | None = None
        self.router_error: str | None = None
        self.decisions: deque[dict[str, Any]] = deque(maxlen=settings.max_decisions)
        self.prev: dict[str, VariantSnapshot] | None = None
        self.interval: dict[str, VariantWindow] | None = None
        self.last_check_at: float | None = None
        self.next_check_at: float | None = None
        self.resumed = False
        self._client: httpx.AsyncClient | None = None
        self._prometheus: httpx.AsyncClient | None = None
        self._store: RoutingStore | None = None
        """Kubernetes mode: the routing ConfigMap (None: the router's admin API is the store)."""
        self._task: asyncio.Task | None = None
        self._stopping = asyncio.Event()
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()

    # -- persistence ------------------------------------------------------------------------------

    def load(self) -> None:
        """Resume from the state file when it belongs to this rollout."""
        path = self.settings.state_file
        if path is None or not path.exists():
            return
        try:
            raw = orjson.loads(path.read_bytes())
            if raw.get("format") != STATE_FORMAT:
                raise ValueError(f"format {raw.get('format')!r} is not {STATE_FORMAT}")
            if raw.get("rollout") != self.spec.name:
                log.warning("state file belongs to another rollout; starting fresh",
                            extra={"path": str(path), "found": raw.get("rollout"), "rollout": self.spec.name})
                return
            self.state = RolloutState.from_dict(raw["state"]) if raw.get("state") else None
            known = raw.get("known_routing")
            self.known = Routing(known["version"], known["config"]) if known else None
            self.decisions.extend(raw.get("decisions") or [])
            self.resumed = self.state is not None
        except Exception as exc:
            aside = path.with_name(f"{path.name}.corrupt-{int(self.clock())}")
            with contextlib.suppress(OSError):
                path.rename(aside)
            log.error("state file unreadable; moved aside, starting fresh",
                      extra={"path": str(path), "moved_to": str(aside), "error": repr(exc)})
            self.state, self.known = None, None
            self.decisions.clear()
            return
        log.info("resumed from the state file", extra={
            "path": str(path), "phase": self.state.phase if self.state else None,
            "step_index": self.state.step_index if self.state else None, "decisions": len(self.decisions)})

    def save(self) -> None:
        path = self.settings.state_file
        if path is None:
            return
        data = {
            "format": STATE_FORMAT,
            "saved_at": self.clock(),
            "rollout": self.spec.name,
            "state": self.state.to_dict() if self.state is not None else None,
            "known_routing": {"version": self.known.version, "config": self.known.config} if self.known else None,
            "decisions": list(self.decisions),
        }
        try:
            atomic_write(path, orjson.dumps(json_safe(data)))
        except OSError as exc:
            log.error("state file not written", extra={"path": str(path), "error": str(exc)})

    # -- lifecycle --------------------------------------------------------------------------------

    async def start(self) -> None:
        """on_start hook: open the clients, resume, start the loop (the first check runs at once)."""
        timeout = httpx.Timeout(self.settings.request_timeout_s)
        self._client = httpx.AsyncClient(base_url=self.settings.router_url.rstrip("/"), timeout=timeout)
        if self.settings.prometheus_url:
            self._prometheus = httpx.AsyncClient(base_url=self.settings.prometheus_url.rstrip("/"), timeout=timeout)
        if self.settings.actuator == "configmap":
            from . import kube

            namespace = self.settings.routing_configmap_namespace or kube.in_cluster_namespace()
            if namespace is None:
                raise RuntimeError("actuator 'configmap': no namespace (set SUPERVISOR_ROUTING_CONFIGMAP_NAMESPACE "
                                   "outside a pod)")
            api = kube.api_client(self.settings.kubeconfig)
            assert self.settings.routing_configmap is not None  # the settings validator requires it
            self._store = kube.ConfigMapRouting(api, namespace, self.settings.routing_configmap,
                                                self.settings.routing_configmap_key, self.settings.request_timeout_s)
        if self.emitter is not None:
            self.emitter.start()
        self.load()
        self._task = asyncio.create_task(self._run(), name="supervisor-loop")

    async def stop(self) -> None:
        """on_stop hook: finish the check in progress, persist, close."""
        self._stopping.set()
        self._wake.set()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(self._task, timeout=self.settings.shutdown_grace_s)
        self.save()
        for client in (self._client, self._prometheus):
            if client is not None:
                await client.aclose()
        if self.emitter is not None:
            await asyncio.to_thread(self.emitter.close, 2.0)

    async def _run(self) -> None:
        while not self._stopping.is_set():
            started = self.clock()
            try:
                await self.check()
            except Exception as exc:  # a bug in one check must not end supervision
                log.error("check failed", exc_info=exc)
            self.next_check_at = started + self.spec.interval_s
            delay = max(0.0, self.next_check_at - self.clock())
            self._wake.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=delay)

    # -- reading ----------------------------------------------------------------------------------

    async def _exposition(self) -> tuple[scrape.Exposition, float]:
        """The router's series and when they were observed."""
        if self._prometheus is None:
            assert self._client is not None
            try:
                r = await self._client.get("/metrics")
            except httpx.HTTPError as exc:
                raise scrape.ScrapeError(f"GET /metrics failed: {exc!r}") from exc
            if r.status_code != 200:
                raise scrape.ScrapeError(f"GET /metrics answered {r.status_code}")
            return scrape.parse_exposition(r.text), self.clock()
        results: dict[str, list] = {}
        queries = {name: f"sum by (variant, status, le, label, kind) ({name})" for name in scrape.SERIES}
        queries["__scraped_at"] = f"max(timestamp({scrape.CONFIG_VERSION}))"
        for name, query in queries.items():
            try:
                r = await self._prometheus.get("/api/v1/query", params={"query": query})
                body = r.json()
            except (httpx.HTTPError, ValueError) as exc:
                raise scrape.ScrapeError(f"Prometheus query {query!r} failed: {exc!r}") from exc
            if r.status_code != 200 or body.get("status") != "success":
                raise scrape.ScrapeError(f"Prometheus query {query!r} answered {r.status_code}: {body.get('error')}")
            results[name] = body["data"]["result"]
        scraped_at = scrape.newest_sample_time(results.pop("__scraped_at"))
        if scraped_at is None:
            raise scrape.ScrapeError("Prometheus has no router_config_version series: is it scraping the router?")
        return scrape.exposition_from_prometheus(results), scraped_at

    def _problem_windows(self, now: float, why: str, version: Any) -> Evidence:
        def window(role: str, variant: str) -> VariantWindow:
            return VariantWindow(variant=variant, start=now, end=now, observed_at=now, requests=None, errors=None,
                                 version=version if role == "candidate" else None, problem=why)
        return Evidence(window("stable", self.spec.stable), window("candidate", self.spec.candidate))

    def _known_version(self) -> Any:
        if self.in_force is not None:
            v = self.in_force.variant_version(self.spec.candidate)
            if v is not None:
                return v
        if self.state is not None:
            return self.state.candidate_version
        return self.spec.candidate_version

    # -- one check --------------------------------------------------------------------------------

    async def check(self) -> dict[str, Any] | None:
        """Run one check now; returns its record (None for a baseline check)."""
        async with self._lock:
            return await self._check()

    async def _check(self) -> dict[str, Any] | None:
        assert self._client is not None
        router = RouterAdmin(self._client, self.settings.token)
        admin: RoutingStore = self._store or router
        now = self.clock()
        self.last_check_at = now
        rollout = self.spec.name
        problem = None
        routing: Routing | None = None
        try:
            routing = await admin.read()
            expo, observed = await self._exposition()
        except (RouterUnavailable, scrape.ScrapeError) as exc:
            problem = str(exc)
        self.router_error = problem
        if routing is not None:
            self.in_force = routing
            if self.known is None:
                self.known = routing  # the first routing seen is the one the supervisor starts from
            weights = routing.weights()
            if weights is not None and self.spec.candidate in weights:
                metrics.CANDIDATE_WEIGHT.labels(rollout).set(weights[self.spec.candidate])
        version = self._known_version()

        snaps: dict[str, VariantSnapshot] | None = None
        if problem is None:
            try:
                snaps = {
                    role: scrape.snapshot(expo, variant, observed, version=routing.variant_version(variant))
                    for role, variant in (("stable", self.spec.stable), ("candidate", self.spec.candidate))
                }
            except (ValueError, TypeError) as exc:
                problem = f"the router's metrics could not be read as per-variant counters: {exc}"

        if problem is not None:
            metrics.CHECKS.labels(rollout, "router_unavailable").inc()
            if self.state is None:
                return self._record(self._not_started(now, problem), ApplyResult(
                    "not_needed", "nothing is written while the router is unavailable"), routing)
            evidence = self._problem_windows(now, f"router unavailable or its metrics unreadable — {problem}",
                                             version)
        elif self.prev is None and self.state is not None:
            # A restarted supervisor: this reading is the baseline of the next window.
            self.prev = snaps
            metrics.CHECKS.labels(rollout, "baseline").inc()
            log.info("baseline snapshot taken", extra={"rollout": rollout, "step_index": self.state.step_index})
            return None
        elif self.prev is None:
            evidence = self._problem_windows(now, "first reading: no window yet", version)
        else:
            assert snaps is not None
            stable = window_between(self.prev["stable"], snaps["stable"])
            candidate = window_between(self.prev["candidate"], snaps["candidate"])
            evidence = Evidence(stable, candidate)
            self.interval = {"stable": stable, "candidate": candidate}

        spec = self.spec
        if routing is not None and spec.kind == "ab-test" and problem is None:
            evidence = replace(evidence, **await self._read_ab(routing))
        if routing is not None:
            self.drift = await self._read_drift(routing, now)
            self.drift_report = self.drift.pooled
            evidence = replace(evidence, drift=self.drift.pooled)
            if not self.drift.enabled and self._drift_rules:
                spec = self._spec_without_drift
        tap_off = self.drift is not None and not self.drift.enabled
        self.skipped_rules = self._static_skipped + (
            [{"rule": r.rule_name, "metric": r.metric, "why": TAP_OFF} for r in self._drift_rules] if tap_off else [])
        result = evaluate(spec, self.state, evidence, now)
        decision, next_state = result.decision, result.state
        action = decision.action
        if action.kind in WRITES and action.weights is not None:
            if problem is not None or self.known is None:
                applied = ApplyResult("error", f"not written: the router is unavailable — {problem}")
            else:
                applied = await apply_action(admin, action, self.spec, self.known)
                if self._store is not None and applied.status == "applied" and applied.routing_after is not None:
                    from .kube import push_to_router

                    applied.router_push = await push_to_router(router, applied.routing_after.config)
        else:
            applied = ApplyResult("not_needed", f"{action.kind}: nothing to write",
                                  weights_in_force=routing.weights() if routing else None)

        if applied.status in ("applied", "unchanged") or applied.status == "not_needed":
            if applied.routing_after is not None:
                self.known = applied.routing_after
                self.in_force = applied.routing_after
            self.state = next_state
            if snaps is not None:
                self.prev = snaps
            outcome = "evaluated" if problem is None else "router_unavailable"
        else:
            # Not applied: the analysis state and the baseline stay, the record says hold and why.
            if applied.status == "conflict" and applied.routing_after is not None:
                self.known = applied.routing_after
                self.in_force = applied.routing_after
            if self.state is not None:
                self.state = replace(self.state, checks=decision.check)  # check numbers never repeat
            outcome = "conflict" if applied.status == "conflict" else "apply_failed"
            what = "conflict" if applied.status == "conflict" else "write failed"
            decision = replace(
                decision, action=Action("hold"), phase=self.state.phase if self.state else "running",
                explanation=(f"{decision.explanation} NOT APPLIED ({what}): {applied.detail}. Holding; the "
                             "analysis state is unchanged and the next check judges this interval again."),
            )
        if problem is None:
            metrics.CHECKS.labels(rollout, outcome).inc()
        weights = self.in_force.weights() if self.in_force is not None else None
        if weights is not None and self.spec.candidate in weights:
            metrics.CANDIDATE_WEIGHT.labels(rollout).set(weights[self.spec.candidate])
        if self.state is not None:
            metrics.STEP_INDEX.labels(rollout).set(self.state.step_index)
        record = self._record(decision, applied, routing, intended=action if decision.action is not action else None)
        return record

    async def _read_ab(self, routing: Routing) -> dict[str, Any]:
        """The router's A/B report (`GET /experiments/<config name>`) for the ab_verdict rule; on
        failure none, so the rule is inconclusive (and the reason logged)."""
        assert self._client is not None
        name = routing.config.get("name")
        try:
            r = await self._client.get(f"/experiments/{name}")
            report = r.json().get("report") if r.status_code == 200 else None
        except (httpx.HTTPError, ValueError, AttributeError) as exc:
            log.warning("A/B report unreadable", extra={"experiment": name, "error": repr(exc)})
            return {}
        if not isinstance(report, dict):
            log.warning("A/B report missing", extra={"experiment": name, "status": r.status_code})
            return {}
        return {"ab_report": report, "ab_observed_at": self.clock()}

    async def _read_drift(self, routing: Routing, now: float) -> InputDrift:
        """The router's input tap against the candidate's training bins; the gauges set."""
        try:
            sample = await fetch_inputs(self._client, self.settings.token())
        except InputsUnavailable as exc:
            return InputDrift(enabled=True, problem=str(exc))
        if not sample.get("enabled"):
            return InputDrift(enabled=False, problem=TAP_OFF)
        variant = (routing.config.get("variants") or {}).get(self.spec.candidate) or {}
        model = variant.get("model") or routing.config.get("model")
        version = variant.get("version")
        if not isinstance(model, str) or not isinstance(version, int):
            return InputDrift(enabled=True, problem=f"the candidate's model and version are not in the routing config "
                                                    f"(model {model!r}, version {version!r})")
        try:
            card, reference = await asyncio.to_thread(self._reference.get, model, version)
        except Exception as exc:  # a missing or invalid card: no reference, say so
            return InputDrift(enabled=True, problem=f"no training reference for {model} v{version}: {exc}")
        observed = float(sample.get("observed_at") or now)
        drift = await asyncio.to_thread(drift_from_sample, sample, card, reference, observed_at=observed)
        rollout = self.spec.name
        for name, rows in drift.rows.items():
            metrics.INPUT_ROWS.labels(rollout, name).set(rows)
        reports = {**drift.by_variant, **({POOLED: drift.pooled} if drift.pooled is not None else {})}
        for name, report in reports.items():
            metrics.INPUT_PSI.labels(rollout, name, "overall").set(report.overall_psi)
            for f in report.features:
                metrics.INPUT_PSI.labels(rollout, name, f.name).set(f.psi)
                if finite(f.ks_statistic):
                    metrics.INPUT_KS.labels(rollout, name, f.name).set(f.ks_statistic)
        return drift

    def _not_started(self, now: float, problem: str) -> Decision:
        return Decision(
            rollout=self.spec.name, kind=self.spec.kind, mode=INITIAL_MODE[self.spec.kind], check=0, at=now,
            next_check_at=now + self.spec.interval_s, candidate_version=self._known_version(), step_index=0,
            candidate_weight=None, verdict="inconclusive", action=Action("hold"),
            explanation=(f"Not started: the router is unavailable or its metrics unreadable — {problem}. Nothing is "
                         "changed until it answers."),
        )

    def _record(self, decision: Decision, applied: ApplyResult, routing: Routing | None,
                intended: Action | None = None) -> dict[str, Any]:
        record = decision.to_dict()
        record["apply"] = applied.to_dict()
        if self.skipped_rules:
            record["skipped_rules"] = self.skipped_rules
        if intended is not None:
            record["intended_action"] = intended.to_dict()
        record["observed"] = json_safe({
            "router_error": self.router_error,
            "config_version": routing.version if routing else None,
            "weights_in_force": routing.weights() if routing else None,
            "interval": {role: figures(w) for role, w in (self.interval or {}).items()},
            "input_drift": None if self.drift is None else {
                "tap": self.drift.enabled, "rows": self.drift.rows, "problem": self.drift.problem,
                "overall_psi": self.drift.pooled.overall_psi if self.drift.pooled else None,
                "feature": self.drift.pooled.overall_feature if self.drift.pooled else None},
        })
        rollout = self.spec.name
        metrics.DECISIONS.labels(rollout, decision.action.kind, decision.verdict).inc()
        for rule in decision.rules:
            metrics.RULE_VERDICTS.labels(rollout, rule.rule, rule.verdict).inc()
        for seq in decision.sequential:
            if seq.statistic is not None and math.isfinite(seq.statistic):
                metrics.SEQUENTIAL.labels(rollout, seq.test).set(seq.statistic)
        self.decisions.append(record)
        log.info("supervisor decision", extra={
            "rollout": rollout, "check": decision.check, "verdict": decision.verdict,
            "action": decision.action.kind, "apply": applied.status, "explanation": decision.explanation,
            "record": record})
        if self.emitter is not None:
            self.emitter.offer(self.settings.decisions_topic, rollout.encode(), record)
        self.save()
        return record

    # -- what the API shows -------------------------------------------------------------------------

    def resume(self) -> dict[str, Any]:
        """A human resumes a paused rollout (POST /resume)."""
        if self.state is None:
            raise ValueError("the rollout has not started")
        self.state = resume(self.state, self.clock())
        self.save()
        return self.status()

    def status(self) -> dict[str, Any]:
        state, spec = self.state, self.spec
        last = self.decisions[-1] if self.decisions else None
        weights = self.in_force.weights() if self.in_force else None
        step_window = None
        if state is not None and state.window is not None:
            step_window = {"stable": figures(state.window[0]), "candidate": figures(state.window[1])}
        return json_safe({
            "rollout": spec.name,
            "kind": spec.kind,
            "stable": spec.stable,
            "candidate": spec.candidate,
            "steps": list(spec.steps),
            "interval_s": spec.interval_s,
            "bake_s": spec.bake_s,
            "router": self.settings.router_url,
            "actuator": self.settings.actuator,
            "routing_store": self._store.where if self._store is not None else "PUT /admin/routing",
            "router_error": self.router_error,
            "phase": state.phase if state else "not_started",
            "mode": state.mode if state else None,
            "candidate_version": state.candidate_version if state else None,
            "step_index": state.step_index if state else None,
            "step": spec.steps[min(state.step_index, len(spec.steps) - 1)] if state else None,
            "candidate_weight": candidate_weight(spec, state) if state else None,
            "weights_in_force": weights,
            "config_version": self.in_force.version if self.in_force else None,
            "known_config_version": self.known.version if self.known else None,
            "failures": state.failures if state else 0,
            "failure_limit": spec.failure_limit,
            "inconclusive_streak": state.inconclusive_streak if state else 0,
            "checks": state.checks if state else 0,
            "restarts": state.restarts if state else 0,
            "resumed_from_state_file": self.resumed,
            "last_check_at": self.last_check_at,
            "next_check_at": self.next_check_at,
            "last_decision": None if last is None else {
                k: last.get(k) for k in ("check", "at", "verdict", "action", "explanation", "apply")},
            "figures": {
                "interval": {role: figures(w) for role, w in (self.interval or {}).items()},
                "step": step_window,
            },
            "sequential": [t.result().to_dict() for t in state.sequential.values()] if state else [],
            "history": list(state.history) if state else [],
            "skipped_rules": self.skipped_rules,
        })
