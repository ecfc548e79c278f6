"""Decisions awaiting feedback: request id -> (variant, key, time), with a TTL.

The A/B and bandit policies learn from outcomes that arrive later (`POST /feedback`). The router
records every decision of such a policy here; feedback looks the request id up (or the latest
request of a key), hands the reward to the policy, and closes the entry so each request is
rewarded at most once.

    unknown id           -> NotFound (404): never routed here, or expired so long ago it is forgotten
    decision too old     -> Gone (410): past `ttl_s`, or evicted early because `max_pending` was reached
    already rewarded     -> Conflict (409), also for a decision closed without feedback (its variant
                            failed and the request was served by the fallback)

Expired ids are remembered (as tombstones, for another TTL and at most `max_pending` of them)
so late feedback gets a 410 that says why, not a puzzling 404. Times are wall-clock seconds so a
restart (the store is persisted in the state file) keeps every deadline.

`apply_feedback` is `POST /feedback`: it validates the body, finds the decision and hands the
reward to the policy in force (`RoutingPolicy.on_reward`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from services.core.errors import Gone, InvalidInput, NotFound
from services.router.errors import Conflict
from services.router.policies import InvalidRewardError, UnknownVariantError
from services.router.table import RouteTable

_FIELDS = frozenset({"request_id", "key", "reward", "outcome"})


@dataclass(slots=True)
class Pending:
    variant: str
    key: str | None
    at: float
    epoch: int
    """The policy generation the decision was made under; feedback for an older one is refused."""


class PendingStore:
    """Not thread-safe: owned by the router's event loop."""

    def __init__(self, ttl_s: float, max_pending: int, clock: Callable[[], float] = time.time) -> None:
        self.ttl_s = ttl_s
        self.max_pending = max_pending
        self._clock = clock
        self._pending: dict[str, Pending] = {}  # insertion order == decision time order
        self._by_key: dict[str, str] = {}  # key -> latest pending request id
        self._tombstones: dict[str, tuple[float, str]] = {}  # id -> (expired at, why)
        self._settled: dict[str, tuple[float, str]] = {}  # id -> (closed at, why): 409, not 404
        self.evicted = 0
        self.expired = 0

    def __len__(self) -> int:
        return len(self._pending)

    def reconfigure(self, ttl_s: float, max_pending: int) -> None:
        self.ttl_s = ttl_s
        self.max_pending = max_pending
        self.sweep()

    def add(self, request_id: str, variant: str, key: str | None, epoch: int) -> None:
        now = self._clock()
        previous = self._pending.pop(request_id, None)  # a reused id: keep the table in time order
        if previous is not None:
            self._drop_key(request_id, previous)
        self._pending[request_id] = Pending(variant, key, now, epoch)
        if key:
            self._by_key[key] = request_id
        if len(self._pending) > self.max_pending:
            oldest = next(iter(self._pending))
            self._expire(oldest, now, f"evicted: more than {self.max_pending} decisions were awaiting feedback")
            self.evicted += 1

    def settle(self, request_id: str, why: str) -> None:
        """Close a decision without feedback: later feedback gets 409 with `why`."""
        entry = self._pending.pop(request_id, None)
        if entry is not None:
            self._drop_key(request_id, entry)
        self._settled[request_id] = (self._clock(), why)

    def get(self, request_id: str | None = None, key: str | None = None) -> tuple[str, Pending]:
        """The pending decision for a request id, or for a key's latest request (left in place:
        `close` it once the reward was accepted, so a rejected reward can be sent again)."""
        now = self._clock()
        if request_id is None:
            if not key:
                raise NotFound("feedback needs a request_id or a key", field="request_id")
            request_id = self._by_key.get(key)
            if request_id is None:
                raise NotFound(
                    f"key {key!r} has no decision awaiting feedback (never routed with this key, already "
                    f"rewarded, or older than the feedback TTL of {self.ttl_s:g} s)",
                    field="key",
                )
        entry = self._pending.get(request_id)
        if entry is None:
            if request_id in self._tombstones:
                _, why = self._tombstones[request_id]
                raise Gone(f"request_id {request_id!r} can no longer take feedback: {why}", field="request_id")
            if request_id in self._settled:
                _, why = self._settled[request_id]
                raise Conflict(f"request_id {request_id!r} takes no more feedback: {why}", field="request_id")
            raise NotFound(
                f"unknown request_id {request_id!r}: not routed by this router under a learning policy "
                "(A/B or bandit), or expired long ago",
                field="request_id",
            )
        age = now - entry.at
        if age > self.ttl_s:
            why = self._ttl_reason(age)
            self._expire(request_id, now, why)
            raise Gone(f"request_id {request_id!r} can no longer take feedback: {why}",
                       field="request_id", age_s=round(age, 3), ttl_s=self.ttl_s)
        return request_id, entry

    def close(self, request_id: str, why: str = "it already has its outcome") -> None:
        """Remove a decision whose feedback was applied; more feedback for it gets 409."""
        self.settle(request_id, why)

    def take(self, request_id: str | None = None, key: str | None = None) -> tuple[str, Pending]:
        """`get` + `close` in one step."""
        rid, entry = self.get(request_id, key)
        self.close(rid)
        return rid, entry

    def sweep(self) -> int:
        """Expire decisions past the TTL and forget old tombstones; returns how many expired."""
        now = self._clock()
        expired = 0
        while self._pending:
            request_id, entry = next(iter(self._pending.items()))
            if now - entry.at <= self.ttl_s:
                break
            self._expire(request_id, now, self._ttl_reason(now - entry.at))
            expired += 1
        self._trim(self._tombstones, now, lambda v: v[0])
        self._trim(self._settled, now, lambda v: v[0])
        return expired

    def _trim(self, table: dict[str, Any], now: float, at: Callable[[Any], float]) -> None:
        while table:
            first = next(iter(table))
            if now - at(table[first]) <= self.ttl_s and len(table) <= self.max_pending:
                break
            del table[first]

    def _ttl_reason(self, age: float) -> str:
        return f"its decision was made {age:.0f} s ago, beyond the feedback TTL of {self.ttl_s:g} s"

    def _expire(self, request_id: str, now: float, why: str) -> None:
        entry = self._pending.pop(request_id)
        self._drop_key(request_id, entry)
        self._tombstones[request_id] = (now, why)
        self.expired += 1

    def _drop_key(self, request_id: str, entry: Pending) -> None:
        if entry.key and self._by_key.get(entry.key) == request_id:
            del self._by_key[entry.key]

    # -- persistence ----------------------------------------------------------------------------

    def dump(self) -> dict[str, Any]:
        return {
            "pending": [[rid, p.variant, p.key, p.at, p.epoch] for rid, p in self._pending.items()],
            "tombstones": [[rid, at, why] for rid, (at, why) in self._tombstones.items()],
            "settled": [[rid, at, why] for rid, (at, why) in self._settled.items()],
        }

    def load(self, data: dict[str, Any]) -> None:
        """Restore a dump; raises ValueError naming the bad entry (nothing is changed then)."""
        pending: dict[str, Pending] = {}
        for i, row in enumerate(_rows(data, "pending")):
            try:
                rid, variant, key, at, epoch = row
                pending[str(rid)] = Pending(str(variant), None if key is None else str(key), float(at), int(epoch))
            except (TypeError, ValueError):
                raise ValueError(
                    f"pending[{i}]: expected [request_id, variant, key, time, epoch], got {row!r}"
                ) from None
        tombstones = {}
        for i, row in enumerate(_rows(data, "tombstones")):
            try:
                rid, at, why = row
                tombstones[str(rid)] = (float(at), str(why))
            except (TypeError, ValueError):
                raise ValueError(f"tombstones[{i}]: expected [request_id, time, reason], got {row!r}") from None
        settled = {}
        for i, row in enumerate(_rows(data, "settled")):
            try:
                rid, at, why = row
                settled[str(rid)] = (float(at), str(why))
            except (TypeError, ValueError):
                raise ValueError(f"settled[{i}]: expected [request_id, time, reason], got {row!r}") from None
        ordered = dict(sorted(pending.items(), key=lambda item: item[1].at))
        self._pending = ordered
        self._by_key = {p.key: rid for rid, p in ordered.items() if p.key}
        self._tombstones = tombstones
        self._settled = settled
        self.sweep()

    def variants_pending(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for p in self._pending.values():
            counts[p.variant] = counts.get(p.variant, 0) + 1
        return counts


def apply_feedback(table: RouteTable, pending: PendingStore, body: dict[str, Any]) -> dict[str, Any]:
    """Reward the decision a feedback body names; raises a ClientError naming the problem."""
    unknown = sorted(set(body) - _FIELDS)
    if unknown:
        raise InvalidInput(f"unknown field(s) {unknown}; send request_id (or key) and reward (or outcome)",
                           field=unknown[0])
    request_id, key = body.get("request_id"), body.get("key")
    if (request_id is None) == (key is None):
        raise InvalidInput("send exactly one of request_id and key", field="request_id")
    for field, value in (("request_id", request_id), ("key", key)):
        if value is not None and (not isinstance(value, str) or not value):
            raise InvalidInput(f"{field} must be a non-empty string, got {value!r}", field=field)
    if ("reward" in body) == ("outcome" in body):
        raise InvalidInput("send exactly one of reward and outcome (a number; 0/1 for A/B)", field="reward")
    field = "reward" if "reward" in body else "outcome"
    value = body[field]
    if isinstance(value, bool):
        value = int(value)
    if not isinstance(value, (int, float)):
        raise InvalidInput(f"{field} must be a number, got {value!r}", field=field)
    if not table.learns:
        raise Conflict(f"the policy in force ({table.kind!r}, config version {table.version}) takes no feedback; "
                       "A/B and bandit policies do", field="request_id")
    rid, entry = pending.get(request_id, key)
    if entry.epoch != table.epoch:
        pending.settle(rid, "its decision was made under an earlier policy")
        raise Conflict(f"request_id {rid!r} was routed under an earlier policy; the one in force "
                       f"(config version {table.version}) cannot learn from it", field="request_id")
    try:
        table.policy.on_reward(entry.variant, value)
    except UnknownVariantError:
        pending.settle(rid, f"its variant {entry.variant!r} is no longer routed")
        raise Conflict(f"variant {entry.variant!r} of request_id {rid!r} is no longer routed "
                       f"(config version {table.version})", field="request_id") from None
    except InvalidRewardError as exc:
        raise InvalidInput(str(exc).replace("reward:", f"{field}:", 1), field=field) from None
    pending.close(rid)
    return {"request_id": rid, "variant": entry.variant, field: value, "applied": True}


def _rows(data: dict[str, Any], name: str) -> Iterable[Any]:
    rows = data.get(name, [])
    if not isinstance(rows, list):
        raise ValueError(f"{name}: expected a list")
    return rows
