"""What a bandit knows about one arm: pulls, rewards and their running mean and variance."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .base import PolicyStateError


@dataclass(slots=True)
class ArmStats:
    """What a bandit knows about one arm.

    ``pulls`` counts decisions (incremented in ``choose``); ``rewards`` counts feedback calls.
    They differ while rewards are in flight, so means divide by ``rewards``, never by ``pulls``.
    ``reward_m2`` is the running sum of squared deviations from the mean (Welford), which keeps
    the variance exact without storing rewards or cancelling large sums of squares.
    """

    pulls: int = 0
    rewards: int = 0
    reward_sum: float = 0.0
    reward_m2: float = 0.0

    @property
    def mean(self) -> float | None:
        return self.reward_sum / self.rewards if self.rewards else None

    def add(self, reward: float) -> None:
        old_mean = self.reward_sum / self.rewards if self.rewards else 0.0
        self.rewards += 1
        self.reward_sum += reward
        new_mean = self.reward_sum / self.rewards
        self.reward_m2 = max(0.0, self.reward_m2 + (reward - old_mean) * (reward - new_mean))

    def to_dict(self) -> dict[str, Any]:
        return {
            "pulls": self.pulls,
            "rewards": self.rewards,
            "reward_sum": self.reward_sum,
            "reward_m2": self.reward_m2,
            "mean_reward": self.mean,
        }

    @classmethod
    def from_dict(cls, data: Any, where: str) -> ArmStats:
        if not isinstance(data, Mapping):
            raise PolicyStateError(f"{where}: expected a mapping")
        counts = {}
        for field in ("pulls", "rewards"):
            value = data.get(field)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise PolicyStateError(f"{where}.{field}: expected a non-negative integer, got {value!r}")
            counts[field] = value
        sums = {}
        for field in ("reward_sum", "reward_m2"):
            value = data.get(field)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise PolicyStateError(f"{where}.{field}: expected a finite number, got {value!r}")
            sums[field] = float(value)
        if sums["reward_m2"] < 0:
            raise PolicyStateError(f"{where}.reward_m2: must be >= 0")
        return cls(counts["pulls"], counts["rewards"], sums["reward_sum"], sums["reward_m2"])
