"""A/B policy and its statistics: verdicts, false-positive rate, coverage, state.

Simulations are seeded, so each test is deterministic; the comments state how often a correct
implementation would fail each bound over random seeds.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy.stats import chi2_contingency, norm

from services.router.policies import (
    ABTestPolicy,
    InvalidRewardError,
    PolicyConfigError,
    PolicyStateError,
    RouteRequest,
    build_policy,
)
from services.router.policies.stats import ab_verdict, compare_proportions, msprt_p_value

ARMS = ["control", "treatment"]


def run_experiment(
    policy: ABTestPolicy, rates: dict[str, float], requests: int, seed: int, report_zeros: bool = False
) -> None:
    """Route ``requests`` unkeyed requests and feed back conversions drawn at the true rates."""
    env = np.random.default_rng(seed)
    u = env.random(requests)
    for i in range(requests):
        variant = policy.choose(RouteRequest(str(i))).variant
        converted = u[i] < rates[variant]
        if converted or report_zeros:
            policy.on_reward(variant, int(converted))


def test_known_effect_gives_b_better() -> None:
    policy = ABTestPolicy(ARMS, {"min_samples": 1000}, rng=11)
    # 10% vs 13% with ~20,000 per arm: z is about 9.4, so the verdict is certain for any seed.
    run_experiment(policy, {"control": 0.10, "treatment": 0.13}, 40_000, seed=1)
    report = policy.report(alpha=0.05)
    assert report["verdict"] == "treatment better"
    arms = report["arms"]
    assert arms["control"]["n"] + arms["treatment"]["n"] == 40_000
    assert abs(arms["control"]["n"] - 20_000) < 600  # Binomial(40000, 0.5): sd 100
    lo, hi = report["ci"]
    assert lo < report["difference"] < hi and lo < 0.03 < hi and lo > 0
    assert report["p_value"] < 1e-10
    assert report["always_valid_p_value"] < 0.05
    json.dumps(report, allow_nan=False)


def test_effect_in_favour_of_control_and_outcome_counting() -> None:
    policy = ABTestPolicy(ARMS, {"count_by": "outcomes", "min_samples": 1000}, rng=12)
    run_experiment(policy, {"control": 0.13, "treatment": 0.10}, 40_000, seed=2, report_zeros=True)
    report = policy.report()
    assert report["verdict"] == "control better"
    assert report["difference"] < 0
    for arm in report["arms"].values():
        assert arm["n"] == arm["outcomes"] == arm["assignments"]


def test_not_enough_data_below_min_samples() -> None:
    policy = ABTestPolicy(ARMS, {"min_samples": 1000}, rng=13)
    run_experiment(policy, {"control": 0.10, "treatment": 0.50}, 1_000, seed=3)
    report = policy.report()
    # A huge effect, but each arm has ~500 < 1000 samples.
    assert report["p_value"] < 1e-6
    assert report["verdict"] == "not enough data"
    assert policy.report(min_samples=100)["verdict"] == "treatment better"
    empty = ABTestPolicy(ARMS).report()
    assert empty["verdict"] == "not enough data" and empty["p_value"] is None


def test_a_a_false_positive_rate_is_alpha() -> None:
    # 400 A/A experiments (p = 10% in both arms, 5,000 per arm) at alpha = 0.05. The number of
    # false positives is Binomial(400, 0.05): mean 20, sd 4.4. Bounds [8, 35] (rate < 0.09)
    # fail a correct test with probability about 0.1% (low side) and 0.02% (high side).
    rng = np.random.default_rng(2024)
    conv = rng.binomial(5_000, 0.10, size=(400, 2))
    positives = sum(compare_proportions(int(a), 5_000, int(b), 5_000, 0.05).p_value < 0.05 for a, b in conv)
    assert 8 <= positives <= 35


def test_interval_coverage() -> None:
    # 400 experiments with a true difference of +0.03: the 95% interval covers it in
    # Binomial(400, 0.95) experiments, mean 380, sd 4.4; >= 364 fails once in ~10,000 seeds.
    rng = np.random.default_rng(7)
    n = 4_000
    a = rng.binomial(n, 0.10, size=400)
    b = rng.binomial(n, 0.13, size=400)
    covered = 0
    for xa, xb in zip(a, b, strict=True):
        cmp = compare_proportions(int(xa), n, int(xb), n, 0.05)
        covered += cmp.ci_low <= 0.03 <= cmp.ci_high
    assert covered >= 364


def test_z_test_agrees_with_scipy() -> None:
    for xa, na, xb, nb in [(100, 1000, 130, 1000), (5, 40, 9, 35), (2000, 20000, 2600, 20000)]:
        cmp = compare_proportions(xa, na, xb, nb, alpha=0.1)
        # z**2 equals Pearson's chi-square on the 2x2 table without continuity correction.
        table = [[xa, na - xa], [xb, nb - xb]]
        chi2, p, _, _ = chi2_contingency(table, correction=False)
        assert cmp.z**2 == pytest.approx(chi2, rel=1e-9)
        assert cmp.p_value == pytest.approx(p, rel=1e-9)
        ra, rb = xa / na, xb / nb
        half = norm.ppf(0.95) * math.sqrt(ra * (1 - ra) / na + rb * (1 - rb) / nb)
        assert (cmp.ci_low, cmp.ci_high) == pytest.approx((rb - ra - half, rb - ra + half), rel=1e-9)


def test_degenerate_counts() -> None:
    same = compare_proportions(0, 100, 0, 100)
    assert (same.z, same.p_value, same.ci_low, same.ci_high) == (0.0, 1.0, 0.0, 0.0)
    assert msprt_p_value(0, 100, 0, 100) == 1.0
    assert msprt_p_value(0, 100, 100, 100) < 0.01
    with pytest.raises(ValueError, match="conversions_b"):
        compare_proportions(1, 10, 11, 10)
    with pytest.raises(ValueError, match="n_a"):
        compare_proportions(0, 0, 1, 10)
    assert ab_verdict(None, 0, 0, 1, "a", "b") == "not enough data"


def test_msprt_survives_peeking_where_z_test_does_not() -> None:
    # 400 A/A experiments, each looked at 20 times (every 500 samples per arm) and stopped at the
    # first p < 0.05. Peeking inflates the z-test's false-positive rate far above 5% (about 20%
    # with 20 looks), while the mSPRT's always-valid p-value keeps it <= 5% by construction.
    # Bounds: z-test > 0.10 and mSPRT <= 0.075 (Binomial(400, 0.05) + 2.3 sd) -- both hold with
    # wide margins for a correct implementation.
    rng = np.random.default_rng(99)
    per_look = 500
    looks = 20
    conv = rng.binomial(per_look, 0.10, size=(400, looks, 2)).cumsum(axis=1)
    z_hits = msprt_hits = 0
    for exp in conv:
        z_stopped = msprt_stopped = False
        for k, (xa, xb) in enumerate(exp):
            n = per_look * (k + 1)
            z_stopped = z_stopped or compare_proportions(int(xa), n, int(xb), n).p_value < 0.05
            msprt_stopped = msprt_stopped or msprt_p_value(int(xa), n, int(xb), n, tau=0.02) < 0.05
        z_hits += z_stopped
        msprt_hits += msprt_stopped
    assert z_hits / 400 > 0.10
    assert msprt_hits / 400 <= 0.075


def test_sticky_assignment_and_counts() -> None:
    policy = ABTestPolicy(ARMS, {"split": {"control": 1, "treatment": 1}, "hash_salt": "exp-1"})
    first = [policy.choose(RouteRequest(str(i), key=f"user-{i}")).variant for i in range(2_000)]
    again = [policy.choose(RouteRequest(str(i), key=f"user-{i}")).variant for i in range(2_000)]
    assert first == again
    arms = policy.report()["arms"]
    assert arms["control"]["assignments"] == 2 * first.count("control")
    assert arms["treatment"]["assignments"] == 2 * first.count("treatment")
    decision = policy.choose(RouteRequest("x", key="user-1", override="treatment"))
    assert (decision.variant, decision.reason) == ("treatment", "override")


def test_rewards_are_validated() -> None:
    policy = ABTestPolicy(ARMS, rng=1)
    with pytest.raises(InvalidRewardError, match="0 or 1"):
        policy.on_reward("control", 0.5)
    # Nothing routed to control yet: a conversion cannot be counted against zero assignments.
    with pytest.raises(InvalidRewardError, match="more conversions than assignments"):
        policy.on_reward("control", 1)
    with pytest.raises(ValueError, match="unknown variant 'x'"):
        policy.on_reward("x", 1)


def test_state_round_trip() -> None:
    policy = build_policy("ab", ARMS, {"min_samples": 100}, rng_seed=5)
    run_experiment(policy, {"control": 0.2, "treatment": 0.3}, 3_000, seed=4)
    state = json.loads(json.dumps(policy.state()))
    restored = build_policy("ab", ARMS, {"min_samples": 100}, rng_seed=6)
    restored.load_state(state)
    assert restored.state() == policy.state()
    assert restored.report() == policy.report()
    # The restored policy keeps counting from where the old one stopped.
    restored.choose(RouteRequest("next", override="control"))
    assert restored.state()["arms"]["control"]["assignments"] == state["arms"]["control"]["assignments"] + 1
    bad = json.loads(json.dumps(state))
    bad["arms"]["control"]["conversions"] = -1
    with pytest.raises(PolicyStateError, match="control.conversions"):
        restored.load_state(bad)


@pytest.mark.parametrize(
    ("variants", "params", "problem"),
    [
        (["a", "b", "c"], {}, "exactly two variants"),
        (ARMS, {"split": {"control": 1, "treatment": 0}}, "split: every arm needs a positive share"),
        (ARMS, {"split": {"control": 1}}, "split: no weight for variants ['treatment']"),
        (ARMS, {"alpha": 1.5}, "alpha: Input should be less than 1"),
        (ARMS, {"min_samples": 0}, "min_samples: Input should be greater than or equal to 1"),
        (ARMS, {"count_by": "users"}, "count_by: Input should be 'assignments' or 'outcomes'"),
        (ARMS, {"alhpa": 0.1}, "alhpa: Extra inputs are not permitted"),
    ],
)
def test_bad_params(variants: list[str], params: dict, problem: str) -> None:
    with pytest.raises(PolicyConfigError) as info:
        build_policy("ab", variants, params)
    assert problem in str(info.value)
