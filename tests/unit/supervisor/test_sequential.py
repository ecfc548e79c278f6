"""Sequential tests, statistically: seeded simulated monitoring runs, checked with binomial bounds.

Each simulated run monitors a rollout the way the supervisor does — one update per interval,
a look after every interval, the split moving 5% -> 25% -> 50% — and stops at the first
rejection. Over many runs, an equally good candidate must be rejected at most alpha of the
time (the one-sided exact binomial test must not show the false-rollback rate above alpha),
and a clearly worse one must be caught within a stated number of candidate samples.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import stats

from services.supervisor.sequential import (
    DEFAULT_MIN_LOG_ODDS,
    MeanTest,
    ProportionTest,
    proportion_confidence_sequence,
    test_from_dict,
)

ALPHA = 0.05
STEPS = (0.05, 0.25, 0.50)


def _split(rng: np.random.Generator, interval: int, rate: int, per_step: int) -> tuple[int, int]:
    n = int(rng.poisson(rate))
    n_c = int(rng.binomial(n, STEPS[min(interval // per_step, len(STEPS) - 1)]))
    return n - n_c, n_c


def proportion_run(rng, p_stable: float, p_candidate: float, intervals: int, rate: int, per_step: int = 30,
                   alpha: float = ALPHA, min_log_odds: float = DEFAULT_MIN_LOG_ODDS) -> int | None:
    """Candidate samples seen when the test first rejects, or None if it never does."""
    test = ProportionTest("error_rate", alpha=alpha, min_log_odds=min_log_odds)
    for k in range(intervals):
        n_s, n_c = _split(rng, k, rate, per_step)
        test = test.update(n_s, int(rng.binomial(n_s, p_stable)), n_c, int(rng.binomial(n_c, p_candidate)))
        if test.rejected:
            return test.candidate_n
    return None


def mean_run(rng, m_stable: float, m_candidate: float, intervals: int, rate: int, per_step: int = 30) -> int | None:
    test = MeanTest(alpha=ALPHA)
    for k in range(intervals):
        n_s, n_c = _split(rng, k, rate, per_step)
        x_s, x_c = float(rng.binomial(n_s, m_stable)), float(rng.binomial(n_c, m_candidate))
        # 0/1 rewards: the sum of squares equals the sum.
        test = test.update((n_s, x_s, x_s), (n_c, x_c, x_c))
        if test.rejected:
            return test.candidate[0]
    return None


def assert_rate_at_most(rejections: int, runs: int, alpha: float) -> None:
    # H0 of this check: the false-rollback rate is <= alpha. Failing it would take strong evidence
    # (p < 0.001) that the rate is above alpha, so a correct test essentially never fails here.
    p = stats.binomtest(rejections, runs, alpha, alternative="greater").pvalue
    assert p > 0.001, f"{rejections}/{runs} false rollbacks: the rate is significantly above alpha={alpha}"


def test_equal_error_rates_are_falsely_rolled_back_at_most_alpha_of_the_time():
    # 500 monitoring runs of 90 looks each, 1% errors on both sides, rare events at a 5% canary.
    rng = np.random.default_rng(20261201)
    runs = 500
    rejections = sum(proportion_run(rng, 0.01, 0.01, intervals=90, rate=600) is not None for _ in range(runs))
    assert_rate_at_most(rejections, runs, ALPHA)
    # Ville's bound is conservative: the measured rate is well below alpha (14 of 500 with this seed).
    assert rejections / runs < ALPHA


def test_equal_rates_at_a_high_base_rate_are_falsely_rolled_back_at_most_alpha():
    # Mispredictions are not rare: 10% on both sides.
    rng = np.random.default_rng(7)
    runs = 300
    rejections = sum(proportion_run(rng, 0.10, 0.10, intervals=60, rate=100) is not None for _ in range(runs))
    assert_rate_at_most(rejections, runs, ALPHA)


def test_a_better_candidate_is_not_rolled_back():
    rng = np.random.default_rng(11)
    runs = 200
    rejections = sum(proportion_run(rng, 0.02, 0.005, intervals=60, rate=600) is not None for _ in range(runs))
    assert_rate_at_most(rejections, runs, ALPHA)
    assert rejections == 0


def test_a_candidate_with_five_times_the_error_rate_is_caught_within_1000_candidate_requests():
    # 1% vs 5% errors at a 5% canary (30 candidate requests an interval). Stated detection speed,
    # measured over these 100 seeded runs: median 110 candidate requests, 95th percentile ~300,
    # every run within 700 — at 600 requests a minute, a few minutes at the 5% step.
    rng = np.random.default_rng(5)
    caught = [proportion_run(rng, 0.01, 0.05, intervals=2000, rate=600, per_step=10**9) for _ in range(100)]
    assert all(n is not None for n in caught)
    assert max(caught) <= 1000
    assert np.median(caught) <= 200
    assert np.percentile(caught, 95) <= 400


def test_a_failing_candidate_is_caught_at_the_first_looks():
    # Every candidate request fails: caught within the first two intervals (~30 requests each).
    rng = np.random.default_rng(6)
    caught = [proportion_run(rng, 0.01, 1.0, intervals=100, rate=600, per_step=10**9) for _ in range(50)]
    assert all(n is not None and n <= 80 for n in caught)


def test_every_interval_ratio_has_expectation_one_under_equal_rates():
    # The martingale property itself, exactly: summing the mixture ratio over the hypergeometric
    # law of the candidate's share of the errors gives 1 for any margins.
    for n_s, n_c, events in [(950, 50, 1), (950, 50, 12), (300, 300, 40), (10, 990, 5), (5, 5, 7)]:
        support = range(max(0, events - n_s), min(n_c, events) + 1)
        pmf = stats.hypergeom.pmf(list(support), n_s + n_c, n_c, events)
        ratios = [math.exp(ProportionTest("e").update(n_s, events - y, n_c, y).log_mixture) for y in support]
        assert float(np.dot(pmf, ratios)) == pytest.approx(1.0, rel=1e-9)


def test_equal_rewards_are_falsely_rolled_back_at_most_alpha_of_the_time():
    rng = np.random.default_rng(3)
    runs = 500
    rejections = sum(mean_run(rng, 0.3, 0.3, intervals=90, rate=600) is not None for _ in range(runs))
    assert_rate_at_most(rejections, runs, ALPHA)
    rare = sum(mean_run(rng, 0.05, 0.05, intervals=60, rate=600) is not None for _ in range(200))
    assert_rate_at_most(rare, 200, ALPHA)


def test_a_lower_reward_is_caught():
    # 0.30 vs 0.20 mean reward at a 5% canary: median ~200 candidate rewards over 200 runs.
    rng = np.random.default_rng(4)
    caught = [mean_run(rng, 0.30, 0.20, intervals=2000, rate=600, per_step=10**9) for _ in range(50)]
    assert all(n is not None and n <= 1000 for n in caught)


def test_intervals_without_events_or_traffic_carry_no_evidence():
    test = ProportionTest("e")
    for counts in [(1000, 0, 50, 0), (1000, 10, 0, 0), (0, 0, 50, 5)]:
        assert test.update(*counts).log_mixture == pytest.approx(0.0)
    assert MeanTest().update((10, 5.0, 5.0), (10, 5.0, 5.0)).info == 0.0  # below min_block: pending


def test_a_rejection_is_sticky_and_the_result_explains_it():
    test = ProportionTest("error_rate", alpha=0.05).update(1000, 10, 50, 30)
    assert test.rejected
    test = test.update(100_000, 1000, 100_000, 1000)  # lots of equal data afterwards
    result = test.result()
    assert result.rejected and result.p_value < 0.05
    assert result.threshold == pytest.approx(math.log(20))
    assert "error rate significantly higher" in result.reason and "n=100050" in result.reason


def test_states_round_trip_through_json():
    p = ProportionTest("misprediction_rate", alpha=0.01).update(500, 20, 40, 6).update(700, 10, 60, 2)
    m = MeanTest(min_block=5).update((10, 4.0, 4.0), (8, 2.0, 2.0)).update((10, 5.0, 5.0), (3, 1.0, 1.0))
    for test in (p, m):
        back = test_from_dict(json.loads(json.dumps(test.to_dict())))
        assert back == test and back.result() == test.result()
    with pytest.raises(ValueError, match="unknown kind"):
        test_from_dict({"kind": "bayes"})


@pytest.mark.parametrize(
    "bad",
    [lambda: ProportionTest("e", alpha=0), lambda: ProportionTest("e", log_odds_sd=-1),
     lambda: ProportionTest("e", min_log_odds=-0.1), lambda: ProportionTest("e", min_log_odds=float("nan")),
     lambda: ProportionTest("e").update(10, 11, 10, 0), lambda: MeanTest(tau=0), lambda: MeanTest(min_block=1),
     lambda: MeanTest().update((5, float("nan"), 1.0), (5, 1.0, 1.0))],
)
def test_invalid_parameters_and_counts_are_refused(bad):
    with pytest.raises(ValueError):
        bad()


def test_the_confidence_sequence_matches_the_msprt_and_covers_under_continuous_monitoring():
    cs = proportion_confidence_sequence(100, 1000, 130, 1000, tau=0.02, alpha=0.05)
    assert cs.difference == pytest.approx(0.03) and cs.low < cs.difference < cs.high
    # The interval excludes 0 exactly when the always-valid p-value is below alpha.
    for x_b in range(100, 160, 5):
        cs = proportion_confidence_sequence(100, 1000, x_b, 1000, tau=0.02, alpha=0.05)
        assert (cs.low > 0) == (cs.p_value < 0.05)
    # Fixed 50/50 split, equal rates, a look every 100 samples: wrongly excluding 0 at any look
    # happens at most alpha of the time.
    rng = np.random.default_rng(9)
    runs, misses = 300, 0
    for _ in range(runs):
        x = np.cumsum(rng.binomial(1, 0.2, size=(2, 5000)), axis=1)
        for n in range(100, 5001, 100):
            cs = proportion_confidence_sequence(int(x[0, n - 1]), n, int(x[1, n - 1]), n, tau=0.02, alpha=0.05)
            if cs is not None and (cs.low > 0 or cs.high < 0):
                misses += 1
                break
    assert_rate_at_most(misses, runs, 0.05)
    assert proportion_confidence_sequence(0, 10, 0, 10, tau=0.02, alpha=0.05) is None


@pytest.mark.parametrize("min_log_odds", [0.0, math.log(4.0)])
def test_where_the_mixture_starts_does_not_change_the_false_rollback_bound(min_log_odds):
    # The default starts at an odds ratio of 2 (the tests above); from 1 (no effect) and from 4 the
    # mixture is still one of martingales under equal rates, so the bound holds at every look.
    rng = np.random.default_rng(31)
    runs = 300
    rejections = sum(proportion_run(rng, 0.02, 0.02, intervals=60, rate=600, min_log_odds=min_log_odds) is not None
                     for _ in range(runs))
    assert_rate_at_most(rejections, runs, ALPHA)
    for n_s, n_c, events in [(950, 50, 3), (300, 300, 40)]:
        support = range(max(0, events - n_s), min(n_c, events) + 1)
        pmf = stats.hypergeom.pmf(list(support), n_s + n_c, n_c, events)
        ratios = [math.exp(ProportionTest("e", min_log_odds=min_log_odds).update(n_s, events - y, n_c, y).log_mixture)
                  for y in support]
        assert float(np.dot(pmf, ratios)) == pytest.approx(1.0, rel=1e-9)


def test_a_mixture_starting_at_the_smallest_effect_worth_catching_catches_a_marginal_candidate_sooner():
    # 0.5 % vs 2 % errors at a 10 % canary (60 candidate requests a minute), the supervisor's
    # alpha per test: the same seeded streams for both mixtures. Measured: median 506 candidate
    # requests from an odds ratio of 2, 622 from 1 (no effect), over these 60 runs.
    def median_caught(min_log_odds: float) -> float:
        rng = np.random.default_rng(12)
        caught = [proportion_run(rng, 0.005, 0.02, intervals=400, rate=600, per_step=10**9, alpha=0.005,
                                 min_log_odds=min_log_odds) for _ in range(60)]
        assert all(n is not None for n in caught)
        return float(np.median(caught))

    shifted, centred = median_caught(DEFAULT_MIN_LOG_ODDS), median_caught(0.0)
    assert shifted < 0.85 * centred, (shifted, centred)


def test_a_state_persisted_before_the_mixture_had_a_start_resumes_with_its_own_mixture():
    old = ProportionTest("error_rate", min_log_odds=0.0).update(900, 5, 100, 4)
    raw = json.loads(json.dumps(old.to_dict()))
    del raw["min_log_odds"]  # what a state written by the earlier code looks like
    back = test_from_dict(raw)
    assert back.min_log_odds == 0.0 and back.log_mixture == pytest.approx(old.log_mixture)
    assert back.update(900, 5, 100, 1) == old.update(900, 5, 100, 1)
    # A fresh state without evidence has nothing to be consistent with: it takes the default.
    fresh = ProportionTest("error_rate").to_dict()
    del fresh["min_log_odds"]
    assert test_from_dict(fresh).min_log_odds == DEFAULT_MIN_LOG_ODDS
