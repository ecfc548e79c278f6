"""The one inference path, for every protocol: decide, call, fail over, settle.

    codec (REST, gRPC ...)                         dispatcher
    wire bytes -> Request ----------------------->  decide:  model / version routed here? policy.choose
                                                    call:    upstream.call(chosen); on failure (or while
                                                             the chosen one is ejected) the fallback, once
                                                    settle:  metrics, outlier detector, predicted labels,
                                                             feedback table (every answered request)
    wire bytes <- (variant, answer, latency) <----
    ... response sent ...  dispatcher.mirror(...)   shadow copies, off the response path

A codec turns its wire format into a `Request` (its own subclass, carrying what its `Upstream`
needs to call a variant) and the result back into its wire format. The `Upstream` is the codec's
half of a call: `call` returns the variant's answer — a client error included (HTTP 4xx,
INVALID_ARGUMENT ...: the caller's mistake, passed through, never a variant failure) — or raises
`UpstreamError` when the variant could not answer (connect, timeout, reset, 5xx / UNAVAILABLE ...).
The dispatcher's own refusals are `ServingError`s; the codec puts them on the wire through
`services.core.http.error_response` or `services.core.grpc_status.abort`.

Policy behaviour reaches this module only through `RoutingPolicy`: `choose`, `on_result`,
`takes_feedback`, `on_failure`, `mirrors`.

Every answered request is recorded for outcome feedback (`feedback.PendingStore`) with the labels
its answer predicted — under every policy, since feedback feeds the per-variant quality metrics
(`quality.py`) as well as a learning policy. A learning policy's request answered by the fallback
after its chosen variant failed is closed instead (its outcome is not the chosen variant's); under
the other policies it is recorded for the variant that answered.
"""

from __future__ import annotations

import itertools
import logging
import re
import secrets
import time
from collections.abc import Callable
from typing import Any, Protocol

from services.core.errors import InvalidInput, NotFound, ServingError
from services.router import metrics
from services.router.ejection import OutlierDetector
from services.router.errors import BadGateway
from services.router.feedback import PendingStore
from services.router.policies import RouteRequest, UnknownVariantError
from services.router.quality import Quality
from services.router.shadow import Outputs, ShadowMirror
from services.router.table import RouteTable, Variant
from services.router.tap import InputTap
from services.router.tokens import TokenCodec
from services.router.upstream import UpstreamError

log = logging.getLogger("services.router")

_REQUEST_ID_OK = re.compile(r"^[\x21-\x7e]{1,128}$")


class GeneratedId(str):
    """A request id the router made up (the client sent none): the answer carries the token instead."""

    __slots__ = ()


class Request:
    """One inference request as the dispatcher sees it. Codecs subclass it to carry their payload."""

    __slots__ = ("model", "version", "request_id", "key", "override", "token")

    def __init__(self, model: str, version: str | None, request_id: str, key: str | None,
                 override: str | None) -> None:
        self.model = model
        self.version = version
        """Version or label named by the client; it pins the variant serving it."""
        self.request_id = request_id
        self.key = key
        """Stickiness key (user or session id), or None."""
        self.override = override
        """Variant forced by the client (override header / metadata), or None."""
        self.token: str | None = None
        """The signed feedback token, once a variant answered (`tokens.py`)."""

    @property
    def reply_id(self) -> str:
        """The request id the answer carries: the client's own, else the feedback token."""
        if self.token is not None and isinstance(self.request_id, GeneratedId):
            return self.token
        return self.request_id


class Answer(Protocol):
    """A variant's answer: its HTTP-equivalent status (< 500) and its body as received."""

    status: int
    body: bytes


class Upstream(Protocol):
    """A codec's way of calling variants."""

    async def call(self, variant: Variant, request: Any) -> Answer:
        """The variant's answer; raises UpstreamError when the variant failed."""

    async def mirror(self, variant: Variant, request: Any, timeout_s: float) -> Answer:
        """The same request sent to a shadow variant (marked as a mirror); raises UpstreamError."""

    def outputs(self, body: bytes) -> Outputs | None:
        """Labels and probabilities of an answer body, for the shadow comparison (None: not comparable)."""


Routed = tuple[Variant, Any, float]
"""(the variant that answered, its answer, the upstream latency in seconds)."""


class Dispatcher:
    """Owns the table in force and the request-time state every codec shares."""

    def __init__(self) -> None:
        self.table: RouteTable | None = None
        self.detector = OutlierDetector(consecutive_failures=5, base_ejection_s=10.0, max_ejection_s=300.0,
                                        on_eject=_on_eject, on_return=_on_return)
        self.pending = PendingStore(ttl_s=3600.0, max_pending=100_000)
        self.mirrors = ShadowMirror(self.detector, queue_size=1000, workers=4, timeout_s=None, sample_rate=1.0)
        self.quality = Quality()
        self.tap = InputTap()
        """Sampled inputs per variant for the supervisor's drift check (off unless configured)."""
        self.mirrors.on_outputs = self._shadow_outputs
        self.dirty = False
        """Something the state file keeps changed since it was last written."""
        self._ids = itertools.count(1)
        self._id_prefix = secrets.token_hex(4)
        self.tokens = TokenCodec([secrets.token_bytes(32)])
        """Signs the feedback tokens; the router installs the replicas' shared key."""
        self.share_failure: Callable[[str, str, int, float | None], None] | None = None
        """With the feedback topic: publishes a learning policy's failed decision (token, chosen
        variant, epoch, failure reward) for every replica to score; None: scored here."""

    # -- config ---------------------------------------------------------------------------------

    def install(self, table: RouteTable) -> None:
        """Make `table` the one in force; reconfigure the detector, feedback table and mirror."""
        config = table.config
        od, fb, sh = config.outlier_detection, config.feedback, config.shadow
        self.detector.reconfigure(consecutive_failures=od.consecutive_failures, base_ejection_s=od.base_ejection_s,
                                  max_ejection_s=od.max_ejection_s, enabled=od.enabled)
        self.pending.reconfigure(fb.ttl_s, fb.max_pending)
        self.mirrors.reconfigure(queue_size=sh.queue_size, workers=sh.workers, timeout_s=sh.timeout_s,
                                 sample_rate=sh.sample_rate)
        previous = self.table
        if previous is not None:
            for name, old in previous.variants.items():
                new = table.variants.get(name)
                if new is None or new.cfg.url != old.cfg.url or new.grpc != old.grpc:
                    self.detector.forget(name)  # a new endpoint starts with a clean record
        self.table = table
        self.dirty = True

    # -- the hot path ---------------------------------------------------------------------------

    def request_id(self, given: str | None) -> str:
        """The client's request id if it is sane (1-128 visible ASCII characters), else a new one."""
        if given and _REQUEST_ID_OK.match(given):
            return given
        return GeneratedId(f"{self._id_prefix}-{next(self._ids):x}")

    async def dispatch(self, table: RouteTable, request: Request, upstream: Upstream) -> Routed:
        """Route one request; raises ServingError when it is refused or no variant answers."""
        started = time.perf_counter()
        rid = request.request_id
        try:
            if table.public_model is not None and request.model != table.public_model:
                raise NotFound(f"model {request.model!r} is not routed here; this router serves "
                               f"{table.public_model!r}", field="model")
            forced = request.override
            if request.version is not None:
                pinned = table.by_version.get(request.version)
                if pinned is None:
                    raise NotFound(f"version {request.version!r} is not routed here; routed versions: "
                                   f"{sorted(table.by_version)} (or omit the version)", field="model_version")
                forced = forced or pinned
            try:
                decision = table.policy.choose(RouteRequest(rid, request.key, forced))
            except UnknownVariantError:
                raise InvalidInput(f"{table.override}: unknown variant {forced!r}; variants: {list(table.variants)}",
                                   field=table.override or "model_version") from None
        except ServingError as exc:
            table.unrouted.request(exc.http_status)
            raise
        chosen = table.variants[decision.variant]
        chosen.metrics.decision(decision.reason)
        fallback = table.fallback
        detector = self.detector
        first = chosen
        if chosen is not fallback and detector.is_ejected(chosen.name) and not detector.is_ejected(fallback.name):
            metrics.FAILOVER.labels(chosen.name, fallback.name, "ejected").inc()
            first = fallback
        t0 = time.perf_counter()
        try:
            answer = await upstream.call(first, request)
            served: Variant | None = first
            latency = time.perf_counter() - t0
        except UpstreamError as exc:
            served, answer, latency, failures = await self._fail_over(first, fallback, request, upstream, exc)
        if served is not None and (served is chosen or not table.learns):
            self.dirty = True
            labels = None
            if answer.status < 300:
                self.tap.offer(served.name, request)
                outputs = upstream.outputs(answer.body)
                if outputs is not None and outputs[0]:
                    labels = tuple(outputs[0])
                    self.quality.of(served.name).predicted_labels(outputs[0], outputs[1])
            request.token = self.tokens.mint(served.name, table.version, table.epoch, rid, labels)
            self.pending.add(request.token, served.name, request.key, table.epoch, labels, alias=rid)
        elif table.learns:
            self.dirty = True
            request.token = self.tokens.mint("", table.version, table.epoch, rid)  # closed: 409 anywhere
            self._settle_failed(table, chosen.name, rid, request.token)
        table.policy.on_result(decision, rid, served is chosen, latency)
        if served is None:
            table.unrouted.request(BadGateway.http_status)
            table.request_seconds.observe(time.perf_counter() - started)
            raise BadGateway("no variant could answer: " + "; ".join(f"{name}: {why}" for name, why in failures),
                             attempts=[{"variant": name, "error": why} for name, why in failures])
        served.metrics.upstream_seconds.observe(latency)
        detector.success(served.name)
        served.metrics.request(answer.status)
        table.request_seconds.observe(time.perf_counter() - started)
        return served, answer, latency

    async def _fail_over(self, first: Variant, fallback: Variant, request: Request, upstream: Upstream,
                         exc: UpstreamError) -> tuple[Variant | None, Any, float, list[tuple[str, str]]]:
        """`first` failed with `exc`: count it, then try the fallback once (unless it was the fallback)."""
        failures = [_failed(self.detector, first, exc)]
        if first is fallback:
            return None, None, 0.0, failures
        metrics.FAILOVER.labels(first.name, fallback.name, "error").inc()
        t0 = time.perf_counter()
        try:
            answer = await upstream.call(fallback, request)
        except UpstreamError as again:
            failures.append(_failed(self.detector, fallback, again))
            return None, None, 0.0, failures
        return fallback, answer, time.perf_counter() - t0, failures

    def mirror(self, table: RouteTable, request: Request, upstream: Upstream, routed: Routed) -> None:
        """Offer shadow copies of an answered request; call it once the answer has been sent."""
        served, answer, latency = routed
        if table.shadows and answer.status < 400:
            self.mirrors.offer(table.shadows, request, upstream, served.name, answer.body, latency)

    def _shadow_outputs(self, request_id: str, variant: str, labels: list, probabilities: list | None) -> None:
        """A shadow's answer to a mirrored request was compared: count its labels, keep them for feedback."""
        self.quality.of(variant).predicted_labels(labels, probabilities)
        if self.pending.attach_shadow(request_id, variant, tuple(labels)):
            self.dirty = True

    def _settle_failed(self, table: RouteTable, chosen: str, rid: str, token: str) -> None:
        if self.share_failure is not None:  # every replica scores it when it reads it back (feedback_log)
            self.share_failure(token, chosen, table.epoch, table.failure_reward)
            self.pending.settle(rid, f"its variant {chosen!r} failed and the fallback answered")
            return
        try:
            scored = table.policy.on_failure(chosen, table.failure_reward)
        except ValueError as exc:  # a failure reward the policy refuses; the config allowed it
            log.warning("failure reward not recorded", extra={"variant": chosen, "error": str(exc)})
            scored = False
        if scored:
            why = (f"its variant {chosen!r} failed and was scored the failure reward "
                   f"{table.failure_reward:g}; the fallback answered")
        else:
            why = f"its variant {chosen!r} failed and the fallback answered; not an outcome of {chosen!r}"
        for closed in (rid, token):
            self.pending.settle(closed, why)

    # -- housekeeping ---------------------------------------------------------------------------

    def maintain(self) -> None:
        """Expire old decisions and refresh the gauges (called every second)."""
        if self.pending.sweep():
            self.dirty = True
        metrics.PENDING.set(len(self.pending))
        metrics.SHADOW_QUEUE.set(self.mirrors.depth)


def _failed(detector: OutlierDetector, variant: Variant, exc: UpstreamError) -> tuple[str, str]:
    variant.metrics.upstream_error(exc.kind)
    detector.failure(variant.name)
    return variant.name, exc.message


def _on_eject(variant: str, cool_down_s: float) -> None:
    metrics.EJECTIONS.labels(variant).inc()
    metrics.EJECTED.labels(variant).set(1)
    log.warning("variant ejected", extra={"variant": variant, "cool_down_s": cool_down_s})


def _on_return(variant: str) -> None:
    metrics.EJECTED.labels(variant).set(0)
    log.info("variant back in rotation", extra={"variant": variant})
