"""Weighted rendezvous hashing, shared by the canary and A/B policies."""

from __future__ import annotations

import bisect
import hashlib
import math
import random
from collections.abc import Mapping, Sequence
from typing import Annotated

from pydantic import Field

from .params import PolicyConfigError

#: A traffic weight as it appears in the routing config.
Weight = Annotated[float, Field(ge=0.0, allow_inf_nan=False)]

_DIGEST_BYTES = 8
_TWO_POW_MINUS_53 = 2.0**-53


def check_weights(weights: Mapping[str, float], variants: Sequence[str], field: str) -> None:
    """Raise PolicyConfigError unless ``weights`` gives every variant a weight, and some > 0.

    A missing variant is an error rather than an implicit 0 so that a typo in a variant name
    cannot silently starve a variant of traffic.
    """
    unknown = sorted(set(weights) - set(variants))
    if unknown:
        raise PolicyConfigError(f"{field}: weights for unknown variants {unknown}")
    missing = [v for v in variants if v not in weights]
    if missing:
        raise PolicyConfigError(f"{field}: no weight for variants {missing}")
    if not any(weights[v] > 0 for v in variants):
        raise PolicyConfigError(f"{field}: all weights are zero; at least one must be positive")


class WeightedRendezvous:
    """Sticky weighted assignment of keys to variants by weighted rendezvous hashing.

    Algorithm (highest random weight, weighted): for a key and every variant *i* with weight
    ``w_i > 0``, hash ``(salt, variant, key)`` with BLAKE2b to a number ``h_i`` uniform in (0, 1)
    and score ``s_i = -w_i / ln(h_i)``; the key goes to the variant with the highest score.

    Why it works: ``E_i = -ln(h_i)`` is Exp(1), so ``1 / s_i = E_i / w_i`` is exponential with
    rate ``w_i``, and the minimum of independent exponentials is attained by *i* with probability
    ``w_i / sum(w)``: each variant gets exactly its weighted share of keys. Because the score of
    a (key, variant) pair only depends on that pair and ``w_i``:

    * a key stays on its variant for as long as the weights stand still, in every process and
      after every restart (BLAKE2b, unlike Python's ``hash()``, is not randomised per process);
    * when weights change, a key moves from *i* to *j* only if ``w_j'/w_j > w_i'/w_i`` (j's
      weight grew relative to i's). With two variants that is exactly the minimum movement:
      90/10 -> 80/20 moves 10% of keys, all of them towards the variant that grew. With three or
      more variants a key may also hop between two variants whose ratios both changed
      (e.g. 70/20/10 -> 60/20/20 moves some keys b -> c), so movement is small but can exceed
      the bare minimum of ``sum(max(0, share_i' - share_i))``;
    * adding a variant only takes keys from others; a weight of 0 never wins.

    Cost: one BLAKE2b digest of a few dozen bytes per positive-weight variant per key
    (about a microsecond each). Instances are immutable; swap in a new one to change weights.
    """

    __slots__ = ("_names", "_weights", "_prefixes", "_cumulative", "_total", "_salt")

    def __init__(self, weights: Mapping[str, float], salt: str = "") -> None:
        active = [(name, float(w)) for name, w in weights.items() if w > 0]
        if not active:
            raise PolicyConfigError("weights: at least one weight must be positive")
        self._salt = salt
        self._names = tuple(name for name, _ in active)
        self._weights = tuple(w for _, w in active)
        # Length-prefixed fields keep (salt, variant, key) triples unambiguous; the prefix hasher
        # is built once so each lookup only feeds the key bytes.
        self._prefixes = tuple(
            hashlib.blake2b(_field(salt) + _field(name), digest_size=_DIGEST_BYTES) for name in self._names
        )
        running = 0.0
        cumulative = []
        for w in self._weights:
            running += w
            cumulative.append(running)
        self._cumulative = tuple(cumulative)
        self._total = running

    @property
    def salt(self) -> str:
        return self._salt

    def pick(self, key: str) -> str:
        """The variant that owns ``key`` (deterministic for fixed weights and salt)."""
        data = key.encode("utf-8")
        best_name = self._names[0]
        best_score = -1.0
        for name, weight, prefix in zip(self._names, self._weights, self._prefixes, strict=True):
            h = prefix.copy()
            h.update(data)
            # Top 53 bits + 0.5 ulp gives a double strictly inside (0, 1), so ln() is finite
            # and negative.
            u = ((int.from_bytes(h.digest(), "big") >> 11) + 0.5) * _TWO_POW_MINUS_53
            score = -weight / math.log(u)
            if score > best_score:
                best_name, best_score = name, score
        return best_name

    def pick_random(self, rng: random.Random) -> str:
        """A variant drawn at random with probability proportional to its weight."""
        x = rng.random() * self._total
        i = bisect.bisect_right(self._cumulative, x)
        # x < total always, but guard against float rounding at the top edge.
        return self._names[min(i, len(self._names) - 1)]


def _field(text: str) -> bytes:
    raw = text.encode("utf-8")
    return len(raw).to_bytes(4, "big") + raw
