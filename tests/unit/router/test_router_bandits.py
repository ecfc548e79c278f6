"""Bandit policies in simulated environments, plus their bookkeeping and persistence.

Environment: three arms with Bernoulli rewards p = 0.05, 0.15, 0.30, immediate feedback,
20,000 rounds, seeds 0-4. The gaps (0.15) are wide enough for UCB1's confidence bonus to settle
within the run; with gaps of 0.05 (p = 0.05/0.10/0.15) UCB1 still explores ~10% of late pulls.
"""

from __future__ import annotations

import json
import math
import threading
from functools import cache

import numpy as np
import pytest

from services.router.policies import (
    EpsilonGreedyPolicy,
    InvalidRewardError,
    PolicyConfigError,
    PolicyStateError,
    RouteRequest,
    ThompsonPolicy,
    UCB1Policy,
    UnknownVariantError,
    build_policy,
)
from services.router.policies.bandit import BanditPolicy

PROBS = (0.05, 0.15, 0.30)
ROUNDS = 20_000
SEEDS = range(5)
ARMS = ["v0", "v1", "v2"]
REQUEST = RouteRequest("r")
KINDS = {
    "epsilon_greedy": {"epsilon": 0.1},
    "ucb1": {},
    "thompson": {"reward": "bernoulli"},
}


@cache
def simulate(kind: str, seed: int) -> tuple[np.ndarray, BanditPolicy]:
    """Chosen arm per round. Environment draws come from their own seeded stream, so every
    policy faces the same uniform numbers for a given seed."""
    policy = build_policy(kind, ARMS, KINDS[kind], rng_seed=seed)
    u = np.random.default_rng(10_000 + seed).random(ROUNDS)
    index = {v: i for i, v in enumerate(ARMS)}
    chosen = np.empty(ROUNDS, dtype=np.int64)
    for t in range(ROUNDS):
        variant = policy.choose(REQUEST).variant
        i = index[variant]
        chosen[t] = i
        policy.on_reward(variant, 1.0 if u[t] < PROBS[i] else 0.0)
    return chosen, policy


def true_regret(chosen: np.ndarray) -> float:
    probs = np.asarray(PROBS)
    return float((probs.max() - probs[chosen]).sum())


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("kind", KINDS)
def test_late_pulls_go_to_best_arm(kind: str, seed: int) -> None:
    chosen, policy = simulate(kind, seed)
    late = chosen[int(ROUNDS * 0.8) :]
    # Epsilon-greedy with epsilon = 0.1 explores 10% of rounds, 2/3 of which land on other
    # arms: its ceiling is 93.3% (Binomial sd over 4,000 late rounds: 0.4 points), so 90% is
    # a 8-sd margin once the greedy arm is right. UCB1 and Thompson reach ~99%.
    assert (late == int(np.argmax(PROBS))).mean() >= 0.90
    state = policy.state()
    assert state["total_pulls"] == ROUNDS == sum(a["pulls"] for a in state["arms"].values())
    assert sum(a["rewards"] for a in state["arms"].values()) == ROUNDS


def test_thompson_regret_below_epsilon_greedy() -> None:
    thompson = np.mean([true_regret(simulate("thompson", s)[0]) for s in SEEDS])
    greedy = np.mean([true_regret(simulate("epsilon_greedy", s)[0]) for s in SEEDS])
    # Thompson's regret grows logarithmically (~25 here); constant-epsilon greedy pays about
    # 0.1 * mean gap * rounds (~280) -- an order of magnitude apart.
    assert thompson < greedy / 3


def test_estimated_regret_tracks_true_regret() -> None:
    chosen, policy = simulate("epsilon_greedy", 0)
    estimated = policy.state()["estimated_regret"]
    # Plug-in estimate with empirical means; the arms are pulled thousands of times by the end,
    # so the means are within a few points of truth and the estimate within ~20%.
    assert estimated == pytest.approx(true_regret(chosen), rel=0.2)


def test_gaussian_thompson_finds_best_arm() -> None:
    means = np.array([1.0, 1.25, 1.5])
    rounds = 5_000
    for seed in range(3):
        policy = ThompsonPolicy(ARMS, {"reward": "gaussian", "prior_mean": 1.0}, rng=seed)
        env = np.random.default_rng(500 + seed)
        noise = env.normal(0.0, 1.0, size=rounds)
        chosen = np.empty(rounds, dtype=np.int64)
        for t in range(rounds):
            variant = policy.choose(REQUEST).variant
            i = ARMS.index(variant)
            chosen[t] = i
            policy.on_reward(variant, float(means[i] + noise[t]))
        # Gap 0.25 with unit noise: the posterior separates the arms within a few hundred
        # pulls; late (last 20%) pulls on the best arm are 97-100% on these seeds.
        assert (chosen[int(rounds * 0.8) :] == 2).mean() >= 0.90
        posterior = policy.state()["posterior"]["v2"]
        assert posterior["mu"] == pytest.approx(1.5, abs=0.1)
        # Posterior mean of the variance, beta / (alpha - 1), is close to the true 1.0.
        assert posterior["beta"] / (posterior["alpha"] - 1) == pytest.approx(1.0, rel=0.15)


def test_thompson_posteriors_are_conjugate_updates() -> None:
    bern = ThompsonPolicy(ARMS, {"prior_alpha": 2.0, "prior_beta": 3.0}, rng=0)
    for r in (1, 0, 1, 1, 0.5):
        bern.on_reward("v1", r)
    assert bern.state()["posterior"]["v1"] == {"alpha": 2.0 + 3.5, "beta": 3.0 + 1.5}
    assert bern.state()["posterior"]["v0"] == {"alpha": 2.0, "beta": 3.0}

    params = {"reward": "gaussian", "prior_mean": 0.5, "prior_strength": 2.0, "prior_shape": 3.0, "prior_scale": 4.0}
    gauss = ThompsonPolicy(ARMS, params, rng=0)
    rewards = np.random.default_rng(3).normal(2.0, 0.7, size=50)
    for r in rewards:
        gauss.on_reward("v2", float(r))
    n, xbar = len(rewards), rewards.mean()
    kappa = 2.0 + n
    expected = {
        "mu": (2.0 * 0.5 + rewards.sum()) / kappa,
        "kappa": kappa,
        "alpha": 3.0 + n / 2,
        "beta": 4.0 + ((rewards - xbar) ** 2).sum() / 2 + 2.0 * n * (xbar - 0.5) ** 2 / (2 * kappa),
    }
    assert gauss.state()["posterior"]["v2"] == pytest.approx(expected, rel=1e-12)


def test_epsilon_decay_and_floor() -> None:
    policy = EpsilonGreedyPolicy(ARMS, {"epsilon": 0.5, "epsilon_decay": 0.01, "min_epsilon": 0.1}, rng=0)
    assert policy.epsilon == 0.5
    for _ in range(100):
        policy.choose(REQUEST)
    assert policy.epsilon == pytest.approx(0.5 / (1 + 0.01 * 100))
    for _ in range(1_000):
        policy.choose(REQUEST)
    assert policy.epsilon == 0.1
    assert policy.state()["epsilon"] == 0.1


def test_every_arm_is_tried_first() -> None:
    for cls in (EpsilonGreedyPolicy, UCB1Policy):
        policy = cls(ARMS, rng=1)
        first = {policy.choose(REQUEST).variant for _ in ARMS}
        assert first == set(ARMS)


def test_pulls_count_at_choose_and_rewards_may_lag() -> None:
    policy = UCB1Policy(ARMS, rng=2)
    decisions = [policy.choose(REQUEST) for _ in range(30)]
    stats = policy.arm_stats
    assert sum(s.pulls for s in stats.values()) == 30
    assert all(s.rewards == 0 and s.mean is None for s in stats.values())
    # With no feedback UCB1 keeps spreading traffic (the bonus shrinks with pulls).
    assert {d.variant for d in decisions} == set(ARMS)
    assert policy.state()["estimated_regret"] == 0.0
    # An override is a pull of the forced arm.
    forced = policy.choose(RouteRequest("x", override="v1"))
    assert (forced.variant, forced.reason) == ("v1", "override")
    assert policy.arm_stats["v1"].pulls == stats["v1"].pulls + 1


def test_estimated_regret_formula() -> None:
    policy = EpsilonGreedyPolicy(ARMS, rng=0)
    state = policy.state()
    state["arms"] = {
        "v0": {"pulls": 10, "rewards": 10, "reward_sum": 2.0, "reward_m2": 1.6},
        "v1": {"pulls": 30, "rewards": 20, "reward_sum": 10.0, "reward_m2": 5.0},
        "v2": {"pulls": 5, "rewards": 0, "reward_sum": 0.0, "reward_m2": 0.0},
    }
    policy.load_state(state)
    # means 0.2 and 0.5 (v2 unknown, contributes nothing): 10 * (0.5 - 0.2) + 30 * 0 = 3.
    assert policy.state()["estimated_regret"] == pytest.approx(3.0)
    assert policy.state()["total_pulls"] == 45


@pytest.mark.parametrize(
    ("kind", "params"),
    [
        ("epsilon_greedy", {"epsilon": 0.2, "epsilon_decay": 0.001}),
        ("ucb1", {"exploration": 0.5}),
        ("thompson", {}),
        ("thompson", {"reward": "gaussian"}),
    ],
)
def test_state_round_trip_continues_exactly(kind: str, params: dict) -> None:
    policy = build_policy(kind, ARMS, params, rng_seed=1)
    env = np.random.default_rng(8)
    for _ in range(2_000):
        variant = policy.choose(REQUEST).variant
        policy.on_reward(variant, float(env.random() < PROBS[ARMS.index(variant)]))
    state = json.loads(json.dumps(policy.state(), allow_nan=False))
    restored = build_policy(kind, ARMS, params, rng_seed=99)
    restored.load_state(state)
    assert restored.state() == policy.state()
    if kind == "ucb1":
        # UCB1 is deterministic (barring exact ties): fed the same rewards, the restored policy
        # makes the same decisions as the original.
        for _ in range(500):
            a, b = policy.choose(REQUEST), restored.choose(REQUEST)
            assert a == b
            reward = float(env.random() < PROBS[ARMS.index(a.variant)])
            policy.on_reward(a.variant, reward)
            restored.on_reward(b.variant, reward)
        assert restored.state() == policy.state()


def test_load_state_is_strict_about_variants_but_accepts_new_arms() -> None:
    policy = ThompsonPolicy(ARMS, rng=0)
    policy.on_reward("v0", 1)
    state = policy.state()
    grown = ThompsonPolicy(ARMS + ["v3"], rng=0)
    grown.load_state(state)  # v3 is new: starts from the prior
    assert grown.state()["posterior"]["v3"] == {"alpha": 1.0, "beta": 1.0}
    assert grown.state()["posterior"]["v0"] == {"alpha": 2.0, "beta": 1.0}
    shrunk = ThompsonPolicy(ARMS[:2], rng=0)
    with pytest.raises(PolicyStateError, match="v2"):
        shrunk.load_state(state)
    with pytest.raises(PolicyStateError, match="kind"):
        UCB1Policy(ARMS).load_state(state)
    state["arms"]["v0"]["pulls"] = 1.5
    with pytest.raises(PolicyStateError, match="v0.pulls"):
        ThompsonPolicy(ARMS).load_state(state)


def test_rewards_are_validated() -> None:
    with pytest.raises(InvalidRewardError, match=r"\[0, 1\]"):
        ThompsonPolicy(ARMS).on_reward("v0", 2.0)
    with pytest.raises(InvalidRewardError, match="outside"):
        UCB1Policy(ARMS).on_reward("v0", -0.1)
    UCB1Policy(ARMS, {"reward_min": -1, "reward_max": 1}).on_reward("v0", -0.1)
    with pytest.raises(InvalidRewardError, match="finite"):
        EpsilonGreedyPolicy(ARMS).on_reward("v0", math.nan)
    with pytest.raises(UnknownVariantError, match="'v9'"):
        EpsilonGreedyPolicy(ARMS).on_reward("v9", 1.0)
    # Gaussian rewards may be any finite number.
    ThompsonPolicy(ARMS, {"reward": "gaussian"}).on_reward("v0", -1234.5)


def test_concurrent_choose_and_feedback_lose_nothing() -> None:
    policy = ThompsonPolicy(ARMS, rng=3)

    def worker() -> None:
        for _ in range(2_500):
            policy.on_reward(policy.choose(REQUEST).variant, 1.0)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stats = policy.arm_stats.values()
    assert sum(s.pulls for s in stats) == sum(s.rewards for s in stats) == 10_000
    assert sum(s.reward_sum for s in stats) == 10_000


@pytest.mark.parametrize(
    ("kind", "params", "problem"),
    [
        ("epsilon_greedy", {"epsilon": 1.2}, "epsilon: Input should be less than or equal to 1"),
        ("epsilon_greedy", {"epsilon": -0.1}, "epsilon: Input should be greater than or equal to 0"),
        ("epsilon_greedy", {"epsilon": 0.1, "min_epsilon": 0.2}, "min_epsilon: 0.2 is above epsilon 0.1"),
        ("epsilon_greedy", {"epsilon_decay": -1}, "epsilon_decay: Input should be greater than or equal to 0"),
        ("ucb1", {"reward_min": 1.0, "reward_max": 1.0}, "reward_max: must be greater than reward_min"),
        ("ucb1", {"exploration": "lots"}, "exploration: Input should be a valid number"),
        ("thompson", {"reward": "poisson"}, "reward: Input should be 'bernoulli' or 'gaussian'"),
        ("thompson", {"prior_mean": 3.0}, "prior_mean: does not apply to reward='bernoulli'"),
        ("thompson", {"prior_alpha": 0}, "prior_alpha: Input should be greater than 0"),
    ],
)
def test_bad_params(kind: str, params: dict, problem: str) -> None:
    with pytest.raises(PolicyConfigError) as info:
        build_policy(kind, ARMS, params)
    assert problem in str(info.value)
