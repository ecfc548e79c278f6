"""Shadow: the primary answers; the router mirrors requests to the shadows."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import ValidationInfo, model_validator

from .base import Decision, Reason, RouteRequest, RoutingPolicy
from .params import PolicyConfigError, PolicyParams, context_variants, parse_params


class ShadowParams(PolicyParams):
    """Parameters of the ``shadow`` policy."""

    primary: str | None = None
    """Variant that answers every request. Default: the first variant."""

    shadows: list[str] | None = None
    """Variants that receive a mirrored copy of each request (their answers are only compared,
    never returned). Default: every variant except the primary."""

    @model_validator(mode="after")
    def _roles_fit_variants(self, info: ValidationInfo) -> ShadowParams:
        variants = context_variants(info)
        if variants is None:
            return self
        if self.primary is not None and self.primary not in variants:
            raise PolicyConfigError(f"primary: unknown variant {self.primary!r}")
        if self.shadows is not None:
            unknown = [s for s in self.shadows if s not in variants]
            if unknown:
                raise PolicyConfigError(f"shadows: unknown variants {unknown}")
            if len(set(self.shadows)) != len(self.shadows):
                raise PolicyConfigError("shadows: duplicate variants")
            primary = self.primary if self.primary is not None else variants[0]
            if primary in self.shadows:
                raise PolicyConfigError(f"shadows: {primary!r} is the primary and cannot shadow itself")
        return self


class ShadowPolicy(RoutingPolicy):
    """Shadow deployment: every request is answered by the primary.

    The policy itself is trivial — ``choose`` returns the primary (reason ``primary``), or the
    override variant if a request names one (to reach a candidate directly for debugging).
    The interesting part lives in the router: for each request it sends a fire-and-forget copy
    to every variant in :attr:`mirrors`, off the response path, and compares outputs and
    latency. The policy only tells it where to mirror. It keeps no state besides its config.
    """

    kind = "shadow"
    Params = ShadowParams

    def __init__(
        self,
        variants: Sequence[str],
        params: ShadowParams | Mapping[str, Any] | None = None,
        *,
        rng: object = None,
    ) -> None:
        super().__init__(variants)
        self._params = parse_params(ShadowParams, self.kind, self._variants, params)
        self._primary = self._params.primary or self._variants[0]
        shadows = self._params.shadows
        self._shadows = tuple(shadows if shadows is not None else (v for v in self._variants if v != self._primary))
        self._decision = Decision(self._primary, Reason.PRIMARY)

    @property
    def primary(self) -> str:
        return self._primary

    @property
    def mirrors(self) -> tuple[str, ...]:
        """The shadows: variants the router mirrors each answered request to."""
        return self._shadows

    def choose(self, request: RouteRequest) -> Decision:
        return self._override(request) or self._decision

    def state(self) -> dict[str, Any]:
        return {**super().state(), "primary": self._primary, "shadows": list(self._shadows)}
