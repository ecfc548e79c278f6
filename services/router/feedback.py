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
from services.router.tokens import Claims, TokenCodec, is_token

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
    alias: str | None = None
    """The request id the client chose, when it sent one (the entry itself is keyed by the token)."""


class PendingStore:
    """Not thread-safe: owned by the router's event loop."""

    def __init__(self, ttl_s: float, max_pending: int, clock: Callable[[], float] = time.time) -> None:
        self.ttl_s = ttl_s
        self.max_pending = max_pending
        self._clock = clock
        self._pending: dict[str, Pending] = {}  # insertion order == decision time order
        self._by_key: dict[str, str] = {}  # key -> latest pending request id
        self._aliases: dict[str, str] = {}  # client's request id -> token of its pending entry
        self._tombstones: dict[str, tuple[float, str]] = {}  # id -> (expired at, why)
        self._settled: dict[str, tuple[float, str]] = {}  # id -> (closed at, why): 409, not 404
        self.evicted = 0
        self.expired = 0
        self.offsets: dict[str, int] = {}
        """Next offset of each feedback-topic partition ("topic:partition") whose events are applied
        (`feedback_log.py`); saved with the table so a restart resumes where its state stopped."""

    def __len__(self) -> int:
        return len(self._pending)

    def reconfigure(self, ttl_s: float, max_pending: int) -> None:
        self.ttl_s = ttl_s
        self.max_pending = max_pending
        self.sweep()

    def add(self, request_id: str, variant: str, key: str | None, epoch: int, labels: tuple | None = None,
            alias: str | None = None) -> None:
        """Record an answered request under `request_id` (its token), findable by `alias` too (the
        id the client chose)."""
        now = self._clock()
        previous = self._pending.pop(request_id, None)  # a reused id: keep the table in time order
        if previous is not None:
            self._drop_key(request_id, previous)
        if alias is not None:
            older = self._aliases.get(alias)
            if older is not None and older in self._pending:  # the client reused its id: the latest wins
                self._drop_key(older, self._pending.pop(older))
        self._pending[request_id] = Pending(variant, key, now, epoch, labels, alias=alias)
        if key:
            self._by_key[key] = request_id
        if alias is not None:
            self._aliases[alias] = request_id
        if len(self._pending) > self.max_pending:
            oldest = next(iter(self._pending))
            self._expire(oldest, now, f"evicted: more than {self.max_pending} decisions were awaiting feedback")
            self.evicted += 1

    def attach_shadow(self, request_id: str, variant: str, labels: tuple) -> bool:
        """Remember a shadow's predicted labels for a request still awaiting feedback."""
        entry = self._pending.get(self._aliases.get(request_id, request_id))
        if entry is None or entry.variant == variant or any(name == variant for name, _ in entry.shadows):
            return False
        entry.shadows = (*entry.shadows, (variant, labels))
        return True

    def settle(self, request_id: str, why: str) -> None:
        """Close a decision without feedback: later feedback gets 409 with `why`."""
        request_id = self._aliases.get(request_id, request_id)
        entry = self._pending.pop(request_id, None)
        now = self._clock()
        if entry is not None:
            self._drop_key(request_id, entry)
            if entry.alias is not None:
                self._settled[entry.alias] = (now, why)
        self._settled[request_id] = (now, why)

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
        else:
            request_id = self._aliases.get(request_id, request_id)
        entry = self._pending.get(request_id)
        if entry is None:
            if request_id in self._tombstones:
                _, why = self._tombstones[request_id]
                raise Gone(f"request_id {request_id!r} can no longer take feedback: {why}", field="request_id")
            if request_id in self._settled:
                _, why = self._settled[request_id]
                raise Conflict(f"request_id {request_id!r} takes no more feedback: {why}", field="request_id")
            raise NotFound(
                f"unknown request_id {request_id!r}: not answered by this replica, or expired long ago "
                "(a request id the client chose is known only to the replica that answered it; send the "
                "answer's x-feedback-token instead)",
                field="request_id",
            )
        age = now - entry.at
        if age > self.ttl_s:
            why = self._ttl_reason(age)
            self._expire(request_id, now, why)
            raise Gone(f"request_id {request_id!r} can no longer take feedback: {why}",
                       field="request_id", age_s=round(age, 3), ttl_s=self.ttl_s)
        return request_id, entry

    def knows(self, request_id: str) -> bool:
        """The id is in this replica's tables (pending, expired or closed)."""
        return request_id in self._pending or request_id in self._tombstones or request_id in self._settled

    def get_token(self, token: str, claims: Claims) -> tuple[str, Pending]:
        """The decision a verified token names: this replica's entry when it answered the request
        (it may hold shadows' labels), else one rebuilt from the token's claims. 409 / 410 as `get`."""
        if self.knows(token):
            return self.get(token)
        if not claims.variant:
            raise Conflict(f"request_id {token!r} takes no feedback: its chosen variant failed and the "
                           "fallback answered", field="request_id")
        age = self._clock() - claims.issued
        if age > self.ttl_s:
            raise Gone(f"request_id {token!r} can no longer take feedback: {self._ttl_reason(age)}",
                       field="request_id", age_s=round(age, 3), ttl_s=self.ttl_s)
        return token, Pending(claims.variant, None, claims.issued, claims.epoch, claims.labels)

    def is_settled(self, request_id: str) -> bool:
        return request_id in self._settled

    def close(self, request_id: str, why: str = "it already has its outcome") -> None:
        """Remove a decision whose feedback was applied; more feedback for it gets 409."""
        self.settle(request_id, why)

    def take(self, request_id: str | None = None, key: str | None = None) -> tuple[str, Pending]:
        """`get` + `close` in one step."""
        rid, entry = self.get(request_id, key)
        self.close(rid)
        return rid, entry

    def sweep(self) -> int:
        """Expire decisions past the TTL (and the oldest beyond `max_pending`, which may have been
        lowered) and forget old tombstones; returns how many expired."""
        now = self._clock()
        expired = 0
        while len(self._pending) > self.max_pending:
            self._expire(next(iter(self._pending)), now,
                         f"evicted: more than {self.max_pending} decisions were awaiting feedback")
            self.evicted += 1
            expired += 1
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
        if entry.alias is not None:
            self._tombstones[entry.alias] = (now, why)
        self.expired += 1

    def _drop_key(self, request_id: str, entry: Pending) -> None:
        if entry.key and self._by_key.get(entry.key) == request_id:
            del self._by_key[entry.key]
        if entry.alias is not None and self._aliases.get(entry.alias) == request_id:
            del self._aliases[entry.alias]

    # -- persistence ----------------------------------------------------------------------------

    def dump(self) -> dict[str, Any]:
        return {
            "pending": [[rid, p.variant, p.key, p.at, p.epoch, None if p.labels is None else list(p.labels),
                         [[name, list(labels)] for name, labels in p.shadows], p.alias]
                        for rid, p in self._pending.items()],
            "tombstones": [[rid, at, why] for rid, (at, why) in self._tombstones.items()],
            "settled": [[rid, at, why] for rid, (at, why) in self._settled.items()],
            "offsets": dict(self.offsets),
        }

    def load(self, data: dict[str, Any]) -> None:
        """Restore a dump; raises ValueError naming the bad entry (nothing is changed then)."""
        pending: dict[str, Pending] = {}
        for i, row in enumerate(_rows(data, "pending")):
            try:
                rid, variant, key, at, epoch, *rest = row
                labels = rest[0] if rest else None
                shadows = rest[1] if len(rest) > 1 else []
                alias = rest[2] if len(rest) > 2 else None
                if len(rest) > 3 or not (labels is None or isinstance(labels, list)):
                    raise ValueError
                pending[str(rid)] = Pending(str(variant), None if key is None else str(key), float(at), int(epoch),
                                            None if labels is None else tuple(labels),
                                            tuple((str(name), tuple(ls)) for name, ls in shadows),
                                            None if alias is None else str(alias))
            except (TypeError, ValueError):
                raise ValueError(
                    f"pending[{i}]: expected [request_id, variant, key, time, epoch, labels, shadows, alias], "
                    f"got {row!r}") from None
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
        offsets = data.get("offsets", {})
        if not isinstance(offsets, dict) or not all(
                isinstance(k, str) and isinstance(v, int) and v >= 0 for k, v in offsets.items()):
            raise ValueError(f"offsets: expected {{'topic:partition': next offset}}, got {offsets!r}")
        ordered = dict(sorted(pending.items(), key=lambda item: item[1].at))
        self.offsets = dict(offsets)
        self._pending = ordered
        self._by_key = {p.key: rid for rid, p in ordered.items() if p.key}
        self._aliases = {p.alias: rid for rid, p in ordered.items() if p.alias is not None}
        self._tombstones = tombstones
        self._settled = settled
        self.sweep()

    def variants_pending(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for p in self._pending.values():
            counts[p.variant] = counts.get(p.variant, 0) + 1
        return counts


@dataclass(slots=True)
class Feedback:
    """A feedback body validated against the decision it names: ready to apply, nothing changed yet."""

    request_id: str
    variant: str
    epoch: int
    field: str | None
    """"reward" or "outcome" (the spelling the client used), or None: labels only."""
    value: Any
    """The reward as sent (echoed in the answer)."""
    reward: float | None
    label_field: str | None
    truth: tuple[int, ...] | None
    labels: tuple | None
    """What the answer predicted (local entry, or carried by the token)."""
    shadows: tuple[tuple[str, tuple], ...] = ()


def prepare_feedback(table: RouteTable, pending: PendingStore, quality: Quality, body: dict[str, Any],
                     codec: TokenCodec | None = None) -> Feedback:
    """Validate a feedback body and find its decision: a Feedback, or a ClientError naming the
    problem (nothing changed, except that a decision found too old or made under an earlier
    policy is closed)."""
    unknown = sorted(set(body) - _FIELDS)
    if unknown:
        raise InvalidInput(f"unknown field(s) {unknown}; send request_id (or key) with label (or labels) "
                           "and/or reward (or outcome)", field=unknown[0])
    request_id, key = body.get("request_id"), body.get("key")
    if (request_id is None) == (key is None):
        raise InvalidInput("send exactly one of request_id and key", field="request_id")
    for name, given in (("request_id", request_id), ("key", key)):
        if given is not None and (not isinstance(given, str) or not given):
            raise InvalidInput(f"{name} must be a non-empty string, got {given!r}", field=name)
    if "reward" in body and "outcome" in body:
        raise InvalidInput("send at most one of reward and outcome (outcome is the A/B spelling)", field="reward")
    if "label" in body and "labels" in body:
        raise InvalidInput("send at most one of label (single-row request) and labels (one per row)", field="label")
    label_field = "label" if "label" in body else "labels" if "labels" in body else None
    field = "reward" if "reward" in body else "outcome" if "outcome" in body else None
    if label_field is None and field is None:
        raise InvalidInput("send a label (or labels: the true class) and/or a reward (or outcome)", field="label")
    truth = _truth(body, label_field)
    reward = value = None
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
    if codec is not None and isinstance(request_id, str) and is_token(request_id) and not pending.knows(request_id):
        # Not answered here (or answered before a restart that forgot it): the signature vouches for it.
        rid, entry = pending.get_token(request_id, codec.verify(request_id))
    else:
        rid, entry = pending.get(request_id, key)
    if truth is not None:
        _check_truth(truth, label_field, entry, rid, quality)  # type: ignore[arg-type]
    if reward is not None and table.learns and entry.epoch != table.epoch:
        pending.settle(rid, "its decision was made under an earlier policy")
        raise Conflict(f"request_id {rid!r} was routed under an earlier policy; the one in force "
                       f"(config version {table.version}) cannot learn from it", field="request_id")
    return Feedback(rid, entry.variant, entry.epoch, field, value, reward, label_field, truth, entry.labels,
                    entry.shadows)


def learn(table: RouteTable, pending: PendingStore, fb: Feedback) -> None:
    """Hand the reward to a learning policy (A/B, bandits); Conflict / InvalidInput when it refuses
    (then the policy is unchanged)."""
    if fb.reward is None or not table.learns:
        return
    if fb.epoch != table.epoch:
        pending.settle(fb.request_id, "its decision was made under an earlier policy")
        raise Conflict(f"request_id {fb.request_id!r} was routed under an earlier policy; the one in force "
                       f"(config version {table.version}) cannot learn from it", field="request_id")
    try:
        table.policy.on_reward(fb.variant, fb.reward)
    except UnknownVariantError:
        pending.settle(fb.request_id, f"its variant {fb.variant!r} is no longer routed")
        raise Conflict(f"variant {fb.variant!r} of request_id {fb.request_id!r} is no longer routed "
                       f"(config version {table.version})", field="request_id") from None
    except InvalidRewardError as exc:
        raise InvalidInput(str(exc).replace("reward:", f"{fb.field}:", 1), field=fb.field) from None


def score(quality: Quality, fb: Feedback, body: dict[str, Any]) -> dict[str, Any]:
    """Count the feedback in the quality metrics of the replica that accepted it; the answer's body."""
    result: dict[str, Any] = {"request_id": fb.request_id, "variant": fb.variant}
    if fb.field is not None:
        result[fb.field] = fb.value
        quality.of(fb.variant).rewarded(fb.reward)  # type: ignore[arg-type]
    if fb.truth is not None:
        result[fb.label_field] = body[fb.label_field]  # type: ignore[index]
        result["correct"] = _score(quality, fb.variant, fb.labels, fb.truth)  # type: ignore[arg-type]
        shadows = {name: _score(quality, name, labels, fb.truth)
                   for name, labels in fb.shadows if len(labels) == len(fb.truth)}
        if shadows:
            result["shadows_correct"] = shadows
    return result


def apply_feedback(table: RouteTable, pending: PendingStore, quality: Quality,
                   body: dict[str, Any], codec: TokenCodec | None = None) -> dict[str, Any]:
    """Apply the feedback a body names in this process: all of it, or (raising a ClientError naming
    the problem) none. The one-replica path; with Kafka, `feedback_log` splits it in two."""
    fb = prepare_feedback(table, pending, quality, body, codec)
    learn(table, pending, fb)
    # Nothing below can fail: the metrics change together with the close.
    result = score(quality, fb, body)
    pending.close(fb.request_id)
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
