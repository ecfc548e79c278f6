"""Reading the router's /metrics text (and Prometheus query results) into per-variant snapshots."""

from __future__ import annotations

import math

import pytest

from services.supervisor import scrape
from services.supervisor.windows import window_between

TEXT = """\
# HELP router_requests_total Requests answered by the router.
# TYPE router_requests_total counter
router_requests_total{policy="canary",status="200",variant="stable"} 90.0
router_requests_total{policy="canary",status="400",variant="stable"} 5.0
router_requests_total{policy="canary",status="200",variant="candidate"} 9.0
router_requests_total{policy="canary",status="502",variant=""} 1.0
# HELP router_upstream_errors_total Failed upstream attempts.
# TYPE router_upstream_errors_total counter
router_upstream_errors_total{kind="timeout",variant="candidate"} 2.0
router_upstream_errors_total{kind="http_5xx",variant="candidate"} 1.0
# HELP router_upstream_seconds One upstream attempt on the primary path.
# TYPE router_upstream_seconds histogram
router_upstream_seconds_bucket{le="0.001",variant="stable"} 50.0
router_upstream_seconds_bucket{le="0.01",variant="stable"} 95.0
router_upstream_seconds_bucket{le="+Inf",variant="stable"} 95.0
router_upstream_seconds_count{variant="stable"} 95.0
router_upstream_seconds_sum{variant="stable"} 0.2
# HELP router_feedback_labels_total Labels fed back.
# TYPE router_feedback_labels_total counter
router_feedback_labels_total{variant="stable"} 40.0
# HELP router_feedback_correct_total Correct predictions among labelled.
# TYPE router_feedback_correct_total counter
router_feedback_correct_total{variant="stable"} 38.0
# HELP router_predicted_labels_total Predicted labels.
# TYPE router_predicted_labels_total counter
router_predicted_labels_total{label="0",variant="stable"} 30.0
router_predicted_labels_total{label="1",variant="stable"} 65.0
# HELP router_shadow_abs_prob_diff_sum Sum of mean |dp|.
# TYPE router_shadow_abs_prob_diff_sum counter
# HELP process_start_time_seconds Start time of the process since unix epoch in seconds.
# TYPE process_start_time_seconds gauge
process_start_time_seconds 1.7e9
"""


def test_requests_count_answers_and_failed_attempts_errors_count_failures():
    expo = scrape.parse_exposition(TEXT)
    stable = scrape.snapshot(expo, "stable", 100.0, version=1)
    candidate = scrape.snapshot(expo, "candidate", 100.0, version=2)
    assert (stable.requests, stable.errors) == (95, 0)  # a 4xx is the client's mistake, not an error
    assert (candidate.requests, candidate.errors) == (12, 3)  # 9 answered + 3 failed attempts
    assert stable.version == 1 and candidate.version == 2
    assert stable.process_start == 1.7e9


def test_histogram_buckets_become_a_latency_histogram():
    snap = scrape.snapshot(scrape.parse_exposition(TEXT), "stable", 1.0)
    assert snap.latency is not None
    assert snap.latency.bounds == (0.001, 0.01, math.inf) and snap.latency.counts == (50, 95, 95)
    assert scrape.snapshot(scrape.parse_exposition(TEXT), "candidate", 1.0).latency is None


def test_a_family_without_a_child_is_zero_an_absent_family_is_missing():
    expo = scrape.parse_exposition(TEXT)
    stable, candidate = scrape.snapshot(expo, "stable", 1.0), scrape.snapshot(expo, "candidate", 1.0)
    assert stable.feedback is not None and (stable.feedback.labelled, stable.feedback.correct) == (40, 38)
    assert candidate.feedback is not None and candidate.feedback.labelled == 0  # family there, no child yet
    assert stable.rewards is None and candidate.rewards is None  # no reward families at all: missing
    assert stable.shadow is None  # compared/agreeing families absent: the group is missing
    assert stable.predicted_labels == {"0": 30, "1": 65} and candidate.predicted_labels == {}


def test_a_router_without_request_counters_gives_missing_counts_never_zero():
    snap = scrape.snapshot(scrape.parse_exposition("# HELP x y\n# TYPE x gauge\nx 1.0\n"), "stable", 1.0)
    assert snap.requests is None and snap.errors is None and snap.feedback is None


def test_nan_is_missing():
    text = TEXT.replace('router_feedback_labels_total{variant="stable"} 40.0',
                        'router_feedback_labels_total{variant="stable"} NaN')
    assert scrape.snapshot(scrape.parse_exposition(text), "stable", 1.0).feedback is None


def test_two_scrapes_make_a_window_and_a_restart_is_a_reset():
    before = scrape.snapshot(scrape.parse_exposition(TEXT), "candidate", 100.0, version=2)
    later = TEXT.replace('status="200",variant="candidate"} 9.0', 'status="200",variant="candidate"} 29.0')
    after = scrape.snapshot(scrape.parse_exposition(later), "candidate", 110.0, version=2)
    window = window_between(before, after)
    assert (window.requests, window.errors, window.duration_s) == (20, 0, 10.0)
    restarted = scrape.snapshot(scrape.parse_exposition(later.replace("1.7e9", "1.8e9")), "candidate", 120.0, version=2)
    assert "counter reset" in (window_between(after, restarted).problem or "")


def test_garbage_is_a_scrape_error():
    with pytest.raises(scrape.ScrapeError):
        scrape.parse_exposition("router_requests_total{variant=\"a\" 1\n")


def test_prometheus_query_results_read_the_same_way():
    results = {
        scrape.REQUESTS: [{"metric": {"variant": "stable", "status": "200"}, "value": [1.0, "50"]},
                          {"metric": {"variant": "candidate", "status": "200"}, "value": [1.0, "5"]}],
        scrape.UPSTREAM_ERRORS: [{"metric": {"variant": "candidate", "kind": "timeout"}, "value": [1.0, "1"]}],
        scrape.FEEDBACK_LABELS: [],
    }
    expo = scrape.exposition_from_prometheus(results)
    candidate = scrape.snapshot(expo, "candidate", 1.0)
    assert (candidate.requests, candidate.errors) == (6, 1)
    assert candidate.feedback is None  # Prometheus cannot tell absent from childless: missing
    assert scrape.newest_sample_time([{"metric": {}, "value": [5.0, "1700000000.5"]}]) == 1700000000.5


def test_a_shadow_variant_counts_the_copies_mirrored_to_it_and_their_failures():
    text = TEXT + """\
# HELP router_shadow_mirrored_total Mirrored requests sent.
# TYPE router_shadow_mirrored_total counter
router_shadow_mirrored_total{variant="shadowed"} 50.0
# HELP router_shadow_errors_total Mirrored requests that failed.
# TYPE router_shadow_errors_total counter
router_shadow_errors_total{kind="timeout",variant="shadowed"} 3.0
"""
    expo = scrape.parse_exposition(text)
    shadowed = scrape.snapshot(expo, "shadowed", 1.0)
    assert (shadowed.requests, shadowed.errors) == (50, 3)
    stable = scrape.snapshot(expo, "stable", 1.0)  # no mirrors of its own: unchanged
    assert stable.requests == 95 and stable.errors == 0
