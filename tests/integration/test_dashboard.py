"""The supervisor's dashboard in a real headless Chromium, over the real canary stack.

`routed_pattern("canary")` (what `make up PATTERN=canary` runs: two model servers, the router,
the supervisor) with a quick rollout spec; traffic with label feedback runs in a thread (the
`Traffic` of test_supervisor.py). Debian's `chromium` (`make chromium`), driven by Playwright's
Python client against that executable (Playwright's own browsers are never downloaded), opens the
page and waits — bounded waits, no wall-clock assertions — until it shows live numbers, until the
request count grows as more traffic flows, and until a step decision with its rules' evidence is
in the history. Every request the page makes goes to the supervisor. The screenshot is kept in
`.run/test-artifacts/dashboard.png` (also when the test fails). Processes and the browser are
always stopped.
"""

from __future__ import annotations

import contextlib
import re
import shutil
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from services.stack.paths import REPO_ROOT
from services.stack.routed import routed_pattern
from services.supervisor.dashboard import arm_shares, history
from tests.integration.test_supervisor import Traffic

pytestmark = pytest.mark.integration

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ARTIFACTS = REPO_ROOT / ".run" / "test-artifacts"
WAIT_MS = 90_000

SPEC: dict[str, Any] = {
    "name": "bc-dashboard",
    "kind": "canary",
    "stable": "stable",
    "candidate": "candidate",
    "candidate_version": 2,
    "steps": [10, 50, 100],
    "bake_s": 3.0,
    "interval_s": 1.0,
    "stale_after_s": 5.0,
    "min_samples": 20,
    "failure_limit": 2,
    "max_inconclusive": None,
    "sequential": {"enabled": True, "alpha": 0.01, "tests": ["error_rate"]},
    "rules": [
        {"metric": "error_rate", "threshold": 0.02},
        {"metric": "latency_p99", "threshold": 3.0, "min_difference_s": 0.05},
        {"metric": "accuracy", "threshold": 0.05, "min_samples": 20},
    ],
}

TOTAL_REQUESTS_JS = """() => [...document.querySelectorAll('#variants tbody td.requests')]
    .map(td => parseInt(td.textContent, 10)).filter(n => !Number.isNaN(n)).reduce((a, b) => a + b, 0)"""


@pytest.fixture
def canary_stack(tmp_path: Path, start_service) -> dict[str, str]:
    spec_path = tmp_path / "rollout.yaml"
    spec_path.write_text(yaml.safe_dump(SPEC, sort_keys=False))
    stack = routed_pattern("canary", run_dir=tmp_path / "run", rollout_spec=spec_path, supervisor_interval_s=None)
    for proc in stack.processes:
        start_service(proc, 90)
    return stack.endpoints


@pytest.fixture
def browser():
    if not Path(CHROMIUM).exists() and shutil.which("chromium") is None:
        pytest.fail("Debian's chromium is missing: run `make chromium` (apt-get install -y chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield b
        finally:
            b.close()


def test_static_files_are_served_with_their_content_types(canary_stack: dict[str, str]) -> None:
    url = canary_stack["supervisor"]
    expected = {"/": "text/html", "/static/dashboard.js": "javascript", "/static/dashboard.css": "text/css",
                "/static/vendor/uplot/uPlot.iife.min.js": "javascript",
                "/static/vendor/uplot/uPlot.min.css": "text/css"}
    for path, kind in expected.items():
        r = httpx.get(url + path, timeout=5)
        assert r.status_code == 200, path
        assert kind in r.headers["content-type"], (path, r.headers["content-type"])
    assert httpx.get(url + "/dashboard", timeout=5, follow_redirects=True).url.path == "/"
    doc = httpx.get(url + "/api/dashboard", timeout=5).json()
    assert doc["status"]["rollout"] == "bc-dashboard"
    assert [v["variant"] for v in doc["variants"]] == ["stable", "candidate"]
    assert doc["drift"]["connected"] is False and doc["drift"]["why"]


def test_dashboard_shows_live_numbers_and_decisions_in_chromium(canary_stack: dict[str, str], rows, browser) -> None:
    url = canary_stack["supervisor"]
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "dashboard.png"
    requested: list[str] = []
    page_errors: list[str] = []
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.set_default_timeout(WAIT_MS)
    page.on("request", lambda request: requested.append(request.url))
    page.on("pageerror", lambda exc: page_errors.append(str(exc)))
    try:
        with Traffic(canary_stack["router"], rows) as traffic:
            page.goto(url + "/")
            page.wait_for_function("document.getElementById('connection').textContent === 'live'")
            assert page.text_content("#rollout-name") == "bc-dashboard"

            # Live numbers: a request rate for the stable variant and a request count above zero.
            page.wait_for_function(
                "() => /^[0-9.]+$/.test(document.querySelector('#variants tr[data-variant=stable] td.rps')"
                ".textContent.trim())")
            page.wait_for_function(f"({TOTAL_REQUESTS_JS})() > 0")
            first = page.evaluate(TOTAL_REQUESTS_JS)
            # ...that change as more traffic flows.
            page.wait_for_function(f"({TOTAL_REQUESTS_JS})() > {first}")
            assert page.evaluate(TOTAL_REQUESTS_JS) > first

            # A step decision (the canary moved on from 10%) appears in the history, with evidence.
            page.wait_for_function("() => [...document.querySelectorAll('#decisions summary .action')]"
                                   ".some(b => b.textContent === 'step')")
            step = page.locator("#decisions details").filter(has=page.locator(".action", has_text=re.compile("^step$")))
            step.first.locator("summary").click()
            evidence = page.locator("#decisions details[open] .evidence").first.text_content()
            assert "error_rate" in evidence and "accuracy" in evidence, evidence
            assert int(page.text_content("#decision-count")) >= 2

            # Charts drawn (uPlot canvases) and input drift per feature from the router's input tap
            # (make up's canary router keeps a sample of the inputs, compared with the training bins).
            assert page.locator(".charts canvas").count() >= 5
            page.wait_for_function("() => document.querySelector('#drift').textContent.includes('Overall PSI')")
            drift_text = page.text_content("#drift")
            assert "mean radius" in drift_text, drift_text
            assert traffic.sent > 0
            page.wait_for_timeout(6000)  # let the charts gather a few more points for the screenshot
    finally:
        with contextlib.suppress(Exception):  # never hide the failure that got us here
            page.screenshot(path=str(shot), full_page=True)
        page.close()
    assert shot.stat().st_size > 10_000
    assert not page_errors, page_errors
    outside = [u for u in requested if not u.startswith(url + "/")]
    assert not outside, f"the page reached beyond the supervisor: {outside}"


def test_history_folds_repeated_decisions_and_keeps_the_actions_in_view() -> None:
    def record(check: int, kind: str, explanation: str, verdict: str = "pass") -> dict[str, Any]:
        return {"check": check, "at": float(check), "verdict": verdict, "explanation": explanation,
                "action": {"kind": kind, "candidate_weight": None}, "apply": {"status": "not_needed"},
                "rules": [{"rule": "accuracy", "verdict": verdict, "candidate_value": 0.9, "details": {"big": 1}}]}

    records = [record(1, "start", "start"), record(2, "step", "step")] + [
        record(i, "none", "finished", "none") for i in range(3, 103)]
    shown = history(records, limit=40)
    assert [(d["first_check"], d["check"], d["action"]["kind"], d["repeated"]) for d in shown] == [
        (3, 102, "none", 100), (2, 2, "step", 1), (1, 1, "start", 1)]
    assert "details" not in shown[1]["rules"][0] and shown[1]["rules"][0]["candidate_value"] == 0.9
    assert len(history([record(i, "hold", f"holding {i}") for i in range(100)], limit=40)) == 40


def test_arm_shares_for_bandits_and_ab_tests() -> None:
    bandit = {"kind": "thompson", "state": {"arms": {"a": {"pulls": 30, "rewards": 10, "reward_sum": 5.0},
                                                     "b": {"pulls": 10, "rewards": 0, "reward_sum": 0.0}}}}
    shares = arm_shares(bandit)
    assert shares["counted_by"] == "pulls" and shares["total"] == 40
    assert shares["arms"]["a"]["share"] == 0.75 and shares["arms"]["a"]["mean_reward"] == 0.5
    assert shares["arms"]["b"]["mean_reward"] is None  # no rewards: unknown, never 0
    ab = {"kind": "ab", "state": {"arms": {"a": {"assignments": 5, "outcomes": 4, "conversions": 1},
                                           "b": {"assignments": 15, "outcomes": 0, "conversions": 0}}}}
    assert arm_shares(ab)["counted_by"] == "assignments" and arm_shares(ab)["arms"]["b"]["share"] == 0.75
    assert arm_shares(ab)["arms"]["a"]["mean_reward"] == 0.25 and arm_shares(ab)["arms"]["b"]["mean_reward"] is None
    assert arm_shares({"kind": "canary", "state": {"weights": {"a": 90, "b": 10}}}) is None
