"""Applying a decision's action to the router, through its admin API, never over a human's edit.

    GET /admin/routing                       -> {"version": 7, "config": {...canonical...}, ...}
    PUT /admin/routing  If-Match: 7          -> 200 {"version": 8, ...} | 412 (someone changed it)

:func:`routing_for` is the pure part: the routing config an action asks for, derived from the
config in force (only the policy's weights, and on promotion the fallback, change; every other
key is kept as it is). :class:`RouterAdmin` is the HTTP part, :func:`apply_action` joins them.
Any :class:`RoutingStore` can be written: the router's admin API here, or the router's routing
ConfigMap through the Kubernetes API server (``kube.ConfigMapRouting``: the resourceVersion is the
If-Match, a 409 the 412).

**Concurrent edits.** The supervisor writes with ``If-Match: <the version it last accepted>``:
the version it read on its first check, wrote itself, or saw in a recorded conflict. A human who
changed the routing since (``PUT /admin/routing`` or the file) moves the router's version on, so
the next write gets **412**: the supervisor re-reads, records the conflict (both versions, the
weights in force) in the decision, holds, and adopts the new version as the one it knows. It
never overwrites an edit it has not reported; its next action (a check later) writes over the
re-read version, so what it writes is always based on what it has shown.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import httpx

from .decisions import Action
from .spec import RolloutSpec

WRITES = ("start", "restart", "step", "promote", "promote_shadow", "rollback", "conclude")
"""Action kinds that change the routing (hold, pause and none change nothing)."""

ApplyStatus = Literal["not_needed", "unchanged", "applied", "conflict", "error"]


class RouterUnavailable(Exception):
    """The router did not answer, or answered with an error; the message says which."""


@dataclass(frozen=True)
class Routing:
    """The routing config in force and its version."""

    version: int | str
    """The router's config version, or a ConfigMap's resourceVersion (opaque, compared for equality)."""
    config: dict[str, Any]

    def weights(self) -> dict[str, float] | None:
        policy = self.config.get("policy") or {}
        if policy.get("kind") != "canary":
            return None
        weights = (policy.get("params") or {}).get("weights")
        return {k: float(v) for k, v in weights.items()} if isinstance(weights, dict) else None

    def variant_version(self, variant: str) -> int | str | None:
        v = (self.config.get("variants") or {}).get(variant) or {}
        return v.get("version")


@dataclass(frozen=True)
class WriteOutcome:
    """What a store answered to a conditional write."""

    status: Literal["applied", "conflict", "error"]
    detail: str
    routing: Routing | None = None
    """The routing written (applied)."""


class RoutingStore(Protocol):
    """Where the routing lives: read it with its version, write it only over that version."""

    where: str
    """For messages: "PUT /admin/routing", "ConfigMap ns/name"."""

    async def read(self) -> Routing:
        """The routing in force; raises RouterUnavailable."""

    async def put(self, config: dict[str, Any], if_match: int | str) -> WriteOutcome:
        """Write `config` unless the version moved on since `if_match`; raises RouterUnavailable."""


@dataclass
class ApplyResult:
    """What became of an action: recorded beside the decision (``apply`` in the record)."""

    status: ApplyStatus
    detail: str
    if_match: int | str | None = None
    version_before: int | str | None = None
    version_after: int | str | None = None
    weights_wanted: dict[str, float] | None = None
    weights_in_force: dict[str, float] | None = None
    conflict: dict[str, Any] | None = field(default=None)
    routing_after: Routing | None = field(default=None, repr=False)
    """The routing the supervisor knows after this: written, or re-read on a conflict."""
    router_push: dict[str, Any] | None = None
    """Kubernetes mode: what became of pushing the ConfigMap's new routing to the router at once."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "status": self.status, "detail": self.detail, "if_match": self.if_match,
            "version_before": self.version_before, "version_after": self.version_after,
            "weights_wanted": self.weights_wanted, "weights_in_force": self.weights_in_force,
            "conflict": self.conflict,
            **({"router_push": self.router_push} if self.router_push is not None else {}),
        }


def _same_weights(a: dict[str, float] | None, b: dict[str, float] | None) -> bool:
    if a is None or b is None:
        return False
    keys = set(a) | set(b)
    return all(abs(a.get(k, 0.0) - b.get(k, 0.0)) < 1e-9 for k in keys)


def routing_for(action: Action, spec: RolloutSpec, current: dict[str, Any]) -> dict[str, Any] | None:
    """The routing config the action asks for, derived from `current`; None if it changes nothing.

    Canary actions set ``policy: {kind: canary, params: {weights: {stable: 100 - w, candidate: w}}}``
    keeping the ``hash_salt`` (users stay sticky) and any other variant at weight 0. A promotion
    also makes the candidate the ``fallback`` (it is the stable now); a start, restart or rollback
    puts the fallback back on the stable if a promotion had moved it. A shadow action mirrors the
    candidate behind the stable.
    """
    if action.kind not in WRITES or action.weights is None:
        return None
    new = copy.deepcopy(current)
    policy = new.get("policy") or {}
    if action.policy == "shadow":
        new["policy"] = {"kind": "shadow", "params": {"primary": spec.stable, "shadows": [spec.candidate]}}
    else:
        params = dict(policy.get("params") or {}) if policy.get("kind") == "canary" else {}
        weights = {name: 0.0 for name in (new.get("variants") or {})}
        weights.update({k: float(v) for k, v in action.weights.items()})
        params["weights"] = weights
        params = {k: v for k, v in params.items() if k in ("weights", "hash_salt")}
        new["policy"] = {"kind": "canary", "params": params}
    if action.kind in ("promote", "conclude") and action.new_stable:
        new["fallback"] = action.new_stable
    elif action.kind in ("start", "restart", "rollback") and new.get("fallback") == spec.candidate:
        new["fallback"] = spec.stable
    return None if new == current else new


class RouterAdmin:
    """The router's admin API over HTTP (bearer token, versions, If-Match)."""

    where = "PUT /admin/routing"

    def __init__(self, client: httpx.AsyncClient, token: Any) -> None:
        """`token` is a callable returning the token in force (re-read per call) or None."""
        self._client = client
        self._token = token

    def _headers(self) -> dict[str, str]:
        token = self._token()
        return {"Authorization": f"Bearer {token}"} if token else {}

    async def read(self) -> Routing:
        try:
            r = await self._client.get("/admin/routing", headers=self._headers())
        except httpx.HTTPError as exc:
            raise RouterUnavailable(f"GET /admin/routing failed: {exc!r}") from exc
        if r.status_code != 200:
            raise RouterUnavailable(f"GET /admin/routing answered {r.status_code}: {_error_text(r)}")
        body = r.json()
        return Routing(int(body["version"]), body["config"])

    async def write(self, config: dict[str, Any], if_match: int | str) -> httpx.Response:
        try:
            return await self._client.put("/admin/routing", json=config,
                                          headers={**self._headers(), "If-Match": str(if_match)})
        except httpx.HTTPError as exc:
            raise RouterUnavailable(f"PUT /admin/routing failed: {exc!r}") from exc

    async def put(self, config: dict[str, Any], if_match: int | str) -> WriteOutcome:
        r = await self.write(config, if_match)
        if r.status_code == 200:
            body = r.json()
            return WriteOutcome("applied", f"routing version {if_match} -> {body['version']}",
                                Routing(int(body["version"]), body.get("config") or config))
        if r.status_code == 412:
            return WriteOutcome("conflict", f"412: {_error_text(r)}")
        return WriteOutcome("error", f"PUT /admin/routing answered {r.status_code}: {_error_text(r)}")


def _error_text(r: httpx.Response) -> str:
    try:
        return str(r.json().get("error", r.text))[:300]
    except ValueError:
        return r.text[:300]


async def apply_action(admin: RoutingStore, action: Action, spec: RolloutSpec, known: Routing) -> ApplyResult:
    """Apply `action` over `known` (the routing the supervisor last accepted; its version is the
    If-Match). Never raises for the store's answers: the result says what happened."""
    wanted = routing_for(action, spec, known.config)
    weights_wanted = dict(action.weights) if action.weights is not None else None
    if action.kind not in WRITES or action.weights is None:
        return ApplyResult("not_needed", f"{action.kind}: nothing to write", weights_in_force=known.weights())
    if wanted is None:
        return ApplyResult("unchanged", "the routing in force already is what the action asks for",
                           if_match=known.version, version_before=known.version, version_after=known.version,
                           weights_wanted=weights_wanted, weights_in_force=known.weights())
    try:
        out = await admin.put(wanted, known.version)
    except RouterUnavailable as exc:
        return ApplyResult("error", str(exc), if_match=known.version, version_before=known.version,
                           weights_wanted=weights_wanted)
    if out.status == "applied" and out.routing is not None:
        return ApplyResult("applied", out.detail,
                           if_match=known.version, version_before=known.version, version_after=out.routing.version,
                           weights_wanted=weights_wanted, weights_in_force=weights_wanted,
                           routing_after=out.routing)
    if out.status == "conflict":
        code = out.detail.split(":", 1)[0]
        try:
            now = await admin.read()
        except RouterUnavailable as exc:
            return ApplyResult("conflict", f"{code}: the routing changed since version {known.version}; re-reading "
                               f"it failed: {exc}", if_match=known.version, version_before=known.version,
                               weights_wanted=weights_wanted,
                               conflict={"expected_version": known.version, "version_in_force": None})
        return ApplyResult(
            "conflict",
            f"{code}: someone changed the routing since version {known.version} (now version {now.version}, "
            f"weights {now.weights()}); not overwritten — holding and re-reading; the next action builds on "
            f"version {now.version}",
            if_match=known.version, version_before=known.version, version_after=now.version,
            weights_wanted=weights_wanted, weights_in_force=now.weights(),
            conflict={"expected_version": known.version, "version_in_force": now.version,
                      "weights_expected": known.weights(), "weights_in_force": now.weights(),
                      "config_in_force": now.config, "where": admin.where},
            routing_after=now,
        )
    return ApplyResult("error", out.detail, if_match=known.version, version_before=known.version,
                       weights_wanted=weights_wanted)
