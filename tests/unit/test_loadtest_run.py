"""`make loadtest` (loadtests/run.py) pieces that matter against a cluster: the figures it prints
(who answered, what a learning policy converged to), the options for a given host, and which id
the Locust user feeds back (the router's signed token, valid on any replica).

`bandit_timeline.json` is a recorded router policy timeline (see test_loadtest_report.py).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from loadtests import run
from loadtests.payloads import feedback_id

FIXTURES = Path(__file__).parent / "fixtures" / "loadtests"


def test_variant_shares_from_the_summary_quality() -> None:
    summary = {"quality": {"variants": {"v2": {"requests": 30}, "v1": {"requests": 90}}}}
    assert run.variant_shares(summary) == {"v1": 0.75, "v2": 0.25}
    assert run.variant_shares({"quality": {"variants": {}}}) == {}
    assert run.variant_shares({}) == {}


def test_late_arm_shares_of_a_recorded_bandit_timeline() -> None:
    points = json.loads((FIXTURES / "bandit_timeline.json").read_text())
    t_end = points[-1]["t"]
    start = next(p for p in points if p["t"] >= t_end * (1 - 1 / 3))
    end_arms, start_arms = points[-1]["policy"]["arms"], start["policy"]["arms"]
    pulls = {k: end_arms[k]["pulls"] - start_arms[k]["pulls"] for k in end_arms}
    shares = run.late_arm_shares(points)
    assert shares == pytest.approx({k: n / sum(pulls.values()) for k, n in pulls.items()})
    # the last third differs from the whole run's share (exploration at the start is left out)
    whole = {k: end_arms[k]["pulls"] / sum(a["pulls"] for a in end_arms.values()) for k in end_arms}
    assert shares != pytest.approx(whole)


def test_late_arm_shares_without_a_learning_policy() -> None:
    assert run.late_arm_shares([]) == {}
    assert run.late_arm_shares([{"t": 0, "error": "refused"}, {"t": 1, "policy": {"kind": "canary"}}]) == {}
    idle = [{"t": t, "policy": {"arms": {"v1": {"pulls": 5}}}} for t in (0, 1, 2)]
    assert run.late_arm_shares(idle) == {}


def test_describe_names_the_shares() -> None:
    summary = {"requests": 1200, "failures": 0, "rps": 40.0, "rows_per_s": 40.0,
               "main": {"p50_ms": 120.0, "p99_ms": 480.0},
               "quality": {"accuracy": 0.95, "variants": {"v1": {"requests": 900}, "v2": {"requests": 300}}},
               "late_arm_shares": {"v1": 0.98, "v2": 0.02}, "ceiling": {"rps": 900.0}, "client_bound": False}
    line = run.describe(summary)
    assert "1,200 requests, 0 failed, 40 req/s" in line
    assert "p50 120 ms, p99 480 ms" in line
    assert "answered by v1 75% v2 25%" in line
    assert "last third v1 98% v2 2%" in line
    assert "CLIENT-BOUND" not in line


def test_feedback_names_the_token_before_the_request_id() -> None:
    assert feedback_id({"x-request-id": "mine-1", "x-feedback-token": "tok"}) == "tok"
    assert feedback_id({"x-request-id": "tok"}) == "tok"
    assert feedback_id({}) is None


def test_a_given_host_with_its_supervisor(monkeypatch, tmp_path) -> None:
    """--host and --supervisor: the run goes to the host, the timeline polls both (no stack started)."""
    seen = {}

    def fake_measure(spec, out, *, ceiling_s, meta, router, supervisor, bootstrap):
        seen.update(host=spec.host, router=router, supervisor=supervisor, ceiling_s=ceiling_s, meta=meta,
                    argv=spec.argv(out))
        return {"requests": 1, "failures": 0, "rps": 1.0, "rows_per_s": 1.0, "exit_status": 0,
                "main": {"p50_ms": 1.0, "p99_ms": 1.0}}

    monkeypatch.setattr(run, "measure", fake_measure)
    monkeypatch.setattr(run, "start_pattern", lambda *a, **k: pytest.fail("no local stack with --host"))
    status = run.main(["--pattern", "canary", "--host", "http://127.0.0.1:18080", "--supervisor",
                       "http://127.0.0.1:18081", "--duration", "10s", "--ceiling-s", "0", "--out", str(tmp_path)])
    assert status == 0
    assert seen["host"] == seen["router"] == "http://127.0.0.1:18080"
    assert seen["supervisor"] == "http://127.0.0.1:18081"
    assert seen["ceiling_s"] is None
    assert seen["meta"]["stack_started_here"] is False
    argv = seen["argv"]
    assert argv[argv.index("--feedback") + 1] == "label" and "--unversioned" in argv
