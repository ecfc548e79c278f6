"""Thompson sampling bandit (Beta-Bernoulli or Normal-Inverse-Gamma)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np
from pydantic import Field, model_validator

from .bandit import BanditPolicy
from .base import InvalidRewardError
from .params import PolicyConfigError, PolicyParams, parse_params

_BERNOULLI_ONLY = ("prior_alpha", "prior_beta")
_GAUSSIAN_ONLY = ("prior_mean", "prior_strength", "prior_shape", "prior_scale")


class ThompsonParams(PolicyParams):
    """Parameters of the ``thompson`` policy."""

    reward: Literal["bernoulli", "gaussian"] = "bernoulli"
    """Reward model: 'bernoulli' for rewards in [0, 1] (conversions), 'gaussian' for any real
    reward (revenue, negative latency...)."""

    prior_alpha: float = Field(default=1.0, gt=0.0, allow_inf_nan=False)
    """Bernoulli: Beta prior pseudo-successes. 1/1 is the uniform prior."""

    prior_beta: float = Field(default=1.0, gt=0.0, allow_inf_nan=False)
    """Bernoulli: Beta prior pseudo-failures."""

    prior_mean: float = Field(default=0.0, allow_inf_nan=False)
    """Gaussian: prior guess of an arm's mean reward (set it to a typical reward)."""

    prior_strength: float = Field(default=0.01, gt=0.0, allow_inf_nan=False)
    """Gaussian: how many observations the prior mean is worth (kappa0); small = weak prior."""

    prior_shape: float = Field(default=1.0, gt=0.0, allow_inf_nan=False)
    """Gaussian: shape of the inverse-gamma prior on the reward variance (alpha0)."""

    prior_scale: float = Field(default=1.0, gt=0.0, allow_inf_nan=False)
    """Gaussian: scale of the inverse-gamma prior on the reward variance (beta0); roughly the
    expected reward variance times prior_shape."""

    @model_validator(mode="after")
    def _priors_match_model(self) -> ThompsonParams:
        foreign = _GAUSSIAN_ONLY if self.reward == "bernoulli" else _BERNOULLI_ONLY
        misplaced = [name for name in foreign if name in self.model_fields_set]
        if misplaced:
            raise PolicyConfigError(
                f"{misplaced[0]}: does not apply to reward={self.reward!r} (misplaced: {misplaced})"
            )
        return self


class ThompsonPolicy(BanditPolicy):
    """Thompson sampling: route each request to the arm whose *sampled* mean is highest.

    Each arm has a posterior distribution over its mean reward. Per decision, one value is
    drawn from every arm's posterior and the arm with the largest draw wins, so an arm is
    chosen with the probability that it is the best given the evidence: uncertain arms still
    win sometimes (exploration), clearly worse ones almost never (regret grows
    logarithmically, and in practice usually below UCB1 and epsilon-greedy).

    * ``reward: bernoulli`` — Beta(prior_alpha, prior_beta) prior, conjugate to 0/1 rewards:
      the posterior is Beta(prior_alpha + sum r, prior_beta + n - sum r). A fractional reward
      r in [0, 1] counts as r of a success (the usual generalisation).
    * ``reward: gaussian`` — rewards Normal with unknown mean *and* variance, with the
      conjugate Normal-Inverse-Gamma prior (mu0 = prior_mean, kappa0 = prior_strength,
      alpha0 = prior_shape, beta0 = prior_scale). With n rewards of mean x and sum of squared
      deviations M2 the posterior is ``kappa = kappa0 + n``,
      ``mu = (kappa0 mu0 + n x) / kappa``, ``alpha = alpha0 + n/2``,
      ``beta = beta0 + M2/2 + kappa0 n (x - mu0)**2 / (2 kappa)``; a draw takes
      ``sigma2 ~ InvGamma(alpha, beta)`` then ``mean ~ Normal(mu, sigma2 / kappa)``.

    Posterior parameters are derived from the arm statistics (so the persisted state stays the
    plain counts and sums) and cached per arm; a decision is one draw per arm.
    Reason is ``exploit`` when the chosen arm has the best observed mean, ``explore`` otherwise.
    Pull counts do not influence the choice, so in-flight rewards cause no bias.
    """

    kind = "thompson"
    Params = ThompsonParams

    def __init__(
        self,
        variants: Sequence[str],
        params: ThompsonParams | Mapping[str, Any] | None = None,
        *,
        rng: np.random.Generator | int | None = None,
    ) -> None:
        super().__init__(variants, rng)
        self._params = parse_params(ThompsonParams, self.kind, self._variants, params)
        # One tuple per arm: (alpha, beta) for Bernoulli, (mu, kappa, alpha, beta) for Gaussian.
        self._posterior: list[tuple[float, ...]] = [()] * len(self._variants)
        for i in range(len(self._variants)):
            self._after_update(i)

    @property
    def reward_range(self) -> tuple[float, float] | None:
        return (0.0, 1.0) if self._params.reward == "bernoulli" else None

    def _check_reward(self, reward: float) -> float:
        if self._params.reward == "bernoulli" and not 0.0 <= reward <= 1.0:
            raise InvalidRewardError(f"reward: Bernoulli Thompson needs rewards in [0, 1], got {reward}")
        return reward

    def _after_update(self, arm: int) -> None:
        stats, p = self._arms[arm], self._params
        if p.reward == "bernoulli":
            self._posterior[arm] = (
                p.prior_alpha + stats.reward_sum,
                p.prior_beta + stats.rewards - stats.reward_sum,
            )
            return
        n = stats.rewards
        mean = stats.reward_sum / n if n else 0.0
        kappa = p.prior_strength + n
        self._posterior[arm] = (
            (p.prior_strength * p.prior_mean + stats.reward_sum) / kappa,
            kappa,
            p.prior_shape + n / 2.0,
            p.prior_scale + stats.reward_m2 / 2.0 + p.prior_strength * n * (mean - p.prior_mean) ** 2 / (2.0 * kappa),
        )

    def _sample_means(self) -> list[float]:
        # A short loop of scalar draws: numpy's array-parameter calls carry several microseconds
        # of broadcasting overhead, more than the loop costs for the few arms a router has.
        rng = self._rng
        if self._params.reward == "bernoulli":
            return [rng.beta(a, b) for a, b in self._posterior]
        draws = []
        for mu, kappa, alpha, beta in self._posterior:
            # 1 / sigma2 with sigma2 ~ InvGamma(alpha, beta); a tiny shape can underflow to 0.
            precision = max(rng.standard_gamma(alpha) / beta, 1e-300)
            draws.append(mu + rng.standard_normal() / math.sqrt(kappa * precision))
        return draws

    def _select(self) -> tuple[int, str]:
        draws = self._sample_means()
        i = draws.index(max(draws))
        return i, self._reason_for(i)

    def _extra_state(self) -> dict[str, Any]:
        names = ("alpha", "beta") if self._params.reward == "bernoulli" else ("mu", "kappa", "alpha", "beta")
        return {
            "reward_model": self._params.reward,
            "posterior": {
                variant: dict(zip(names, params, strict=True))
                for variant, params in zip(self._variants, self._posterior, strict=True)
            },
        }
