"""Pending decisions: feedback TTL (410), unknown ids (404), duplicates (409), persistence."""

from __future__ import annotations

import json

import pytest

from services.core.errors import Gone, NotFound
from services.router.errors import Conflict
from services.router.feedback import PendingStore


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


def store(clock: Clock, ttl_s: float = 60.0, max_pending: int = 100) -> PendingStore:
    return PendingStore(ttl_s=ttl_s, max_pending=max_pending, clock=clock)


def test_feedback_within_ttl_is_accepted_once() -> None:
    clock = Clock()
    s = store(clock)
    s.add("r1", "a", "user-1", epoch=0)
    clock.now += 59
    rid, entry = s.take("r1")
    assert (rid, entry.variant, entry.key) == ("r1", "a", "user-1")
    with pytest.raises(Conflict, match="already has its outcome"):
        s.take("r1")


def test_unknown_id_is_404_and_expired_id_is_410_with_reason() -> None:
    clock = Clock()
    s = store(clock)
    with pytest.raises(NotFound, match="unknown request_id 'nope'"):
        s.get("nope")
    s.add("r1", "a", None, epoch=0)
    clock.now += 61
    with pytest.raises(Gone) as err:
        s.get("r1")
    assert "beyond the feedback TTL of 60 s" in err.value.message
    assert err.value.http_status == 410
    with pytest.raises(Gone):  # stays 410, not 404, after the first refusal
        s.get("r1")


def test_sweep_expires_in_time_order_and_tombstones_are_forgotten_later() -> None:
    clock = Clock()
    s = store(clock)
    s.add("old", "a", None, epoch=0)
    clock.now += 30
    s.add("new", "b", None, epoch=0)
    clock.now += 31
    assert s.sweep() == 1
    assert len(s) == 1
    with pytest.raises(Gone):
        s.get("old")
    s.get("new")
    clock.now += 200  # tombstones are kept for one more TTL, then forgotten
    s.sweep()
    with pytest.raises(NotFound):
        s.get("old")


def test_capacity_evicts_the_oldest_with_a_clear_410() -> None:
    clock = Clock()
    s = store(clock, max_pending=2)
    for i in range(3):
        s.add(f"r{i}", "a", None, epoch=0)
    assert len(s) == 2 and s.evicted == 1
    with pytest.raises(Gone, match="evicted: more than 2 decisions"):
        s.get("r0")


def test_feedback_by_key_uses_the_keys_latest_request() -> None:
    clock = Clock()
    s = store(clock)
    s.add("r1", "a", "user-1", epoch=0)
    s.add("r2", "b", "user-1", epoch=0)
    rid, entry = s.take(key="user-1")
    assert (rid, entry.variant) == ("r2", "b")
    with pytest.raises(NotFound, match="key 'user-1' has no decision awaiting feedback"):
        s.take(key="user-1")
    with pytest.raises(NotFound):
        s.take(key="nobody")


def test_get_leaves_the_entry_until_closed() -> None:
    clock = Clock()
    s = store(clock)
    s.add("r1", "a", None, epoch=0)
    s.get("r1")
    s.get("r1")  # e.g. the first reward was invalid and is being resent
    s.close("r1")
    with pytest.raises(Conflict):
        s.get("r1")


def test_settled_decision_answers_409_with_its_reason() -> None:
    clock = Clock()
    s = store(clock)
    s.add("r1", "a", None, epoch=0)
    s.settle("r1", "its variant 'a' failed and the fallback answered")
    with pytest.raises(Conflict, match="failed and the fallback answered"):
        s.get("r1")


def test_dump_and_load_round_trip_keeps_deadlines() -> None:
    clock = Clock()
    s = store(clock)
    s.add("r1", "a", "k1", epoch=3)
    s.add("r3", "b", None, epoch=3)
    clock.now += 61
    s.add("r4", "a", None, epoch=3)
    s.add("r2", "b", None, epoch=3)
    s.take("r2")
    s.sweep()  # r1 and r3 expire
    dumped = json.loads(json.dumps(s.dump()))
    fresh = store(clock)
    fresh.load(dumped)
    assert len(fresh) == 1
    rid, entry = fresh.get("r4")
    assert entry.epoch == 3
    with pytest.raises(Gone):
        fresh.get("r1")
    with pytest.raises(Conflict):
        fresh.get("r2")
    clock.now += 60.5
    with pytest.raises(Gone):  # the deadline survived the round trip
        fresh.get("r4")


def test_load_rejects_bad_rows_and_changes_nothing() -> None:
    clock = Clock()
    s = store(clock)
    s.add("r1", "a", None, epoch=0)
    with pytest.raises(ValueError, match=r"pending\[0\]: expected \[request_id, variant, key, time, epoch, labels"):
        s.load({"pending": [["x", "a"]]})
    s.get("r1")


def test_predicted_and_shadow_labels_are_kept_persisted_and_bounded() -> None:
    clock = Clock()
    s = store(clock, max_pending=2)
    s.add("r1", "stable", None, epoch=0, labels=(1,))
    assert s.attach_shadow("r1", "candidate", (0,))
    assert not s.attach_shadow("r1", "candidate", (0,))  # one per shadow
    assert not s.attach_shadow("r1", "stable", (0,))  # the answering variant is no shadow of itself
    assert not s.attach_shadow("never", "candidate", (0,))  # nothing kept for unknown ids
    fresh = store(clock)
    fresh.load(json.loads(json.dumps(s.dump())))
    _, entry = fresh.get("r1")
    assert entry.labels == (1,) and entry.shadows == (("candidate", (0,)),)
    # rows of the old layout (no labels) still load
    fresh.load({"pending": [["old", "a", None, clock.now, 0]]})
    assert fresh.get("old")[1].labels is None
    s.add("r2", "stable", None, epoch=0, labels=(0,))
    s.add("r3", "stable", None, epoch=0, labels=(0,))  # evicts r1 with its shadow labels
    assert len(s) == 2
    with pytest.raises(Gone):
        s.get("r1")
