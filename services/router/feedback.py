"""Answered requests awaiting feedback: request id -> (variant, key, time, predicted labels), with a TTL.

Outcome feedback (`POST /feedback`) is taken under every policy. The router records every answered
request here (one small entry: who answered, the stickiness key, when, the policy generation and
the labels it predicted; shadows' mirrored predictions are attached when the mirror compared
them). Feedback looks the request id up (or the latest request of a key) and closes the entry, so
each request takes feedback at most once:

    {"request_id": "...", "label": 1}                 the true class (single-row request)
    {"request_id": "...", "labels": [1, 0, 2]}        one per row (multi-row request)
    {"request_id": "...", "reward": 0.7}              a reward ("outcome": 0/1 is the A/B spelling)
    {"key": "user-7", "label": 1, "reward": 1}        both; by the key's latest request

A label is compared with the answering variant's predicted label(s), and with each shadow's
(`router_feedback_labels_total` / `router_feedback_correct_total`); a reward counts for the
answering variant (`router_feedback_reward_*`) and is handed to a learning policy
(`RoutingPolicy.on_reward`: A/B, bandits). Errors:

    invalid body         -> InvalidInput (400) naming the field: a label that is not one of the model's
                            classes (or not an int >= 0 while the classes are unknown), a row count that
                            differs from the answer's, a reward that is not finite, beyond 1e9 in size or
                            outside the policy's declared range (`RoutingPolicy.check_reward`)
    unknown id           -> NotFound (404): never routed here, or expired so long ago it is forgotten
    decision too old     -> Gone (410): past `ttl_s`, or evicted early because `max_pending` was reached
    already rewarded     -> Conflict (409), also for a decision closed without feedback (its variant
                            failed and the fallback answered, under a learning policy)

Everything is validated before anything changes: a refused feedback leaves the policy, the metrics
and the entry as they were (it can be sent again, corrected).

Expired ids are remembered (as tombstones, for another TTL and at most `max_pending` of them)
so late feedback gets a 410 that says why, not a puzzling 404. Times are wall-clock seconds so a
restart (the store is persisted in the state file) keeps every deadline.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from services.core.errors import Gone, InvalidInput, NotFound
from services.router.errors import Conflict
from services.router.policies import InvalidRewardError, UnknownVariantError
from services.router.quality import Quality
from services.router.table import RouteTable

_FIELDS = frozenset({"request_id", "key", "reward", "outcome", "label", "labels"})


@dataclass(slots=True)
class Pending:
    variant: str
    key: str | None
    at: float
    epoch: int
    """The policy generation the decision was made under; a learning policy refuses older rewards."""
    labels: tuple | None = None
    """Labels the answer predicted (one per row); None when the answer had none."""
    shadows: tuple[tuple[str, tuple], ...] = ()
    """(shadow variant, its predicted labels) for each mirror compared so far."""


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

    def add(self, request_id: str, variant: str, key: str | None, epoch: int, labels: tuple | None = None) -> None:
        now = self._clock()
        previous = self._pending.pop(request_id, None)  # a reused id: keep the table in time order
        if previous is not None:
            self._drop_key(request_id, previous)
        self._pending[request_id] = Pending(variant, key, now, epoch, labels)
        if key:
            self._by_key[key] = request_id
        if len(self._pending) > self.max_pending:
            oldest = next(iter(self._pending))
            self._expire(oldest, now, f"evicted: more than {self.max_pending} decisions were awaiting feedback")
            self.evicted += 1

    def attach_shadow(self, request_id: str, variant: str, labels: tuple) -> bool:
        """Remember a shadow's predicted labels for a request still awaiting feedback."""
        entry = self._pending.get(request_id)
        if entry is None or entry.variant == variant or any(name == variant for name, _ in entry.shadows):
            return False
        entry.shadows = (*entry.shadows, (variant, labels))
        return True

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
                f"unknown request_id {request_id!r}: not answered by this router, or expired long ago",
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
            "pending": [[rid, p.variant, p.key, p.at, p.epoch, None if p.labels is None else list(p.labels),
                         [[name, list(labels)] for name, labels in p.shadows]]
                        for rid, p in self._pending.items()],
            "tombstones": [[rid, at, why] for rid, (at, why) in self._tombstones.items()],
            "settled": [[rid, at, why] for rid, (at, why) in self._settled.items()],
        }

    def load(self, data: dict[str, Any]) -> None:
        """Restore a dump; raises ValueError naming the bad entry (nothing is changed then)."""
        pending: dict[str, Pending] = {}
        for i, row in enumerate(_rows(data, "pending")):
            try:
                rid, variant, key, at, epoch, *rest = row
                labels = rest[0] if rest else None
                shadows = rest[1] if len(rest) > 1 else []
                if len(rest) > 2 or not (labels is None or isinstance(labels, list)):
                    raise ValueError
                pending[str(rid)] = Pending(str(variant), None if key is None else str(key), float(at), int(epoch),
                                            None if labels is None else tuple(labels),
                                            tuple((str(name), tuple(ls)) for name, ls in shadows))
            except (TypeError, ValueError):
                raise ValueError(
                    f"pending[{i}]: expected [request_id, variant, key, time, epoch, labels, shadows], got {row!r}"
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


def apply_feedback(table: RouteTable, pending: PendingStore, quality: Quality,
                   body: dict[str, Any]) -> dict[str, Any]:
    """Apply the feedback a body names: all of it, or (raising a ClientError naming the problem) none."""
    unknown = sorted(set(body) - _FIELDS)
    if unknown:
        raise InvalidInput(f"unknown field(s) {unknown}; send request_id (or key) with label (or labels) "
                           "and/or reward (or outcome)", field=unknown[0])
    request_id, key = body.get("request_id"), body.get("key")
    if (request_id is None) == (key is None):
        raise InvalidInput("send exactly one of request_id and key", field="request_id")
    for field, value in (("request_id", request_id), ("key", key)):
        if value is not None and (not isinstance(value, str) or not value):
            raise InvalidInput(f"{field} must be a non-empty string, got {value!r}", field=field)
    if "reward" in body and "outcome" in body:
        raise InvalidInput("send at most one of reward and outcome (outcome is the A/B spelling)", field="reward")
    if "label" in body and "labels" in body:
        raise InvalidInput("send at most one of label (single-row request) and labels (one per row)", field="label")
    label_field = "label" if "label" in body else "labels" if "labels" in body else None
    field = "reward" if "reward" in body else "outcome" if "outcome" in body else None
    if label_field is None and field is None:
        raise InvalidInput("send a label (or labels: the true class) and/or a reward (or outcome)", field="label")
    truth = _truth(body, label_field)
    reward = None
    if field is not None:
        value = body[field]
        if isinstance(value, bool):
            value = int(value)
        if not isinstance(value, (int, float)):
            raise InvalidInput(f"{field} must be a number, got {value!r}", field=field)
        try:
            reward = table.policy.check_reward(value)
        except InvalidRewardError as exc:
            raise InvalidInput(str(exc).replace("reward:", f"{field}:", 1), field=field) from None
    rid, entry = pending.get(request_id, key)
    if truth is not None:
        _check_truth(truth, label_field, entry, rid, quality)  # type: ignore[arg-type]
    learns = reward is not None and table.learns
    if learns and entry.epoch != table.epoch:
        pending.settle(rid, "its decision was made under an earlier policy")
        raise Conflict(f"request_id {rid!r} was routed under an earlier policy; the one in force "
                       f"(config version {table.version}) cannot learn from it", field="request_id")
    if learns:
        try:
            table.policy.on_reward(entry.variant, value)
        except UnknownVariantError:
            pending.settle(rid, f"its variant {entry.variant!r} is no longer routed")
            raise Conflict(f"variant {entry.variant!r} of request_id {rid!r} is no longer routed "
                           f"(config version {table.version})", field="request_id") from None
        except InvalidRewardError as exc:
            raise InvalidInput(str(exc).replace("reward:", f"{field}:", 1), field=field) from None
    # Nothing below can fail: the metrics change together with the close.
    result: dict[str, Any] = {"request_id": rid, "variant": entry.variant}
    if field is not None:
        result[field] = value
        quality.of(entry.variant).rewarded(reward)  # type: ignore[arg-type]
    if truth is not None:
        result[label_field] = body[label_field]  # type: ignore[index]
        result["correct"] = _score(quality, entry.variant, entry.labels, truth)  # type: ignore[arg-type]
        shadows = {name: _score(quality, name, labels, truth)
                   for name, labels in entry.shadows if len(labels) == len(truth)}
        if shadows:
            result["shadows_correct"] = shadows
    pending.close(rid)
    result["applied"] = True
    return result


def _truth(body: dict[str, Any], field: str | None) -> tuple[int, ...] | None:
    """The true label(s) a body sends, as a tuple of ints >= 0 (the class range is checked later)."""
    if field is None:
        return None
    value = body[field]
    values = [value] if field == "label" else value
    if field == "labels" and (not isinstance(values, list) or not values):
        raise InvalidInput(f"labels must be a non-empty list of class numbers (one per row), got {value!r}",
                           field="labels")
    for v in values:
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise InvalidInput(f"{field} must be a class number (an integer >= 0), got {value!r}", field=field)
    return tuple(values)


def _check_truth(truth: tuple[int, ...], field: str, entry: Pending, rid: str, quality: Quality) -> None:
    if entry.labels is None:
        raise InvalidInput(f"request_id {rid!r}: the answer of {entry.variant!r} carried no label output to "
                           f"compare a {field} with; send a reward instead", field=field)
    if len(truth) != len(entry.labels):
        if len(entry.labels) == 1:
            hint = "it had 1 row: send label, or labels with 1 value"
        else:
            hint = f"it had {len(entry.labels)} rows: send labels with {len(entry.labels)} values"
        raise InvalidInput(f"request_id {rid!r}: {len(truth)} true label(s) for the answer of "
                           f"{entry.variant!r}, but {hint}", field=field)
    classes = quality.of(entry.variant).classes
    if classes is not None:
        wrong = [v for v in truth if v >= classes]
        if wrong:
            raise InvalidInput(f"{field}: {wrong[0]} is not one of the model's classes 0..{classes - 1}", field=field)


def _score(quality: Quality, variant: str, predicted: tuple, truth: tuple[int, ...]) -> bool | list[bool]:
    hits = [p == t for p, t in zip(predicted, truth, strict=True)]
    quality.of(variant).scored(len(hits), sum(hits))
    return hits[0] if len(hits) == 1 else hits


def _rows(data: dict[str, Any], name: str) -> Iterable[Any]:
    rows = data.get(name, [])
    if not isinstance(rows, list):
        raise ValueError(f"{name}: expected a list")
    return rows
