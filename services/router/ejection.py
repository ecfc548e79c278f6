"""Consecutive-failure outlier ejection, as Envoy's outlier detection does it.

A variant that fails `consecutive_failures` times in a row (connect error, timeout, reset, 5xx;
never a 4xx, which is the client's mistake) is *ejected*: the router stops sending it traffic
for a cool-down of `base_ejection_s * n`, where n counts the ejections in a row (capped at
`max_ejection_s`). When the cool-down is over the variant is back in rotation with a clean
failure count; a success resets the multiplier, another run of failures ejects it again for
longer. While a variant is ejected, requests the policy sends to it go straight to the fallback.

The clock is injectable so the logic is tested without sleeping.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class _Health:
    consecutive_failures: int = 0
    ejected_until: float = 0.0
    ejections_in_a_row: int = 0
    ejections_total: int = 0


class OutlierDetector:
    """Per-variant failure counting and ejection. Not thread-safe: used from the event loop."""

    def __init__(
        self,
        *,
        consecutive_failures: int,
        base_ejection_s: float,
        max_ejection_s: float,
        enabled: bool = True,
        clock: Callable[[], float] = time.monotonic,
        on_eject: Callable[[str, float], None] | None = None,
        on_return: Callable[[str], None] | None = None,
    ) -> None:
        self.enabled = enabled
        self.threshold = consecutive_failures
        self.base_ejection_s = base_ejection_s
        self.max_ejection_s = max_ejection_s
        self._clock = clock
        self._on_eject = on_eject
        self._on_return = on_return
        self._health: dict[str, _Health] = {}

    def reconfigure(self, *, consecutive_failures: int, base_ejection_s: float, max_ejection_s: float,
                    enabled: bool) -> None:
        """New thresholds from a new config; current ejections and counts stay."""
        self.enabled = enabled
        self.threshold = consecutive_failures
        self.base_ejection_s = base_ejection_s
        self.max_ejection_s = max_ejection_s
        if not enabled:
            for name, health in self._health.items():
                if health.ejected_until:
                    health.ejected_until = 0.0
                    if self._on_return:
                        self._on_return(name)

    def forget(self, variant: str) -> None:
        """Drop a variant's record (removed from the config, or its URL changed)."""
        health = self._health.pop(variant, None)
        if health is not None and health.ejected_until and self._on_return:
            self._on_return(variant)

    def is_ejected(self, variant: str) -> bool:
        health = self._health.get(variant)
        if health is None or not health.ejected_until:
            return False
        if self._clock() < health.ejected_until:
            return True
        # Cool-down over: back in rotation with a clean count (the multiplier stays until a success).
        health.ejected_until = 0.0
        health.consecutive_failures = 0
        if self._on_return:
            self._on_return(variant)
        return False

    def success(self, variant: str) -> None:
        health = self._health.get(variant)
        if health is not None:
            health.consecutive_failures = 0
            if not health.ejected_until:
                health.ejections_in_a_row = 0

    def failure(self, variant: str) -> bool:
        """Count a failure; True if this failure ejected the variant."""
        health = self._health.get(variant)
        if health is None:
            health = self._health[variant] = _Health()
        if health.ejected_until:  # a request that was already in flight when it got ejected
            return False
        health.consecutive_failures += 1
        if not self.enabled or health.consecutive_failures < self.threshold:
            return False
        health.ejections_in_a_row += 1
        health.ejections_total += 1
        cool_down = min(self.base_ejection_s * health.ejections_in_a_row, self.max_ejection_s)
        health.ejected_until = self._clock() + cool_down
        health.consecutive_failures = 0
        if self._on_eject:
            self._on_eject(variant, cool_down)
        return True

    def snapshot(self) -> dict[str, dict[str, float | int | bool]]:
        now = self._clock()
        out: dict[str, dict[str, float | int | bool]] = {}
        for name, h in self._health.items():
            ejected = bool(h.ejected_until) and now < h.ejected_until
            out[name] = {
                "ejected": ejected,
                "ejected_for_s": round(h.ejected_until - now, 3) if ejected else 0.0,
                "consecutive_failures": h.consecutive_failures,
                "ejections_in_a_row": h.ejections_in_a_row,
                "ejections_total": h.ejections_total,
            }
        return out
