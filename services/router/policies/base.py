"""The one interface every routing policy implements.

A policy turns a :class:`RouteRequest` into a :class:`Decision` (which variant serves the request,
and why). It never touches the network: the router owns connections, mirroring, retries and the
request-id -> decision bookkeeping needed for delayed feedback; a policy only decides and learns.

Contract shared by all policies:

* ``choose`` is on the hot path and must stay in the microsecond range.
* ``choose``, ``on_result``, ``on_reward``, ``state`` and ``load_state`` may be called concurrently
  from several threads.
* ``state()`` returns plain JSON types only; ``load_state(state())`` on a fresh instance built from
  the same config continues exactly where the old one stopped (random generators excepted).
* Every bad input raises a ``ValueError`` subclass whose message names the problem, so the router
  can answer 4xx without guessing.
"""

from __future__ import annotations

import math
import threading
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, ClassVar

from .params import PolicyParams, validate_variants

#: Bumped when the layout of ``state()`` changes incompatibly.
STATE_VERSION = 1


class PolicyStateError(ValueError):
    """A persisted state does not fit this policy (other kind, unknown variant, bad numbers)."""


class UnknownVariantError(ValueError):
    """A request override or a feedback call names a variant the policy does not route to."""


class InvalidRewardError(ValueError):
    """A reward outside what the policy can learn from (NaN, out of range, not 0/1 for A/B)."""


class Reason(StrEnum):
    """Why a variant was chosen. Values are plain strings (log- and JSON-friendly)."""

    OVERRIDE = "override"
    PRIMARY = "primary"
    STICKY_HASH = "sticky-hash"
    WEIGHTED_RANDOM = "weighted-random"
    EXPLORE = "explore"
    EXPLOIT = "exploit"


@dataclass(frozen=True, slots=True)
class RouteRequest:
    """What a policy may look at when routing one request.

    ``key`` is the stickiness key (user id, session id...); ``None`` or ``""`` means "no key".
    ``override`` names a variant that must serve the request (debugging, QA, pinned clients).
    """

    request_id: str
    key: str | None = None
    override: str | None = None


@dataclass(frozen=True, slots=True)
class Decision:
    """The variant that serves a request and the reason (a :class:`Reason` value)."""

    variant: str
    reason: str


#: Largest reward magnitude any policy takes: sums of squares of rewards (variances, the router's
#: `router_feedback_reward_squares_sum`) stay finite and exact enough; 1e300 would overflow them.
MAX_ABS_REWARD = 1e9


def finite_reward(reward: float) -> float:
    """Coerce to float and reject NaN/inf, magnitudes beyond MAX_ABS_REWARD and non-numbers with
    InvalidRewardError."""
    if isinstance(reward, bool):
        return float(reward)
    try:
        value = float(reward)
    except (TypeError, ValueError):
        raise InvalidRewardError(f"reward: expected a number, got {reward!r}") from None
    if not math.isfinite(value):
        raise InvalidRewardError(f"reward: must be finite, got {reward!r}")
    if abs(value) > MAX_ABS_REWARD:
        raise InvalidRewardError(f"reward: {reward!r} is beyond the largest magnitude taken ({MAX_ABS_REWARD:g})")
    return value


class RoutingPolicy(ABC):
    """Decides which variant serves each request, and optionally learns from feedback.

    Subclasses set ``kind`` (the registry name) and ``Params`` (their pydantic parameter model),
    implement :meth:`choose`, and override the feedback hooks and state methods they need.
    The base class owns the variant list, a lock for subclasses that mutate shared state, override
    handling and the common header of the persisted state.
    """

    kind: ClassVar[str]
    Params: ClassVar[type[PolicyParams]]
    #: Decisions await an outcome (``POST /feedback``): the router keeps request id -> decision.
    takes_feedback: ClassVar[bool] = False
    #: What the policy learned survives a config change that keeps its kind (:meth:`carry_over`);
    #: False when its whole state comes from the config (canary weights, shadow roles).
    carries_state: ClassVar[bool] = False

    def __init__(self, variants: Sequence[str]) -> None:
        self._variants = validate_variants(variants)
        self._index = {name: i for i, name in enumerate(self._variants)}
        self._lock = threading.Lock()

    @property
    def variants(self) -> tuple[str, ...]:
        """The variant names this policy routes to, in configuration order."""
        return self._variants

    @abstractmethod
    def choose(self, request: RouteRequest) -> Decision:
        """Pick the variant for one request. Must be cheap and thread-safe."""

    def on_result(self, decision: Decision, request_id: str, ok: bool, latency_s: float) -> None:
        """Called by the router when a routed request finished. Default: ignore."""
        return None

    def on_reward(self, variant: str, reward: float) -> None:
        """Called with a (possibly delayed) business reward for a variant. Default: ignore."""
        return None

    @property
    def reward_range(self) -> tuple[float, float] | None:
        """The rewards this policy can learn from, (low, high) inclusive; None: any finite reward
        (of magnitude at most MAX_ABS_REWARD). Default: None."""
        return None

    def check_reward(self, reward: float) -> float:
        """Validate a reward without changing anything: the float value, or InvalidRewardError naming
        the problem (NaN, inf, too large, outside :attr:`reward_range`). The router calls it for every
        reward, under every policy, before any state changes. Default: finite and in range."""
        value = finite_reward(reward)
        bounds = self.reward_range
        if bounds is not None and not bounds[0] <= value <= bounds[1]:
            raise InvalidRewardError(f"reward: {reward!r} is outside [{bounds[0]:g}, {bounds[1]:g}], "
                                     f"the rewards the {self.kind} policy takes")
        return value

    def on_failure(self, variant: str, reward: float | None) -> bool:
        """The chosen variant failed and the fallback answered; ``reward`` is the config's failure
        reward (None: failures teach nothing). True if the policy learned from it. Default: ignore."""
        return False

    @property
    def mirrors(self) -> tuple[str, ...]:
        """Variants that get a copy of every answered request, off the response path. Default: none."""
        return ()

    def report(self) -> dict[str, Any]:
        """What ``GET /experiments/{name}`` shows. Default: the state."""
        return self.state()

    def carry_over(self, previous: Mapping[str, Any]) -> None:
        """Continue from ``previous``, the :meth:`state` of the same kind of policy under the
        config this one replaces. Raises PolicyStateError (saying why) when it does not fit;
        then nothing changed. Default: :meth:`load_state`."""
        self.load_state(previous)

    def state(self) -> dict[str, Any]:
        """JSON-serialisable snapshot for persistence and the status endpoint."""
        return {"kind": self.kind, "version": STATE_VERSION, "variants": list(self._variants)}

    def load_state(self, state: Mapping[str, Any]) -> None:
        """Restore a snapshot taken by :meth:`state`. Validates fully before changing anything."""
        self._check_state_header(state)

    # -- helpers for subclasses ------------------------------------------------------------

    def _variant_index(self, variant: str) -> int:
        try:
            return self._index[variant]
        except (KeyError, TypeError):
            raise UnknownVariantError(f"variant: unknown variant {variant!r}; known: {list(self._variants)}") from None

    def _override(self, request: RouteRequest) -> Decision | None:
        """The forced decision if the request carries an override, else None."""
        if request.override is None:
            return None
        self._variant_index(request.override)
        return Decision(request.override, Reason.OVERRIDE)

    def _check_state_header(self, state: Mapping[str, Any]) -> None:
        if not isinstance(state, Mapping):
            raise PolicyStateError("state: expected a mapping")
        if state.get("kind") != self.kind:
            raise PolicyStateError(
                f"state.kind: state of a {state.get('kind')!r} policy cannot load into {self.kind!r}"
            )
        if state.get("version") != STATE_VERSION:
            raise PolicyStateError(
                f"state.version: unsupported version {state.get('version')!r}, expected {STATE_VERSION}"
            )

    def _check_state_variants(self, names: Any, field: str) -> None:
        """Per-variant state may only name configured variants: nothing is dropped silently."""
        unknown = sorted(set(names) - set(self._variants))
        if unknown:
            raise PolicyStateError(f"state.{field}: variants {unknown} are not configured ({list(self._variants)})")
