"""Routing policies of the router, one module per policy behind :class:`RoutingPolicy`.

Use :func:`build_policy` to turn a routing-config entry (kind, variants, params) into a policy;
adding a policy means one new module plus one line in :data:`POLICIES`.

    base.py            RoutingPolicy (the interface the router sees), RouteRequest, Decision, errors
    params.py          PolicyParams and parse_params: each policy's parameter model, validated
    shadow.py          shadow: the primary answers, `mirrors` names the shadows
    canary.py          canary: weighted split, sticky per key
    ab_test.py         A/B test: fixed sticky split, 0/1 outcomes, significance verdict
    bandit.py          what the bandits share: feedback, failure reward, regret, state, carry-over
    arms.py            per-arm statistics of the bandits
    epsilon_greedy.py  epsilon-greedy bandit
    ucb1.py            UCB1 bandit
    thompson.py        Thompson sampling bandit
    hashing.py         weighted rendezvous hashing (canary, A/B)
    stats.py           two-proportion z-test, Wald interval, mSPRT always-valid p-value
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from .ab_test import ABTestParams, ABTestPolicy
from .base import (
    Decision,
    InvalidRewardError,
    PolicyStateError,
    Reason,
    RouteRequest,
    RoutingPolicy,
    UnknownVariantError,
)
from .canary import CanaryParams, CanaryPolicy
from .epsilon_greedy import EpsilonGreedyParams, EpsilonGreedyPolicy
from .params import PolicyConfigError, PolicyParams
from .shadow import ShadowParams, ShadowPolicy
from .thompson import ThompsonParams, ThompsonPolicy
from .ucb1 import UCB1Params, UCB1Policy

#: Registry: routing-config ``kind`` -> policy class (each has a ``Params`` pydantic model).
POLICIES: Mapping[str, type[RoutingPolicy]] = {
    cls.kind: cls
    for cls in (
        ShadowPolicy,
        CanaryPolicy,
        ABTestPolicy,
        EpsilonGreedyPolicy,
        UCB1Policy,
        ThompsonPolicy,
    )
}


def params_model(kind: str) -> type[PolicyParams]:
    """The pydantic parameter model of a policy kind (for config schemas and docs)."""
    return _policy_class(kind).Params


def build_policy(
    kind: str,
    variants: Sequence[str],
    params: Mapping[str, Any] | PolicyParams | None,
    rng_seed: int | None = None,
) -> RoutingPolicy:
    """Build a policy from its config. Raises PolicyConfigError naming the bad parameter.

    ``rng_seed`` seeds the policy's random generator (tests, reproducible simulations);
    None draws fresh OS entropy.
    """
    if rng_seed is not None and (isinstance(rng_seed, bool) or not isinstance(rng_seed, int)):
        raise PolicyConfigError(f"rng_seed: expected an integer or None, got {rng_seed!r}")
    cls = _policy_class(kind)
    if params is not None and not isinstance(params, (Mapping, PolicyParams)):
        raise PolicyConfigError(f"params: expected a mapping, got {type(params).__name__}")
    return cls(variants, params, rng=rng_seed)  # type: ignore[call-arg]


def _policy_class(kind: str) -> type[RoutingPolicy]:
    try:
        return POLICIES[kind]
    except (KeyError, TypeError):
        raise PolicyConfigError(f"kind: unknown policy kind {kind!r}; expected one of {sorted(POLICIES)}") from None


__all__ = [
    "POLICIES",
    "ABTestParams",
    "ABTestPolicy",
    "CanaryParams",
    "CanaryPolicy",
    "Decision",
    "EpsilonGreedyParams",
    "EpsilonGreedyPolicy",
    "InvalidRewardError",
    "PolicyConfigError",
    "PolicyParams",
    "PolicyStateError",
    "Reason",
    "RouteRequest",
    "RoutingPolicy",
    "ShadowParams",
    "ShadowPolicy",
    "ThompsonParams",
    "ThompsonPolicy",
    "UCB1Params",
    "UCB1Policy",
    "UnknownVariantError",
    "build_policy",
    "params_model",
]
