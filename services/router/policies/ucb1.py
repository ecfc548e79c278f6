"""UCB1 bandit."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from pydantic import Field, model_validator

from .bandit import BanditPolicy
from .base import InvalidRewardError
from .params import PolicyConfigError, PolicyParams, parse_params


class UCB1Params(PolicyParams):
    """Parameters of the ``ucb1`` policy."""

    exploration: float = Field(default=1.0, ge=0.0, allow_inf_nan=False)
    """Multiplier c of the confidence bonus. 1 is classical UCB1; smaller explores less
    (faster, but without UCB1's guarantee); 0 is pure greedy."""

    reward_min: float = Field(default=0.0, allow_inf_nan=False)
    """Smallest possible reward. UCB1's bonus assumes bounded rewards."""

    reward_max: float = Field(default=1.0, allow_inf_nan=False)
    """Largest possible reward; rewards outside [reward_min, reward_max] are rejected."""

    @model_validator(mode="after")
    def _range_not_empty(self) -> UCB1Params:
        if not self.reward_min < self.reward_max:
            raise PolicyConfigError(
                f"reward_max: must be greater than reward_min ({self.reward_max} <= {self.reward_min})"
            )
        return self


class UCB1Policy(BanditPolicy):
    """UCB1 (Auer, Cesa-Bianchi & Fischer, 2002): optimism in the face of uncertainty.

    Every arm is pulled once; after that each decision routes to the arm with the highest
    upper confidence bound::

        index_a = mean_a + c * (reward_max - reward_min) * sqrt(2 ln N / n_a)

    with ``N`` the total number of decisions and ``n_a`` the arm's pulls. A rarely pulled arm
    has a large bonus and gets tried again; an arm that keeps paying off keeps a high mean.
    With c = 1 and rewards in the declared range, the number of pulls of an arm that is worse by
    ``gap`` grows like ``8 ln N / gap**2`` at most — logarithmic regret, and no randomness
    (ties aside), which makes runs reproducible.

    Delayed rewards: ``n_a`` counts pulls at decision time, so the bonus shrinks while rewards
    are in flight and traffic does not pile onto one arm; an arm pulled but not yet rewarded is
    scored with mean ``reward_min`` (pessimistic) plus its bonus. Reason is ``exploit`` when the
    chosen arm has the best observed mean, ``explore`` otherwise.
    """

    kind = "ucb1"
    Params = UCB1Params

    def __init__(
        self,
        variants: Sequence[str],
        params: UCB1Params | Mapping[str, Any] | None = None,
        *,
        rng: np.random.Generator | int | None = None,
    ) -> None:
        super().__init__(variants, rng)
        self._params = parse_params(UCB1Params, self.kind, self._variants, params)

    @property
    def reward_range(self) -> tuple[float, float]:
        return self._params.reward_min, self._params.reward_max

    def _check_reward(self, reward: float) -> float:
        lo, hi = self._params.reward_min, self._params.reward_max
        if not lo <= reward <= hi:
            raise InvalidRewardError(f"reward: {reward} is outside [{lo}, {hi}] (reward_min/reward_max)")
        return reward

    def _indices(self) -> list[float]:
        p = self._params
        width = p.exploration * (p.reward_max - p.reward_min)
        log_n = math.log(max(self._total_pulls, 1))
        out = []
        for arm in self._arms:
            if arm.pulls == 0:
                out.append(math.inf)
                continue
            mean = arm.mean if arm.rewards else p.reward_min
            out.append(mean + width * math.sqrt(2.0 * log_n / arm.pulls))
        return out

    def _select(self) -> tuple[int, str]:
        i = self._random_argmax(self._indices())
        return i, self._reason_for(i)

    def _extra_state(self) -> dict[str, Any]:
        # Untried arms have an infinite index; JSON has no infinity, so show them as null.
        return {
            "ucb": {name: None if math.isinf(v) else v for name, v in zip(self._variants, self._indices(), strict=True)}
        }
