"""Metric windows: differences of cumulative snapshots, counter resets, missing values, merging."""

from __future__ import annotations

import math

import pytest

from services.supervisor.windows import (
    Feedback,
    LatencyHistogram,
    Rewards,
    ShadowComparison,
    VariantSnapshot,
    VariantWindow,
    merge_pair,
    window_between,
)

BOUNDS = (0.005, 0.01, 0.05, math.inf)


def snap(t: float, requests: int, errors: int, *, hist=(0, 0, 0, 0), labelled=0, correct=0, start=100.0,
         version=2, rewards=(0, 0.0, 0.0), labels=None) -> VariantSnapshot:
    return VariantSnapshot(
        variant="candidate",
        taken_at=t,
        requests=requests,
        errors=errors,
        version=version,
        process_start=start,
        latency=LatencyHistogram(BOUNDS, hist),
        feedback=Feedback(labelled, correct),
        rewards=Rewards(*rewards),
        shadow=ShadowComparison(requests, requests, 0.0),
        predicted_labels=labels,
    )


def test_a_window_is_the_difference_of_two_snapshots():
    before = snap(1000, 500, 5, hist=(300, 450, 495, 500), labelled=100, correct=90, rewards=(50, 20.0, 20.0),
                  labels={"0": 200, "1": 300})
    after = snap(1060, 800, 11, hist=(450, 700, 790, 800), labelled=180, correct=160, rewards=(80, 35.0, 35.0),
                 labels={"0": 300, "1": 500})
    w = window_between(before, after)
    assert (w.start, w.end, w.observed_at, w.duration_s) == (1000, 1060, 1060, 60)
    assert (w.requests, w.errors, w.error_rate) == (300, 6, 0.02)
    assert w.latency == LatencyHistogram(BOUNDS, (150, 250, 295, 300))
    assert (w.feedback.labelled, w.feedback.correct) == (80, 70)
    assert (w.rewards.count, w.rewards.total) == (30, 15.0)
    assert w.predicted_labels == {"0": 100, "1": 200}
    assert w.problem is None


@pytest.mark.parametrize(
    ("after", "names"),
    [
        (snap(1060, 30, 0), "requests went down from 800 to 30"),
        (snap(1060, 900, 2), "errors went down from 11 to 2"),
        (snap(1060, 900, 11, hist=(0, 0, 0, 0)), "latency histogram went down"),
        (snap(1060, 900, 11, hist=(450, 700, 790, 900), labelled=3, correct=3), "feedback.labelled went down"),
        (snap(1060, 900, 12, start=200.0, hist=(999, 999, 999, 999)), "restarted (process start time changed)"),
    ],
)
def test_a_counter_reset_marks_the_window_instead_of_reading_negative_numbers(after, names):
    before = snap(1000, 800, 11, hist=(450, 700, 790, 800), labelled=180, correct=160)
    w = window_between(before, after)
    assert w.problem is not None and names in w.problem and "reset" in w.problem
    assert w.requests is None and w.errors is None and w.error_rate is None


def test_a_restart_is_caught_even_when_the_new_counters_grew_past_the_old_ones():
    before = snap(1000, 100, 1)
    after = snap(1060, 5000, 20, start=1030.0)
    assert "restarted" in window_between(before, after).problem


def test_a_version_change_inside_the_window_is_a_problem():
    w = window_between(snap(1000, 100, 1, version=2), snap(1060, 200, 1, version=3))
    assert w.problem == "candidate changed model version from 2 to 3"
    assert w.version == 3


def test_nan_and_missing_counts_are_none_never_zero():
    w = VariantWindow("v", 0, 60, 60, requests=float("nan"), errors=None, latency_p99_s=float("nan"))
    assert w.requests is None and w.errors is None and w.error_rate is None
    assert w.latency_p99_s is None and w.p99_s is None
    missing = window_between(VariantSnapshot("v", 0, None, None), VariantSnapshot("v", 60, 10, 0))
    assert missing.requests is None and missing.problem is None
    labels = VariantWindow("v", 0, 60, 60, 10, 0, predicted_labels={"0": 4, "1": float("nan")})
    assert labels.predicted_labels is None


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"requests": -1}, "never negative"),
        ({"requests": 1.5}, "whole number"),
        ({"requests": 5, "errors": 6}, "errors (6) exceed requests (5)"),
        ({"end": -1.0}, "ends (-1.0) before it starts"),
        ({"observed_at": float("nan")}, "observed_at: a window needs a finite time"),
        ({"latency_p99_s": -0.1}, "never negative"),
    ],
)
def test_impossible_windows_are_refused(kwargs, message):
    base = {"variant": "v", "start": 0.0, "end": 60.0, "observed_at": 60.0, "requests": 10, "errors": 1}
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        VariantWindow(**{**base, **kwargs})


def test_groups_refuse_impossible_counts():
    with pytest.raises(ValueError, match="correct .* exceeds labelled"):
        Feedback(3, 4)
    with pytest.raises(ValueError, match="agreeing .* exceeds compared"):
        ShadowComparison(3, 4, 0.0)
    with pytest.raises(ValueError, match="labelled and correct are both required"):
        Feedback(float("nan"), 1)


def test_histogram_quantile_follows_prometheus():
    h = LatencyHistogram(BOUNDS, (50, 90, 99, 100))
    assert h.quantile(0.5) == pytest.approx(0.005)
    assert h.quantile(0.9) == pytest.approx(0.01)
    assert h.quantile(0.95) == pytest.approx(0.01 + 0.04 * 5 / 9)
    # A rank in the +Inf bucket: the largest finite bound (a lower bound of the truth).
    assert LatencyHistogram(BOUNDS, (0, 0, 0, 10)).quantile(0.99) == 0.05
    assert LatencyHistogram(BOUNDS, (0, 0, 0, 0)).quantile(0.99) is None
    with pytest.raises(ValueError, match="must not decrease"):
        LatencyHistogram(BOUNDS, (5, 4, 6, 7))


def test_merging_keeps_the_two_variants_over_the_same_window():
    def w(variant, start, requests, errors, feedback=None, p99=None):
        return VariantWindow(variant, start, start + 60, start + 60, requests, errors,
                             feedback=feedback, latency_p99_s=p99)

    first = (w("stable", 0, 900, 9, Feedback(100, 95), 0.010), w("candidate", 0, 100, 1, Feedback(10, 9), 0.020))
    # The candidate's feedback is missing in the second interval: neither side's is added.
    second = (w("stable", 60, 900, 9, Feedback(100, 95), 0.030), w("candidate", 60, 300, 3, None, 0.040))
    stable, candidate = merge_pair(merge_pair(None, first), second)
    assert (stable.start, stable.end, candidate.start, candidate.end) == (0, 120, 0, 120)
    assert (stable.requests, candidate.requests, candidate.errors) == (1800, 400, 4)
    assert stable.feedback == Feedback(100, 95) and candidate.feedback == Feedback(10, 9)
    # Scalar p99s: request-weighted mean of the intervals'.
    assert stable.latency_p99_s == pytest.approx(0.020)
    assert candidate.latency_p99_s == pytest.approx((0.020 * 100 + 0.040 * 300) / 400)


def test_a_group_reported_by_one_side_only_never_enters_the_accumulation():
    s = VariantWindow("stable", 0, 60, 60, 100, 1, feedback=Feedback(50, 45))
    c = VariantWindow("candidate", 0, 60, 60, 10, 0)
    stable, candidate = merge_pair(None, (s, c))
    assert stable.feedback is None and candidate.feedback is None


def test_windows_round_trip_through_dicts():
    w = window_between(
        snap(1000, 500, 5, hist=(300, 450, 495, 500), labels={"0": 1, "1": 2}),
        snap(1060, 800, 11, hist=(450, 700, 790, 800), labels={"0": 5, "1": 9}),
    )
    assert VariantWindow.from_dict(w.to_dict()) == w
