"""Canary policy: weighted split, stickiness, minimal movement, overrides, no-key draws.

Hash-based tests use fixed keys (user-0 ... user-9999) and a fixed hash, so their outcome is
deterministic; the stated p-value bounds say how unlikely a failure would be for a correct
implementation on an arbitrary key set.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path

import pytest
from scipy.stats import binomtest, chisquare

from services.router.policies import (
    CanaryPolicy,
    PolicyConfigError,
    PolicyStateError,
    RouteRequest,
    UnknownVariantError,
    build_policy,
)

REPO_ROOT = Path(__file__).resolve().parents[3]
KEYS = [f"user-{i}" for i in range(10_000)]


def assign(policy: CanaryPolicy, keys: list[str] = KEYS) -> list[str]:
    return [policy.choose(RouteRequest(request_id=k, key=k)).variant for k in keys]


@pytest.mark.parametrize(
    "weights",
    [
        {"stable": 90, "candidate": 10},
        {"a": 70, "b": 20, "c": 10},
        {"a": 0.25, "b": 0.25, "c": 0.25, "d": 0.25},
    ],
)
def test_keyed_split_matches_weights(weights: dict[str, float]) -> None:
    policy = CanaryPolicy(list(weights), {"weights": weights})
    counts = Counter(assign(policy))
    total = sum(weights.values())
    observed = [counts[v] for v in weights]
    expected = [len(KEYS) * w / total for w in weights.values()]
    # H0: each key lands on v with probability w_v / sum(w). Under H0 the chi-square p-value is
    # uniform, so a correct hash fails "p > 0.001" for one key set in a thousand.
    assert sum(observed) == len(KEYS)
    assert chisquare(observed, expected).pvalue > 0.001


def test_same_key_same_variant_across_instances_and_seeds() -> None:
    weights = {"stable": 70, "candidate": 20, "other": 10}
    first = assign(CanaryPolicy(list(weights), {"weights": weights}, rng=1))
    again = assign(CanaryPolicy(list(weights), {"weights": weights}, rng=2))
    policy = CanaryPolicy(list(weights), {"weights": weights})
    assert first == again == assign(policy) == assign(policy)  # 100% sticky


def test_assignment_does_not_depend_on_the_process() -> None:
    # Python's hash() is salted per process; the sticky hash must not be. Two interpreters with
    # different hash seeds must agree with this one.
    script = (
        "from services.router.policies import CanaryPolicy, RouteRequest\n"
        "p = CanaryPolicy(['a', 'b'], {'weights': {'a': 50, 'b': 50}})\n"
        "print(''.join(p.choose(RouteRequest(str(i), key=f'user-{i}')).variant for i in range(300)))\n"
    )
    policy = CanaryPolicy(["a", "b"], {"weights": {"a": 50, "b": 50}})
    here = "".join(assign(policy, KEYS[:300]))
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed, "PYTHONPATH": str(REPO_ROOT)}
        out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True)
        assert out.stdout.strip() == here


def test_salt_reshuffles_keys() -> None:
    plain = assign(CanaryPolicy(["a", "b"], {"weights": {"a": 1, "b": 1}}), KEYS[:1000])
    salted = assign(CanaryPolicy(["a", "b"], {"weights": {"a": 1, "b": 1}, "hash_salt": "exp-42"}), KEYS[:1000])
    agree = sum(x == y for x, y in zip(plain, salted, strict=True))
    # Independent 50/50 assignments agree on Binomial(1000, 0.5) keys: 500 +- 16 (1 sd).
    assert 430 < agree < 570


def test_weight_change_moves_minimum_towards_grown_variant() -> None:
    policy = CanaryPolicy(["stable", "candidate"], {"weights": {"stable": 90, "candidate": 10}})
    before = assign(policy)
    policy.set_weights({"stable": 80, "candidate": 20})
    after = assign(policy)
    moves = Counter((b, a) for b, a in zip(before, after, strict=True) if b != a)
    # Only stable -> candidate: no key leaves the variant whose weight grew.
    assert set(moves) == {("stable", "candidate")}
    moved = moves["stable", "candidate"]
    # No churn: the keys that moved are exactly the candidate's net gain...
    assert moved == after.count("candidate") - before.count("candidate")
    # ...and the net gain is the theoretical minimum, 10% of keys: Binomial(10000, 0.1) has
    # sd 0.3 percentage points; 1.2 points is 4 sd.
    assert abs(moved / len(KEYS) - 0.10) < 0.012


def test_three_variant_change_moves_only_towards_relative_gainers() -> None:
    old = {"a": 70, "b": 20, "c": 10}
    new = {"a": 60, "b": 20, "c": 20}
    policy = CanaryPolicy(list(old), {"weights": old})
    before = assign(policy)
    policy.set_weights(new)
    after = assign(policy)
    moves = Counter((b, a) for b, a in zip(before, after, strict=True) if b != a)
    ratio = {v: new[v] / old[v] for v in old}
    # A key moves i -> j only if j's weight grew relative to i's (weighted rendezvous property).
    assert all(ratio[j] > ratio[i] for i, j in moves)
    moved = sum(moves.values()) / len(KEYS)
    # Minimum possible is 10% (c gains 10 points). Weighted rendezvous moves 11.8% in expectation
    # for this change (Monte Carlo over Exp(1) scores, 2e6 draws); upper bound = expectation
    # + 4 binomial sd (1.3 points).
    assert 0.10 - 0.012 < moved < 0.118 + 0.013


def test_override_wins_even_for_zero_weight() -> None:
    policy = CanaryPolicy(["stable", "candidate"], {"weights": {"stable": 1, "candidate": 0}})
    for key in KEYS[:50]:
        decision = policy.choose(RouteRequest(key, key=key, override="candidate"))
        assert (decision.variant, decision.reason) == ("candidate", "override")
    with pytest.raises(UnknownVariantError, match="'nope'"):
        policy.choose(RouteRequest("r", override="nope"))


def test_zero_weight_is_never_chosen() -> None:
    policy = CanaryPolicy(["a", "b", "c"], {"weights": {"a": 1, "b": 0, "c": 1}}, rng=7)
    keyed = assign(policy)
    unkeyed = [policy.choose(RouteRequest(str(i))).variant for i in range(10_000)]
    assert "b" not in keyed and "b" not in unkeyed
    assert {"a", "c"} <= set(keyed) and {"a", "c"} <= set(unkeyed)


def test_no_key_is_weighted_random() -> None:
    policy = CanaryPolicy(["stable", "candidate"], {"weights": {"stable": 90, "candidate": 10}}, rng=3)
    decisions = [policy.choose(RouteRequest(str(i), key=None)) for i in range(20_000)]
    assert {d.reason for d in decisions} == {"weighted-random"}
    hits = sum(d.variant == "candidate" for d in decisions)
    # Binomial(20000, 0.1) two-sided test; a correct sampler fails p > 0.001 once in 1000 seeds.
    assert binomtest(hits, len(decisions), 0.10).pvalue > 0.001
    # Empty key means "no key" too.
    assert policy.choose(RouteRequest("r", key="")).reason == "weighted-random"


def test_no_key_draws_are_reproducible_with_a_seed() -> None:
    def run(seed: int) -> list[str]:
        p = CanaryPolicy(["a", "b"], {"weights": {"a": 1, "b": 1}}, rng=seed)
        return [p.choose(RouteRequest(str(i))).variant for i in range(200)]

    assert run(5) == run(5)
    assert run(5) != run(6)


def test_state_round_trip_keeps_runtime_weights() -> None:
    policy = build_policy("canary", ["stable", "candidate"], {"weights": {"stable": 95, "candidate": 5}})
    policy.set_weights({"stable": 50, "candidate": 50})
    state = json.loads(json.dumps(policy.state()))
    restored = build_policy("canary", ["stable", "candidate"], {"weights": {"stable": 95, "candidate": 5}})
    restored.load_state(state)
    assert restored.state() == policy.state()
    assert assign(restored, KEYS[:2000]) == assign(policy, KEYS[:2000])


def test_bad_weight_changes_are_rejected_atomically() -> None:
    policy = CanaryPolicy(["stable", "candidate"], {"weights": {"stable": 90, "candidate": 10}})
    with pytest.raises(PolicyConfigError, match="weights.candidate"):
        policy.set_weights({"stable": 90, "candidate": -5})
    with pytest.raises(PolicyConfigError, match="unknown variants \\['other'\\]"):
        policy.set_weights({"stable": 90, "candidate": 5, "other": 5})
    with pytest.raises(PolicyConfigError, match="all weights are zero"):
        policy.set_weights({"stable": 0, "candidate": 0})
    assert policy.weights == {"stable": 90, "candidate": 10}
    with pytest.raises(PolicyStateError, match="kind"):
        policy.load_state({"kind": "ab", "version": 1, "weights": {}})
    with pytest.raises(PolicyStateError, match="not configured"):
        policy.load_state({"kind": "canary", "version": 1, "weights": {"x": 1}})


def test_concurrent_choose_during_weight_changes() -> None:
    policy = CanaryPolicy(["a", "b"], {"weights": {"a": 1, "b": 0}})
    seen: list[str] = []
    errors: list[BaseException] = []

    def route() -> None:
        try:
            seen.extend(policy.choose(RouteRequest(k, key=k)).variant for k in KEYS[:3000])
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=route) for _ in range(4)]
    for t in threads:
        t.start()
    for w in range(50):
        policy.set_weights({"a": 1, "b": w % 2})
    for t in threads:
        t.join()
    assert not errors
    assert len(seen) == 12_000 and set(seen) <= {"a", "b"}
