"""Canary: a weighted share of traffic to the candidate, sticky per key."""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import ValidationInfo, model_validator

from .base import Decision, PolicyStateError, Reason, RouteRequest, RoutingPolicy
from .hashing import Weight, WeightedRendezvous, check_weights
from .params import PolicyConfigError, PolicyParams, context_variants, parse_params


class CanaryParams(PolicyParams):
    """Parameters of the ``canary`` policy."""

    weights: dict[str, Weight]
    """Relative traffic share per variant: any non-negative numbers, normalised by their sum
    (90/10 and 0.9/0.1 mean the same). Every variant needs a weight; 0 means never chosen."""

    hash_salt: str = ""
    """Mixed into the sticky hash. Changing it reshuffles every key; give independent rollouts
    different salts so the same users are not always the ones on the candidate."""

    @model_validator(mode="after")
    def _weights_fit_variants(self, info: ValidationInfo) -> CanaryParams:
        variants = context_variants(info)
        if variants is not None:
            check_weights(self.weights, variants, "weights")
        elif not any(w > 0 for w in self.weights.values()):
            raise PolicyConfigError("weights: all weights are zero; at least one must be positive")
        return self


class CanaryPolicy(RoutingPolicy):
    """Weighted traffic split, sticky per key, with weights that can change at run time.

    * **Override** — a request naming a variant goes there (reason ``override``), whatever its
      weight, so QA can reach a 0%-weight candidate.
    * **Keyed request** — the key (user or session id) is assigned by weighted rendezvous hashing
      (:class:`~.hashing.WeightedRendezvous`, reason ``sticky-hash``): a key stays on its
      variant while the weights stand still, and when the weights move few keys move, each
      towards a variant whose weight grew relative to its own (with two variants exactly the
      minimum: 90/10 -> 80/20 moves 10% of keys, all to the candidate). No per-key state is
      kept, so every router replica agrees without coordination.
    * **Request without key** — a weighted random draw (reason ``weighted-random``).

    A variant with weight 0 is never chosen except by override. :meth:`set_weights` is how the
    supervisor or an operator shifts traffic; the current weights are the persisted state.

    Thread-safety: ``choose`` reads one immutable hasher object without locking (a concurrent
    weight change is seen entirely or not at all); writers serialise on the policy lock.
    """

    kind = "canary"
    Params = CanaryParams

    def __init__(
        self,
        variants: Sequence[str],
        params: CanaryParams | Mapping[str, Any] | None = None,
        *,
        rng: random.Random | int | None = None,
    ) -> None:
        super().__init__(variants)
        self._params = parse_params(CanaryParams, self.kind, self._variants, params)
        self._rng = rng if isinstance(rng, random.Random) else random.Random(rng)
        self._hasher = WeightedRendezvous(self._ordered(self._params.weights), self._params.hash_salt)

    @property
    def weights(self) -> dict[str, float]:
        """Current weights, as configured (not normalised)."""
        return dict(self._params.weights)

    def set_weights(self, weights: Mapping[str, float]) -> None:
        """Replace all weights atomically; raises PolicyConfigError and changes nothing if bad."""
        with self._lock:
            params = parse_params(
                CanaryParams,
                self.kind,
                self._variants,
                {"weights": dict(weights), "hash_salt": self._params.hash_salt},
            )
            hasher = WeightedRendezvous(self._ordered(params.weights), params.hash_salt)
            self._params, self._hasher = params, hasher

    def choose(self, request: RouteRequest) -> Decision:
        forced = self._override(request)
        if forced is not None:
            return forced
        hasher = self._hasher
        if request.key:
            return Decision(hasher.pick(request.key), Reason.STICKY_HASH)
        return Decision(hasher.pick_random(self._rng), Reason.WEIGHTED_RANDOM)

    def state(self) -> dict[str, Any]:
        return {**super().state(), "weights": self.weights}

    def load_state(self, state: Mapping[str, Any]) -> None:
        self._check_state_header(state)
        weights = state.get("weights")
        if not isinstance(weights, Mapping):
            raise PolicyStateError("state.weights: expected a mapping of variant -> weight")
        self._check_state_variants(weights, "weights")
        try:
            self.set_weights(weights)
        except PolicyConfigError as exc:
            raise PolicyStateError(f"state.weights: {exc}") from None

    def _ordered(self, weights: Mapping[str, float]) -> dict[str, float]:
        # Config order, not dict order, so the no-key random draw maps the same way everywhere.
        return {name: weights[name] for name in self._variants}
