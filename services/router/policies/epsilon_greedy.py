"""Epsilon-greedy bandit."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from pydantic import Field, model_validator

from .bandit import BanditPolicy
from .base import Reason
from .params import PolicyConfigError, PolicyParams, parse_params


class EpsilonGreedyParams(PolicyParams):
    """Parameters of the ``epsilon_greedy`` policy."""

    epsilon: float = Field(default=0.1, ge=0.0, le=1.0)
    """Probability of exploring (routing to a uniformly random variant) at the start."""

    epsilon_decay: float = Field(default=0.0, ge=0.0, allow_inf_nan=False)
    """Decay rate d: after t decisions epsilon is epsilon / (1 + d * t). 0 keeps it constant."""

    min_epsilon: float = Field(default=0.0, ge=0.0, le=1.0)
    """Floor under the decayed epsilon, so the policy keeps noticing when arms change."""

    @model_validator(mode="after")
    def _floor_below_start(self) -> EpsilonGreedyParams:
        if self.min_epsilon > self.epsilon:
            raise PolicyConfigError(f"min_epsilon: {self.min_epsilon} is above epsilon {self.epsilon}")
        return self


class EpsilonGreedyPolicy(BanditPolicy):
    """Epsilon-greedy: mostly exploit the best arm so far, explore at random with prob. epsilon.

    Each decision:

    1. an arm never pulled is pulled first (reason ``explore``), so every arm gets a chance;
    2. with probability ``epsilon_t`` route to a uniformly random arm (reason ``explore``);
    3. otherwise route to the arm with the highest mean reward observed so far (reason
       ``exploit``; ties broken at random; arms whose rewards have not arrived yet are not
       candidates, so a variant that never reports back only gets exploration traffic).

    ``epsilon_t = max(min_epsilon, epsilon / (1 + epsilon_decay * t))`` with ``t`` the number of
    decisions so far. A constant epsilon costs about ``epsilon * (K-1)/K`` of traffic on
    non-best arms forever (linear regret) but keeps tracking arms whose quality drifts;
    decay approaches the best arm only.

    Rewards may be any finite numbers (conversion 0/1, revenue, negative latency...).
    """

    kind = "epsilon_greedy"
    Params = EpsilonGreedyParams

    def __init__(
        self,
        variants: Sequence[str],
        params: EpsilonGreedyParams | Mapping[str, Any] | None = None,
        *,
        rng: np.random.Generator | int | None = None,
    ) -> None:
        super().__init__(variants, rng)
        self._params = parse_params(EpsilonGreedyParams, self.kind, self._variants, params)

    @property
    def epsilon(self) -> float:
        """The exploration probability for the next decision."""
        return self._epsilon_at(self._total_pulls)

    def _epsilon_at(self, t: int) -> float:
        p = self._params
        return max(p.min_epsilon, p.epsilon / (1.0 + p.epsilon_decay * t))

    def _select(self) -> tuple[int, str]:
        untried = [i for i, arm in enumerate(self._arms) if arm.pulls == 0]
        if untried:
            return untried[0], Reason.EXPLORE
        if self._rng.random() < self._epsilon_at(self._total_pulls):
            return int(self._rng.integers(len(self._arms))), Reason.EXPLORE
        means = [arm.mean for arm in self._arms]
        if all(m is None for m in means):
            return int(self._rng.integers(len(self._arms))), Reason.EXPLORE
        scores = [-np.inf if m is None else m for m in means]
        return self._random_argmax(scores), Reason.EXPLOIT

    def _extra_state(self) -> dict[str, Any]:
        return {"epsilon": self._epsilon_at(self._total_pulls)}
