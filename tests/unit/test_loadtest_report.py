"""The comparison report builder (loadtests/report.py) on recorded Locust CSVs and timelines.

Fixtures in tests/unit/fixtures/loadtests/ were recorded by `python -m loadtests.compare --quick`:
`ramp_stats_history.csv` is the aggregate rows of a stream-scoring ramp (1, 4, 16 users, 4 s each,
64-row records, two worker processes reporting every second); `bandit_timeline.json` and
`canary_timeline.json` are the router's policy state (and the supervisor's status) once a second.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from loadtests import report

FIXTURES = Path(__file__).parent / "fixtures" / "loadtests"


@pytest.fixture(scope="module")
def history() -> list[dict]:
    return report.read_history(FIXTURES / "ramp_stats_history.csv")


def test_ramp_stages_from_a_recorded_history(history):
    stages = report.ramp_stages(history, rows_per_request=64)
    assert [s["users"] for s in stages] == [1, 4, 16]
    # requests/s over each stage's last two thirds: (count at the end - count a third in) / seconds between
    assert [s["rps"] for s in stages] == [pytest.approx((376 - 56) / 2), pytest.approx((1920 - 744) / 2),
                                          pytest.approx((4421 - 2878) / 2)]
    assert stages[2]["rows_per_s"] == pytest.approx(stages[2]["rps"] * 64)
    # the percentiles are the current window's at each stage's last second
    assert [(s["p50_ms"], s["p99_ms"]) for s in stages] == [(38, 94), (46, 88), (110, 310)]
    assert report.saturation(stages)["users"] == 16


def test_spawn_seconds_and_not_a_number_cells_are_left_out(tmp_path):
    header = ("Timestamp,User Count,Type,Name,Requests/s,Failures/s,50%,66%,75%,80%,90%,95%,98%,99%,99.9%,99.99%,"
              "100%,Total Request Count,Total Failure Count,Total Median Response Time,Total Average Response Time,"
              "Total Min Response Time,Total Max Response Time,Total Average Content Size")

    def row(t: int, users: int, count: int, p50: str = "N/A") -> str:
        return f"{t},{users},,Aggregated,0,0,{p50},1,1,1,1,1,1,{p50},1,1,1,{count},0,1,1,1,1,1"

    other = "100,2,POST,/predict x1,0,0,5,1,1,1,1,1,1,9,1,1,1,999,0,1,1,1,1,1"
    lines = [header, row(100, 0, 0), row(101, 2, 0), row(102, 2, 10, "3"), row(103, 2, 30, "4"),
             row(104, 5, 40, "6"),  # a one-second stage: spawning between two, left out
             row(105, 8, 50, "7"), row(106, 8, 90, "8"), row(107, 8, 150, "9"), other]
    path = tmp_path / "h.csv"
    path.write_text("\n".join(lines) + "\n")
    stages = report.ramp_stages(report.read_history(path))
    assert [(s["users"], s["rps"], s["p50_ms"]) for s in stages] == [(2, 20.0, 4.0), (8, 60.0, 9.0)]
    named = report.read_history(path, "/predict x1")
    assert len(named) == 1 and named[0]["count"] == 999


@pytest.mark.parametrize(("rps", "ceiling", "bound"), [(800, 1000, True), (799, 1000, False), (1200, 1000, True),
                                                        (500, None, None), (None, 1000, None)])
def test_client_bound_is_80_percent_of_the_ceiling(rps, ceiling, bound):
    assert report.client_bound(rps, ceiling) is bound


def test_bandit_share_per_interval_from_a_recorded_timeline():
    timeline = json.loads((FIXTURES / "bandit_timeline.json").read_text())
    shares = report.arm_shares(timeline)
    assert shares, "the recorded timeline has pulls"
    for point in shares:
        assert sum(point["shares"].values()) == pytest.approx(1.0)
        assert point["pulls"] > 0
    # interval shares are differences of the cumulative pulls
    last = timeline[-1]["policy"]["arms"]
    assert sum(p["pulls"] for p in shares) <= sum(a["pulls"] for a in last.values())


def test_arm_shares_are_differences_of_cumulative_pulls():
    timeline = [{"t": 0, "policy": {"arms": {"a": {"pulls": 0}, "b": {"pulls": 0}}}},
                {"t": 1, "policy": {"arms": {"a": {"pulls": 10}, "b": {"pulls": 30}}}},
                {"t": 2, "error": "router down"},
                {"t": 3, "policy": {"arms": {"a": {"pulls": 100}, "b": {"pulls": 40}}}}]
    shares = report.arm_shares(timeline)
    assert [(p["t"], p["shares"], p["pulls"]) for p in shares] == [(1, {"a": 0.25, "b": 0.75}, 40),
                                                                   (3, {"a": 0.9, "b": 0.1}, 100)]


def test_canary_weight_in_percent_whether_weights_sum_to_100_or_1():
    timeline = [{"t": 0, "policy": {"weights": {"stable": 95, "candidate": 5}}, "supervisor": {"phase": "running"}},
                {"t": 1, "policy": {"weights": {"stable": 0.5, "candidate": 0.5}}},
                {"t": 2, "policy": {"kind": "shadow"}}]
    assert report.canary_weights(timeline) == [{"t": 0, "weight": 5.0, "phase": "running"},
                                               {"t": 1, "weight": 50.0, "phase": None}]
    recorded = report.canary_weights(json.loads((FIXTURES / "canary_timeline.json").read_text()))
    assert recorded and all(0 <= w["weight"] <= 100 for w in recorded)
    weights = [w["weight"] for w in recorded]
    assert weights == sorted(weights), "a promoted canary's weight only grows"


def results(history: list[dict], stream_rows_per_s_scale: float = 1.0) -> dict:
    stages = report.ramp_stages(history, 64)
    rest = [{**s, "rps": s["rps"] / 64 * 3, "rows_per_s": s["rps"] / 64 * 3} for s in report.ramp_stages(history, 1)]
    stream = [{**s, "rows_per_s": s["rows_per_s"] * stream_rows_per_s_scale} for s in stages]
    return {
        "meta": {"quick": True, "cores": 2, "processes": 2, "loadavg_start": 3.0, "loadavg_end": 4.0,
                 "model": "breast-cancer", "model_version": 1, "finished": "2026-12-01 11:00 UTC", "elapsed_s": 200,
                 "runs": "reports/loadtests/compare-x"},
        "modes": [
            {"key": "rest", "label": "real-time REST (1 row/request)", "rows": 1, "stages": rest,
             "ceiling_rps": 30.0, "accuracy": 0.98},
            {"key": "stream-batch", "label": "stream scoring, Kafka (64 rows/record)", "rows": 64, "stages": stream,
             "ceiling_rps": 10_000.0, "accuracy": 0.98},
        ],
        "inprocess": {"one_row_rows_per_s": 70_000.0, "batch_rows_per_s": 800_000.0, "batch_rows": 64},
        "patterns": [{"key": "embedded", "label": "embedded", "via": "app", "users": 8, "rps": 500.0, "p50_ms": 10.0,
                      "p99_ms": 40.0, "accuracy": 0.97, "ceiling_rps": 550.0, "client_bound": True}],
        "bandit": {"timeline": json.loads((FIXTURES / "bandit_timeline.json").read_text()), "users": 8,
                   "duration_s": 12, "better": "v1"},
        "canary": {"timeline": json.loads((FIXTURES / "canary_timeline.json").read_text()), "users": 8,
                   "steps": [5, 25, 50, 100], "bake_s": 2.0, "interval_s": 0.5},
    }


def test_goals_are_reported_met_or_not_from_the_figures(history):
    r = results(history)
    ten_x = next(g for g in report.goals(r) if "10x" in g["goal"])
    half = next(g for g in report.goals(r) if "50%" in g["goal"])
    sat_stream = report.saturation(r["modes"][1]["stages"])["rows_per_s"]
    sat_rest = report.saturation(r["modes"][0]["stages"])["rps"]
    assert ten_x["met"] is (sat_stream >= 10 * sat_rest)
    assert half["met"] is (sat_stream >= 0.5 * 800_000)
    assert {g["goal"].split(" (")[0] for g in report.goals(r) if g["met"]} >= {
        "the bandit converges on the better model", "the supervisor promotes the good canary step by step"}
    # 20x more stream rows/s: now half the in-process ceiling is reached
    boosted = results(history, stream_rows_per_s_scale=20)
    assert next(g for g in report.goals(boosted) if "50%" in g["goal"])["met"] is (
        report.saturation(boosted["modes"][1]["stages"])["rows_per_s"] >= 400_000)


def test_the_report_marks_client_bound_figures_and_writes_charts(history, tmp_path):
    r = results(history)
    out = report.write(r, tmp_path / "comparison.md")
    text = out.read_text()
    assert "## Goals" in text and "## What to choose when" in text
    assert "NOT met" in text or "| yes |" in text
    # REST's saturation (~36 req/s) is above 80% of its 30 req/s ceiling: client-bound
    rest_row = next(line for line in text.splitlines() if line.startswith("| real-time REST"))
    assert "(client-bound)" in rest_row
    stream_row = next(line for line in text.splitlines() if line.startswith("| stream scoring"))
    assert "(client-bound)" not in stream_row
    assert "| embedded | app | 500 (client-bound) |" in text
    assert "## The bandit's traffic share over time" in text
    assert "## The canary's weight over time under the supervisor" in text
    for png in ("comparison-modes.png", "comparison-patterns.png", "comparison-over-time.png"):
        assert (tmp_path / png).stat().st_size > 1000, png
        assert f"]({png})" in text
