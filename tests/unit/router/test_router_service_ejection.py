"""Consecutive-failure outlier ejection with a cool-down (clock injected: no sleeping)."""

from __future__ import annotations

from services.router.ejection import OutlierDetector


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def detector(clock: Clock, events: list, **kw) -> OutlierDetector:
    params = {"consecutive_failures": 3, "base_ejection_s": 10.0, "max_ejection_s": 25.0, **kw}
    return OutlierDetector(clock=clock, on_eject=lambda v, s: events.append(("eject", v, s)),
                           on_return=lambda v: events.append(("return", v)), **params)


def test_ejects_after_n_consecutive_failures_only() -> None:
    clock, events = Clock(), []
    d = detector(clock, events)
    assert not d.failure("a") and not d.failure("a")
    d.success("a")  # breaks the run
    assert not d.failure("a") and not d.failure("a")
    assert not d.is_ejected("a")
    assert d.failure("a")
    assert d.is_ejected("a") and not d.is_ejected("b")
    assert events == [("eject", "a", 10.0)]


def test_cool_down_then_back_in_rotation() -> None:
    clock, events = Clock(), []
    d = detector(clock, events)
    for _ in range(3):
        d.failure("a")
    clock.now += 9.9
    assert d.is_ejected("a")
    clock.now += 0.2
    assert not d.is_ejected("a")
    assert events[-1] == ("return", "a")
    # Back with a clean count: one more failure does not eject it again.
    assert not d.failure("a")
    assert not d.is_ejected("a")


def test_repeated_ejections_last_longer_up_to_the_cap_and_success_resets() -> None:
    clock, events = Clock(), []
    d = detector(clock, events)
    cool_downs = []
    for _ in range(4):
        for _ in range(3):
            d.failure("a")
        cool_downs.append(events[-1][2])
        clock.now += cool_downs[-1] + 0.01
        assert not d.is_ejected("a")
    assert cool_downs == [10.0, 20.0, 25.0, 25.0]
    d.success("a")
    for _ in range(3):
        d.failure("a")
    assert events[-1] == ("eject", "a", 10.0)


def test_failures_while_ejected_do_not_extend_the_ejection() -> None:
    clock, events = Clock(), []
    d = detector(clock, events)
    for _ in range(3):
        d.failure("a")
    for _ in range(10):  # requests that were in flight when it was ejected
        assert not d.failure("a")
    clock.now += 10.01
    assert not d.is_ejected("a")
    assert [e[0] for e in events] == ["eject", "return"]


def test_disabled_detection_never_ejects_and_releases_current_ejections() -> None:
    clock, events = Clock(), []
    d = detector(clock, events)
    for _ in range(3):
        d.failure("a")
    assert d.is_ejected("a")
    d.reconfigure(consecutive_failures=3, base_ejection_s=10, max_ejection_s=25, enabled=False)
    assert not d.is_ejected("a")
    for _ in range(10):
        assert not d.failure("a")
    assert not d.is_ejected("a")


def test_snapshot_reports_state() -> None:
    clock, events = Clock(), []
    d = detector(clock, events)
    for _ in range(3):
        d.failure("a")
    d.failure("b")
    snap = d.snapshot()
    assert snap["a"]["ejected"] and snap["a"]["ejected_for_s"] == 10.0 and snap["a"]["ejections_total"] == 1
    assert not snap["b"]["ejected"] and snap["b"]["consecutive_failures"] == 1
