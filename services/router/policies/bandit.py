"""Shared machinery of the multi-armed bandit policies (arm statistics, feedback, state)."""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .arms import ArmStats
from .base import Decision, PolicyStateError, Reason, RouteRequest, RoutingPolicy, finite_reward


class BanditPolicy(RoutingPolicy):
    """Base of the bandit policies: per-arm statistics, reward feedback, regret estimate, state.

    Subclasses implement :meth:`_select` (which arm, and whether that is exploring or
    exploiting) and may validate rewards (:meth:`_check_reward`) and keep caches fresh
    (:meth:`_after_update`). A decision — an override included — counts as a pull of its arm
    at ``choose`` time; the reward, whenever it arrives, updates the arm's statistics.

    **Estimated regret** (in ``state()``): the plug-in estimate
    ``sum_a pulls_a * (max_b mean_b - mean_a)`` over arms that have rewards, with the empirical
    means as they stand now — i.e. the sum over all pulls so far of the gap between the arm
    currently estimated best and the arm pulled, judged with today's (most informed) estimates.
    It is an estimate, not the true regret: it cannot see an under-explored arm that is really
    better, and counts pulls whose rewards are still in flight.

    Thread-safety: selection, pull counting and updates run under the policy lock (numpy
    Generators are not thread-safe); each choose is a few microseconds of work.
    """

    takes_feedback = True
    carries_state = True

    def __init__(self, variants: Sequence[str], rng: np.random.Generator | int | None) -> None:
        super().__init__(variants)
        self._rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
        self._arms = [ArmStats() for _ in self._variants]
        self._total_pulls = 0

    # -- the algorithm ------------------------------------------------------------------

    @abstractmethod
    def _select(self) -> tuple[int, str]:
        """Index of the arm to pull and the Reason. Called with the lock held."""

    def _check_reward(self, reward: float) -> float:
        return reward

    def _after_update(self, arm: int) -> None:
        """Hook after an arm's statistics changed (lock held)."""

    def _extra_state(self) -> dict[str, Any]:
        """Derived, display-only fields added to ``state()`` (lock held)."""
        return {}

    # -- RoutingPolicy ----------------------------------------------------------------------

    def choose(self, request: RouteRequest) -> Decision:
        decision = self._override(request)
        with self._lock:
            if decision is None:
                i, reason = self._select()
                decision = Decision(self._variants[i], reason)
            else:
                i = self._index[decision.variant]
            self._arms[i].pulls += 1
            self._total_pulls += 1
        return decision

    def on_failure(self, variant: str, reward: float | None) -> bool:
        """A failed pull scores ``reward`` (the config's failure reward), so a failing arm loses traffic."""
        if reward is None:
            return False
        self.on_reward(variant, reward)
        return True

    def carry_over(self, previous: Mapping[str, Any]) -> None:
        """Arms of variants the new config removed are dropped; new arms start from scratch."""
        arms = previous.get("arms") if isinstance(previous, Mapping) else None
        if isinstance(arms, Mapping):
            previous = {**previous, "arms": {k: v for k, v in arms.items() if k in self._index}}
        self.load_state(previous)

    def check_reward(self, reward: float) -> float:
        return self._check_reward(finite_reward(reward))

    def on_reward(self, variant: str, reward: float) -> None:
        i = self._variant_index(variant)
        value = self._check_reward(finite_reward(reward))
        with self._lock:
            self._arms[i].add(value)
            self._after_update(i)

    def state(self) -> dict[str, Any]:
        with self._lock:
            arms = {name: arm.to_dict() for name, arm in zip(self._variants, self._arms, strict=True)}
            extra = self._extra_state()
            regret = self._estimated_regret()
            total = self._total_pulls
        return {**super().state(), "total_pulls": total, "estimated_regret": regret, "arms": arms, **extra}

    def load_state(self, state: Mapping[str, Any]) -> None:
        self._check_state_header(state)
        arms = state.get("arms")
        if not isinstance(arms, Mapping):
            raise PolicyStateError("state.arms: expected a mapping of variant -> statistics")
        self._check_state_variants(arms, "arms")
        # Configured arms absent from the state (newly added variants) start from scratch.
        loaded = [
            ArmStats.from_dict(arms[name], f"state.arms.{name}") if name in arms else ArmStats()
            for name in self._variants
        ]
        with self._lock:
            self._arms = loaded
            self._total_pulls = sum(arm.pulls for arm in loaded)
            for i in range(len(loaded)):
                self._after_update(i)

    # -- helpers ------------------------------------------------------------------------------

    @property
    def arm_stats(self) -> dict[str, ArmStats]:
        """Copies of the per-arm statistics, by variant name."""
        with self._lock:
            return {
                name: ArmStats(a.pulls, a.rewards, a.reward_sum, a.reward_m2)
                for name, a in zip(self._variants, self._arms, strict=True)
            }

    def _estimated_best(self) -> set[int]:
        means = [(i, arm.mean) for i, arm in enumerate(self._arms) if arm.rewards]
        if not means:
            return set()
        top = max(m for _, m in means)
        return {i for i, m in means if m == top}

    def _estimated_regret(self) -> float:
        means = [arm.mean for arm in self._arms]
        known = [m for m in means if m is not None]
        if not known:
            return 0.0
        top = max(known)
        return float(sum(a.pulls * (top - m) for a, m in zip(self._arms, means, strict=True) if m is not None))

    def _reason_for(self, arm: int) -> str:
        return Reason.EXPLOIT if arm in self._estimated_best() else Reason.EXPLORE

    def _random_argmax(self, values: Sequence[float]) -> int:
        """Index of the largest value; ties broken uniformly at random so no arm is favoured
        by its position in the config."""
        top = max(values)
        tied = [i for i, v in enumerate(values) if v == top]
        return tied[0] if len(tied) == 1 else tied[int(self._rng.integers(len(tied)))]
