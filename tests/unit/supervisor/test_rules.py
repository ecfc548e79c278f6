"""Every rule: pass, fail and inconclusive — missing, NaN, stale, no traffic, too few samples."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest

from services.supervisor.drift import DriftReport, FeatureDrift
from services.supervisor.rules import Evidence, RuleContext, RuleResult, evaluate_rule
from services.supervisor.spec import parse_spec
from services.supervisor.windows import Feedback, LatencyHistogram, Rewards, ShadowComparison, VariantWindow

NOW = 1000.0
CTX = RuleContext(now=NOW, stale_after_s=120.0, min_samples=200)
BOUNDS = (0.005, 0.01, 0.025, 0.05, 0.1, math.inf)


def rule(metric: str, **params):
    kind = {"ab_verdict": "ab-test"}.get(metric, "canary")
    if metric in ("shadow_agreement", "shadow_abs_dp"):
        params.setdefault("during", ["canary"])
    if metric == "reward":
        params.setdefault("threshold", 0.05)
    spec = parse_spec({"name": "r", "kind": kind, "stable": "stable", "candidate": "candidate",
                       "candidate_version": 2, "rules": [{"metric": metric, **params}]})
    return spec.rules[0]


def win(variant: str, requests=1000, errors=10, **fields) -> VariantWindow:
    base = {"start": 400.0, "end": 990.0, "observed_at": 990.0}
    return VariantWindow(variant=variant, requests=requests, errors=errors, **{**base, **fields})


def check(metric: str, stable: VariantWindow | None, candidate: VariantWindow | None, ctx: RuleContext = CTX,
          **params) -> RuleResult:
    result = evaluate_rule(rule(metric, **params), Evidence(stable, candidate), ctx, stable="stable",
                           candidate="candidate")
    json.dumps(result.to_dict(), allow_nan=False)  # every result serialises
    return result


WINDOW_RULES = ["error_rate", "latency_p99", "accuracy", "reward", "shadow_agreement", "shadow_abs_dp", "label_drift"]


def healthy(variant: str, requests: int = 1000) -> VariantWindow:
    """A window with every group filled, all good."""
    per_bucket = (requests * 50 // 100, requests * 90 // 100, requests * 99 // 100, requests, requests, requests)
    return win(
        variant,
        requests=requests,
        errors=requests // 100,
        latency=LatencyHistogram(BOUNDS, per_bucket),
        feedback=Feedback(requests // 2, int(requests // 2 * 0.95)),
        rewards=Rewards(requests, requests * 0.3, requests * 0.3),
        shadow=ShadowComparison(requests, int(requests * 0.99), requests * 0.01),
        predicted_labels={"0": requests * 4 // 10, "1": requests * 6 // 10},
    )


# --- inconclusive for every window rule: missing, stale, broken, no traffic, different spans --------------


@pytest.mark.parametrize("metric", WINDOW_RULES)
def test_a_missing_window_is_inconclusive(metric):
    for stable, candidate, who in [(None, healthy("candidate"), "stable"), (healthy("stable"), None, "candidate")]:
        result = check(metric, stable, candidate)
        assert result.verdict == "inconclusive" and f"no metrics window for the {who}" in result.reason


@pytest.mark.parametrize("metric", WINDOW_RULES)
def test_stale_metrics_are_inconclusive(metric):
    result = check(metric, healthy("stable"), replace(healthy("candidate"), observed_at=NOW - 500))
    assert result.verdict == "inconclusive" and "candidate metrics are stale: observed 500 s ago" in result.reason


@pytest.mark.parametrize("metric", WINDOW_RULES)
def test_no_traffic_is_never_healthy(metric):
    idle = replace(healthy("candidate"), requests=0, errors=0)
    result = check(metric, healthy("stable"), idle)
    assert result.verdict == "inconclusive" and "no traffic on the candidate" in result.reason


@pytest.mark.parametrize("metric", WINDOW_RULES)
def test_nan_request_counts_are_inconclusive_not_zero(metric):
    nan = replace(healthy("candidate"), requests=float("nan"))
    assert nan.requests is None
    result = check(metric, healthy("stable"), nan)
    assert result.verdict == "inconclusive" and "counts missing for the candidate" in result.reason


@pytest.mark.parametrize("metric", WINDOW_RULES)
def test_a_window_broken_by_a_counter_reset_is_inconclusive(metric):
    broken = replace(healthy("candidate"), requests=None, errors=None, problem="counter reset: requests went down")
    result = check(metric, healthy("stable"), broken)
    assert result.verdict == "inconclusive" and "counter reset" in result.reason


@pytest.mark.parametrize("metric", WINDOW_RULES)
def test_windows_over_different_spans_are_not_compared(metric):
    result = check(metric, healthy("stable"), replace(healthy("candidate"), start=100.0))
    assert result.verdict == "inconclusive" and "not a comparison over the same window" in result.reason


@pytest.mark.parametrize("metric", WINDOW_RULES)
def test_every_window_rule_passes_on_healthy_data(metric):
    result = check(metric, healthy("stable", 5000), healthy("candidate", 1000))
    assert result.verdict == "pass", result.reason


# --- error rate -----------------------------------------------------------------------------------------


def test_error_rate():
    good = check("error_rate", win("stable", 5000, 50), win("candidate", 1000, 12))
    assert (good.verdict, good.stable_value, good.candidate_value) == ("pass", 0.01, 0.012)
    assert (good.stable_n, good.candidate_n, good.threshold) == (5000, 1000, 0.01)
    bad = check("error_rate", win("stable", 5000, 50), win("candidate", 1000, 60))
    assert bad.verdict == "fail" and bad.p_value < 0.01 and bad.details["difference"] == pytest.approx(0.05)
    # z of H0 "increase <= 0.01": (0.05 - 0.01) / sqrt(0.06 * 0.94 / 1000 + 0.01 * 0.99 / 5000)
    assert bad.statistic == pytest.approx(0.04 / (0.06 * 0.94 / 1000 + 0.01 * 0.99 / 5000) ** 0.5)
    assert "error rate 0.06 (n=1000) vs stable 0.01 (n=5000)" in bad.reason
    assert "significantly above 0.01" in bad.reason
    # Past the threshold but on thin evidence: wait, do not fail and do not pass.
    unsure = check("error_rate", win("stable", 300, 3), win("candidate", 250, 8), threshold=0.01)
    assert unsure.verdict == "inconclusive" and "not significantly yet" in unsure.reason
    # Worse, significantly, but not significantly worse than the tolerance: no failure.
    within = check("error_rate", win("stable", 20_000, 200), win("candidate", 20_000, 380), threshold=0.01)
    assert within.verdict == "pass" and within.details["difference"] == pytest.approx(0.009)


def test_error_rate_waits_for_the_minimum_sample_and_says_how_long():
    result = check("error_rate", win("stable", 5000, 0), win("candidate", 59, 0))
    assert result.verdict == "inconclusive"
    assert "the candidate has 59 of the 200 needed" in result.reason and "about 1410 s more" in result.reason  # 0.1/s
    assert result.candidate_n == 59
    assert check("error_rate", win("stable", 5000, 0), win("candidate", 59, 0), min_samples=50).verdict == "pass"


def test_a_candidate_failing_everything_fails():
    result = check("error_rate", win("stable", 5000, 5), win("candidate", 500, 500))
    assert result.verdict == "fail" and result.candidate_value == 1.0


# --- latency -------------------------------------------------------------------------------------------


def hist(fast: int, slow: int) -> LatencyHistogram:
    # `fast` requests under 5 ms, `slow` between 50 and 100 ms.
    return LatencyHistogram(BOUNDS, (fast, fast, fast, fast, fast + slow, fast + slow))


def test_latency_p99():
    stable = win("stable", 5000, 0, latency=hist(5000, 0))
    slow = win("candidate", 1000, 0, latency=hist(900, 100))
    result = check("latency_p99", stable, slow)
    assert result.verdict == "fail" and result.statistic > 10
    assert result.stable_value == pytest.approx(0.00495) and result.candidate_value == pytest.approx(0.095)
    assert "over x1.25" in result.reason
    assert check("latency_p99", stable, win("candidate", 1000, 0, latency=hist(1000, 0))).verdict == "pass"


def test_a_tiny_latency_difference_never_fails_whatever_the_ratio():
    result = check("latency_p99", win("stable", 500, 0, latency_p99_s=0.0004),
                   win("candidate", 500, 0, latency_p99_s=0.0012))
    assert result.verdict == "pass" and result.statistic == pytest.approx(3.0)
    assert "tolerated below 5 ms" in result.reason


def test_latency_missing_or_nan_is_inconclusive():
    stable = win("stable", 5000, 0, latency_p99_s=0.01)
    result = check("latency_p99", stable, win("candidate", 1000, 0, latency_p99_s=float("nan")))
    assert result.verdict == "inconclusive" and "p99 latency missing (or NaN) for the candidate" in result.reason
    few = check("latency_p99", stable, win("candidate", 80, 0, latency_p99_s=0.5), min_samples=100)
    assert few.verdict == "inconclusive" and "80 of the 100 needed" in few.reason


# --- accuracy ------------------------------------------------------------------------------------------


def test_accuracy_from_feedback():
    stable = win("stable", 5000, 0, feedback=Feedback(2000, 1900))
    result = check("accuracy", stable, win("candidate", 1000, 0, feedback=Feedback(400, 210)))
    assert result.verdict == "fail" and result.candidate_value == 0.525 and result.stable_value == 0.95
    assert result.details["drop"] == pytest.approx(0.425) and result.statistic > 10 and result.p_value < 1e-10
    assert "accuracy 0.525 (n=400) vs stable 0.95 (n=2000)" in result.reason
    assert check("accuracy", stable, win("candidate", 1000, 0, feedback=Feedback(400, 378))).verdict == "pass"


def test_accuracy_without_labels_is_inconclusive():
    result = check("accuracy", win("stable", 5000, 0, feedback=Feedback(2000, 1900)), win("candidate", 1000, 0))
    assert result.verdict == "inconclusive" and "(missing for the candidate)" in result.reason
    few = check("accuracy", win("stable", 5000, 0, feedback=Feedback(2000, 1900)),
                win("candidate", 1000, 0, feedback=Feedback(20, 0)))
    assert few.verdict == "inconclusive" and "too few labelled outcomes" in few.reason


# --- reward --------------------------------------------------------------------------------------------


def test_mean_reward():
    stable = win("stable", 5000, 0, rewards=Rewards(2000, 600.0, 600.0))
    worse = check("reward", stable, win("candidate", 1000, 0, rewards=Rewards(1000, 150.0, 150.0)))
    assert worse.verdict == "fail" and worse.stable_value == 0.3 and worse.candidate_value == 0.15
    assert worse.statistic < 0 and worse.p_value < 1e-10 and "Welch" in worse.reason
    same = check("reward", stable, win("candidate", 1000, 0, rewards=Rewards(1000, 295.0, 295.0)))
    assert same.verdict == "pass"
    missing = check("reward", stable, win("candidate", 1000, 0))
    assert missing.verdict == "inconclusive" and "no rewards from both variants" in missing.reason


def test_constant_rewards_need_no_test():
    stable = win("stable", 5000, 0, rewards=Rewards(500, 500.0, 500.0))
    result = check("reward", stable, win("candidate", 500, 0, rewards=Rewards(500, 0.0, 0.0)))
    assert result.verdict == "fail" and result.statistic is None and result.p_value == 0.0


# --- shadow ---------------------------------------------------------------------------------------------


def test_shadow_agreement_and_abs_dp():
    stable = win("stable", 5000, 0)
    agreeing = win("candidate", 5000, 0, shadow=ShadowComparison(5000, 4950, 60.0))
    disagreeing = win("candidate", 5000, 0, shadow=ShadowComparison(5000, 4000, 900.0))
    assert check("shadow_agreement", stable, agreeing).verdict == "pass"
    bad = check("shadow_agreement", stable, disagreeing)
    assert bad.verdict == "fail" and bad.candidate_value == 0.8 and bad.p_value < 1e-10
    assert check("shadow_abs_dp", stable, agreeing).candidate_value == pytest.approx(0.012)
    dp = check("shadow_abs_dp", stable, disagreeing)
    assert dp.verdict == "fail" and dp.candidate_value == pytest.approx(0.18) and "above 0.05" in dp.reason
    nothing = check("shadow_agreement", stable, win("candidate", 5000, 0))
    assert nothing.verdict == "inconclusive" and "no shadow comparisons" in nothing.reason
    few = check("shadow_agreement", stable, win("candidate", 5000, 0, shadow=ShadowComparison(50, 10, 0.0)))
    assert few.verdict == "inconclusive" and "50 of the 200 needed" in few.reason


# --- label drift ---------------------------------------------------------------------------------------


def test_label_drift_between_the_variants():
    stable = win("stable", 5000, 0, predicted_labels={"0": 2000, "1": 3000})
    alike = check("label_drift", stable, win("candidate", 1000, 0, predicted_labels={"0": 410, "1": 590}))
    assert alike.verdict == "pass" and alike.statistic < 0.01
    skewed = check("label_drift", stable, win("candidate", 1000, 0, predicted_labels={"0": 980, "1": 20}))
    assert skewed.verdict == "fail" and skewed.statistic > 0.25 and skewed.p_value < 1e-10
    assert skewed.details["candidate_shares"]["0"] == 0.98
    missing = check("label_drift", stable, win("candidate", 1000, 0))
    assert missing.verdict == "inconclusive" and "predicted-label counts missing" in missing.reason


# --- A/B verdict ---------------------------------------------------------------------------------------


def ab_report(n_a: int, x_a: int, n_b: int, x_b: int) -> dict:
    """The shape of the router's ``ABTestPolicy.report()``."""
    return {
        "control": "stable",
        "treatment": "candidate",
        "count_by": "assignments",
        "min_samples": 1000,
        "alpha": 0.05,
        "arms": {
            "stable": {"assignments": n_a, "outcomes": n_a, "conversions": x_a, "n": n_a,
                       "rate": x_a / n_a if n_a else None},
            "candidate": {"assignments": n_b, "outcomes": n_b, "conversions": x_b, "n": n_b,
                          "rate": x_b / n_b if n_b else None},
        },
        "verdict": "not enough data",
    }


def ab(report, observed_at=NOW - 5, **params) -> RuleResult:
    result = evaluate_rule(rule("ab_verdict", **params), Evidence(None, None, report, observed_at), CTX,
                           stable="stable", candidate="candidate")
    json.dumps(result.to_dict(), allow_nan=False)
    return result


def test_ab_verdict():
    worse = ab(ab_report(20_000, 4000, 20_000, 3000))
    assert worse.verdict == "fail" and worse.details["winner"] == "stable" and worse.p_value < 1e-6
    assert worse.details["interval"][1] < 0 and "significantly worse" in worse.reason
    better = ab(ab_report(20_000, 3000, 20_000, 4000))
    assert better.verdict == "pass" and better.details["winner"] == "candidate"
    same = ab(ab_report(50_000, 10_000, 50_000, 10_050))
    assert same.verdict == "pass" and same.details["winner"] is None and "non-inferior" in same.reason
    unsure = ab(ab_report(1000, 200, 1000, 190))
    assert unsure.verdict == "inconclusive" and "not yet shown within 0.02" in unsure.reason


def test_ab_verdict_inconclusive_cases():
    assert "no A/B report" in ab(None).reason
    assert "stale" in ab(ab_report(20_000, 4000, 20_000, 3000), observed_at=NOW - 600).reason
    assert "freshness is unknown" in ab(ab_report(20_000, 4000, 20_000, 3000), observed_at=None).reason
    idle = ab(ab_report(20_000, 4000, 0, 0))
    assert idle.verdict == "inconclusive" and "no traffic is never healthy" in idle.reason
    few = ab(ab_report(150, 30, 150, 10))
    assert few.verdict == "inconclusive" and "150 of the 200 needed" in few.reason
    renamed = ab_report(20_000, 4000, 20_000, 3000)
    renamed["arms"] = {"a": renamed["arms"]["stable"], "b": renamed["arms"]["candidate"]}
    assert "no usable arms" in ab(renamed).reason
    nan = ab_report(20_000, 4000, 20_000, 3000)
    nan["arms"]["candidate"]["conversions"] = float("nan")
    assert ab(nan).verdict == "inconclusive"


# --- input drift ---------------------------------------------------------------------------------------


def drift_report(psi: float, rows: int = 1000, observed_at: float = NOW - 10) -> DriftReport:
    features = [FeatureDrift("a", 0.01, "ok", rows), FeatureDrift("b", psi, "ok", rows)]
    return DriftReport("m", 1, rows, observed_at, features, psi, "b", (0.01 + psi) / 2, "ok")


def drift(report, **params) -> RuleResult:
    result = evaluate_rule(rule("input_drift", **params), Evidence(None, None, drift=report), CTX,
                           stable="stable", candidate="candidate")
    json.dumps(result.to_dict(), allow_nan=False)
    return result


def test_input_drift():
    calm = drift(drift_report(0.03))
    assert calm.verdict == "pass" and calm.warning is None
    warm = drift(drift_report(0.15))
    assert warm.verdict == "pass" and "above the warn level 0.1" in warm.warning
    hot = drift(drift_report(0.4))
    assert hot.verdict == "fail" and hot.on_fail == "block" and hot.details["feature"] == "b"
    assert "largest input PSI 0.400 ('b')" in hot.reason
    assert "no input drift report" in drift(None).reason
    assert "stale" in drift(drift_report(0.4, observed_at=NOW - 999)).reason
    few = drift(drift_report(0.4, rows=100))
    assert few.verdict == "inconclusive" and "100 of the 500 needed" in few.reason
