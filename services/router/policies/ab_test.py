"""A/B test: fixed sticky split, outcome feedback, and a statistical verdict."""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from pydantic import Field, ValidationInfo, model_validator

from .base import Decision, InvalidRewardError, PolicyStateError, Reason, RouteRequest, RoutingPolicy
from .hashing import Weight, WeightedRendezvous, check_weights
from .params import PolicyConfigError, PolicyParams, context_variants, parse_params
from .stats import ab_verdict, compare_proportions, msprt_p_value


class ABTestParams(PolicyParams):
    """Parameters of the ``ab`` policy. The first variant is arm A (control), the second B."""

    split: dict[str, Weight] | None = None
    """Traffic share per arm, normalised by the sum; default an even split. Both arms need a
    positive share."""

    hash_salt: str = ""
    """Mixed into the sticky hash. Use the experiment name so that two experiments on the same
    users assign them independently."""

    min_samples: int = Field(default=1000, ge=1)
    """Samples each arm needs before the report gives a verdict other than 'not enough data'."""

    alpha: float = Field(default=0.05, gt=0.0, lt=1.0)
    """Significance level of the z-test; the reported interval has coverage 1 - alpha."""

    count_by: Literal["assignments", "outcomes"] = "assignments"
    """Denominator of each arm's rate. 'assignments': requests routed to the arm (the router may
    report only conversions, reward 1). 'outcomes': rewards reported (the router reports a 0 or 1
    for every request it has an outcome for)."""

    msprt_tau: float = Field(default=0.02, gt=0.0, allow_inf_nan=False)
    """Effect size (absolute rate difference) the always-valid mSPRT p-value is tuned for."""

    @model_validator(mode="after")
    def _split_fits_arms(self, info: ValidationInfo) -> ABTestParams:
        variants = context_variants(info)
        if self.split is not None and variants is not None:
            check_weights(self.split, variants, "split")
            starved = [v for v in variants if self.split[v] <= 0]
            if starved:
                raise PolicyConfigError(f"split: every arm needs a positive share; {starved} have 0")
        return self


class ABTestPolicy(RoutingPolicy):
    """Fixed-split A/B test between two variants with a significance verdict.

    Assignment reuses the canary's weighted rendezvous hashing
    (:class:`~.hashing.WeightedRendezvous`): a keyed request (user id) always lands on the same
    arm, on every router replica and across restarts; a request without key is drawn at random
    by the split; an override forces an arm. Every decision — overrides included, since their
    outcomes come back through the same feedback path — counts as an *assignment* of that arm.

    Outcomes arrive through ``on_reward(variant, reward)`` with reward 0 or 1 (converted or not).
    :meth:`report` compares the arms' conversion rates with a **two-sided two-proportion z-test**
    (pooled variance) at level ``alpha`` and a (1 - alpha) Wald interval for rate(B) - rate(A)
    (see :mod:`.stats`). The verdict is ``"not enough data"`` while either arm has fewer than
    ``min_samples``, then ``"<arm> better"`` if p < alpha, else ``"no significant difference"``.

    The z-test is valid for one look at a sample size fixed in advance. Peeking at the verdict
    repeatedly and stopping at the first "better" inflates the false-positive rate; for that use
    ``always_valid_p_value`` (mSPRT), which may be checked at every look. The unit of analysis
    is the request; with sticky keys one user makes many correlated requests, which makes both
    tests over-confident — prefer one outcome per key where the product allows.

    Thread-safety: counters are updated under the policy lock; hashing happens outside it.
    """

    kind = "ab"
    Params = ABTestParams
    takes_feedback = True
    carries_state = True

    def __init__(
        self,
        variants: Sequence[str],
        params: ABTestParams | Mapping[str, Any] | None = None,
        *,
        rng: random.Random | int | None = None,
    ) -> None:
        super().__init__(variants)
        if len(self._variants) != 2:
            raise PolicyConfigError(
                f"variants: an A/B test needs exactly two variants (control first), got {len(self._variants)}"
            )
        self._params = parse_params(ABTestParams, self.kind, self._variants, params)
        split = self._params.split or {v: 1.0 for v in self._variants}
        self._hasher = WeightedRendezvous({v: split[v] for v in self._variants}, self._params.hash_salt)
        self._rng = rng if isinstance(rng, random.Random) else random.Random(rng)
        self._assignments = [0, 0]
        self._outcomes = [0, 0]
        self._conversions = [0, 0]

    @property
    def params(self) -> ABTestParams:
        return self._params

    def choose(self, request: RouteRequest) -> Decision:
        decision = self._override(request)
        if decision is None:
            if request.key:
                decision = Decision(self._hasher.pick(request.key), Reason.STICKY_HASH)
            else:
                decision = Decision(self._hasher.pick_random(self._rng), Reason.WEIGHTED_RANDOM)
        i = self._index[decision.variant]
        with self._lock:
            self._assignments[i] += 1
        return decision

    @property
    def reward_range(self) -> tuple[float, float]:
        return 0.0, 1.0

    def check_reward(self, reward: float) -> float:
        if isinstance(reward, bool) or (isinstance(reward, (int, float)) and reward in (0, 1)):
            return float(reward)
        raise InvalidRewardError(f"reward: an A/B outcome must be 0 or 1, got {reward!r}")

    def on_reward(self, variant: str, reward: float) -> None:
        i = self._variant_index(variant)
        converted = int(self.check_reward(reward))
        with self._lock:
            if self._params.count_by == "assignments" and self._conversions[i] + converted > self._assignments[i]:
                raise InvalidRewardError(
                    f"reward: more conversions than assignments for {variant!r}; "
                    "report each request's outcome at most once"
                )
            self._outcomes[i] += 1
            self._conversions[i] += converted

    def report(self, min_samples: int | None = None, alpha: float | None = None) -> dict[str, Any]:
        """Per-arm counts and rates, B - A with its interval, p-values and the verdict."""
        min_samples = self._params.min_samples if min_samples is None else min_samples
        alpha = self._params.alpha if alpha is None else alpha
        if min_samples < 1:
            raise ValueError(f"min_samples: must be >= 1, got {min_samples}")
        if not 0.0 < alpha < 1.0:
            raise ValueError(f"alpha: must be in (0, 1), got {alpha}")
        with self._lock:
            assignments, outcomes = list(self._assignments), list(self._outcomes)
            conversions = list(self._conversions)
        n = assignments if self._params.count_by == "assignments" else outcomes
        name_a, name_b = self._variants
        comparison = None
        always_valid_p = None
        if n[0] > 0 and n[1] > 0:
            comparison = compare_proportions(conversions[0], n[0], conversions[1], n[1], alpha)
            always_valid_p = msprt_p_value(conversions[0], n[0], conversions[1], n[1], self._params.msprt_tau)
        arms = {
            name: {
                "assignments": assignments[i],
                "outcomes": outcomes[i],
                "conversions": conversions[i],
                "n": n[i],
                "rate": conversions[i] / n[i] if n[i] else None,
            }
            for i, name in enumerate(self._variants)
        }
        return {
            "control": name_a,
            "treatment": name_b,
            "count_by": self._params.count_by,
            "min_samples": min_samples,
            "alpha": alpha,
            "arms": arms,
            "difference": comparison.difference if comparison else None,
            "ci": [comparison.ci_low, comparison.ci_high] if comparison else None,
            "z": comparison.z if comparison else None,
            "p_value": comparison.p_value if comparison else None,
            "test": "two-sided two-proportion z-test (pooled)",
            "always_valid_p_value": always_valid_p,
            "verdict": ab_verdict(comparison, n[0], n[1], min_samples, name_a, name_b),
        }

    def state(self) -> dict[str, Any]:
        with self._lock:
            arms = {
                name: {
                    "assignments": self._assignments[i],
                    "outcomes": self._outcomes[i],
                    "conversions": self._conversions[i],
                }
                for i, name in enumerate(self._variants)
            }
        return {**super().state(), "arms": arms}

    def carry_over(self, previous: Mapping[str, Any]) -> None:
        arms = previous.get("arms") if isinstance(previous, Mapping) else None
        if isinstance(arms, Mapping) and set(arms) != set(self._variants):
            raise PolicyStateError(f"the A/B arms changed from {sorted(arms)} to {sorted(self._variants)}; "
                                   "the experiment starts fresh")
        self.load_state(previous)

    def load_state(self, state: Mapping[str, Any]) -> None:
        self._check_state_header(state)
        arms = state.get("arms")
        if not isinstance(arms, Mapping):
            raise PolicyStateError("state.arms: expected a mapping of variant -> counters")
        self._check_state_variants(arms, "arms")
        counters = {"assignments": [0, 0], "outcomes": [0, 0], "conversions": [0, 0]}
        for name, arm in arms.items():
            i = self._index[name]
            for field, values in counters.items():
                value = arm.get(field, 0) if isinstance(arm, Mapping) else None
                if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                    raise PolicyStateError(f"state.arms.{name}.{field}: expected a non-negative integer, got {value!r}")
                values[i] = value
            if counters["conversions"][i] > counters["outcomes"][i]:
                raise PolicyStateError(f"state.arms.{name}: more conversions than outcomes")
        with self._lock:
            self._assignments = counters["assignments"]
            self._outcomes = counters["outcomes"]
            self._conversions = counters["conversions"]
