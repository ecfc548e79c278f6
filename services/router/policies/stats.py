"""Statistics for A/B verdicts: two-proportion z-test, Wald interval, and an mSPRT p-value.

Normal tail probabilities come from ``math.erfc`` and quantiles from
``statistics.NormalDist.inv_cdf`` (both to double precision, checked against scipy in the
tests). scipy is deliberately not imported: the project keeps it off serving paths
(it is a ``train`` extra), and the router imports this module.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist

_STANDARD_NORMAL = NormalDist()

VERDICT_NOT_ENOUGH_DATA = "not enough data"
VERDICT_NO_DIFFERENCE = "no significant difference"


@dataclass(frozen=True, slots=True)
class ProportionComparison:
    """Arm B versus arm A on a 0/1 outcome."""

    rate_a: float
    rate_b: float
    difference: float
    """rate_b - rate_a."""
    ci_low: float
    ci_high: float
    """Bounds of the (1 - alpha) Wald interval for the difference."""
    z: float
    p_value: float
    """Two-sided p-value of the pooled two-proportion z-test."""
    alpha: float


def _check_counts(successes: int, n: int, arm: str) -> None:
    if n < 1:
        raise ValueError(f"n_{arm}: need at least one observation, got {n}")
    if not 0 <= successes <= n:
        raise ValueError(f"conversions_{arm}: must be within [0, n_{arm}={n}], got {successes}")


def compare_proportions(
    conversions_a: int, n_a: int, conversions_b: int, n_b: int, alpha: float = 0.05
) -> ProportionComparison:
    """Two-sided two-proportion z-test of H0: p_a == p_b, plus a Wald interval for p_b - p_a.

    The test uses the pooled rate under H0, ``z = (p_b - p_a) / sqrt(p(1-p)(1/n_a + 1/n_b))``
    with ``p = (x_a + x_b) / (n_a + n_b)``; it is equivalent to Pearson's chi-square test on the
    2x2 table without continuity correction (z**2 == chi2). The interval is the unpooled Wald
    interval ``d +- z_{1-alpha/2} sqrt(p_a(1-p_a)/n_a + p_b(1-p_b)/n_b)``. Both are large-sample
    approximations: trust them once each arm has dozens of successes and failures. Near the
    boundary the interval and the test can disagree slightly (pooled vs unpooled variance);
    the verdict follows the test.
    """
    _check_counts(conversions_a, n_a, "a")
    _check_counts(conversions_b, n_b, "b")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha: must be in (0, 1), got {alpha}")
    rate_a = conversions_a / n_a
    rate_b = conversions_b / n_b
    diff = rate_b - rate_a
    pooled = (conversions_a + conversions_b) / (n_a + n_b)
    se_pooled = math.sqrt(pooled * (1.0 - pooled) * (1.0 / n_a + 1.0 / n_b))
    if se_pooled == 0.0:
        # Both arms all-0 or all-1: identical rates, nothing to test.
        z, p_value = 0.0, 1.0
    else:
        z = diff / se_pooled
        # Two-sided normal tail: 2 * (1 - Phi(|z|)) == erfc(|z| / sqrt(2)), without cancellation.
        p_value = math.erfc(abs(z) / math.sqrt(2.0))
    se = math.sqrt(rate_a * (1.0 - rate_a) / n_a + rate_b * (1.0 - rate_b) / n_b)
    half_width = _STANDARD_NORMAL.inv_cdf(1.0 - alpha / 2.0) * se
    return ProportionComparison(
        rate_a=rate_a,
        rate_b=rate_b,
        difference=diff,
        ci_low=diff - half_width,
        ci_high=diff + half_width,
        z=z,
        p_value=min(1.0, p_value),
        alpha=alpha,
    )


def msprt_p_value(conversions_a: int, n_a: int, conversions_b: int, n_b: int, tau: float = 0.02) -> float:
    """Always-valid p-value of a mixture sequential probability ratio test (mSPRT).

    The fixed-sample z-test assumes you look once. A status page is looked at all the time, and
    stopping the first time p < alpha inflates false positives far beyond alpha. The mSPRT
    (Johari, Pekelis & Walsh, "Always valid inference", 2017) mixes the likelihood ratio of the
    observed difference ``d ~ N(theta, V)`` over ``theta ~ N(0, tau**2)``::

        Lambda = sqrt(V / (V + tau**2)) * exp(tau**2 d**2 / (2 V (V + tau**2)))

    ``Lambda`` is a non-negative martingale under H0, so by Ville's inequality
    ``P(Lambda >= 1/alpha at any time) <= alpha`` and ``p = min(1, 1/Lambda)`` may be checked at
    every look. ``V`` is the estimated variance of ``d`` (unpooled, falling back to pooled when
    an arm is all-0 or all-1). ``tau`` is the effect size (absolute rate difference) the test is
    most sensitive to. The normal approximation needs moderate counts, as for the z-test.
    """
    _check_counts(conversions_a, n_a, "a")
    _check_counts(conversions_b, n_b, "b")
    if tau <= 0.0:
        raise ValueError(f"tau: must be positive, got {tau}")
    rate_a, rate_b = conversions_a / n_a, conversions_b / n_b
    diff = rate_b - rate_a
    var = rate_a * (1.0 - rate_a) / n_a + rate_b * (1.0 - rate_b) / n_b
    if var == 0.0:
        pooled = (conversions_a + conversions_b) / (n_a + n_b)
        var = pooled * (1.0 - pooled) * (1.0 / n_a + 1.0 / n_b)
        if var == 0.0:
            return 1.0
    tau2 = tau * tau
    log_lambda = 0.5 * math.log(var / (var + tau2)) + tau2 * diff * diff / (2.0 * var * (var + tau2))
    return 1.0 if log_lambda <= 0.0 else math.exp(-log_lambda)


def ab_verdict(
    comparison: ProportionComparison | None,
    n_a: int,
    n_b: int,
    min_samples: int,
    name_a: str,
    name_b: str,
) -> str:
    """``"not enough data"`` until both arms have ``min_samples``; then ``"<arm> better"`` if the
    z-test rejects at ``comparison.alpha`` (the arm with the higher rate), else
    ``"no significant difference"``."""
    if comparison is None or min(n_a, n_b) < min_samples:
        return VERDICT_NOT_ENOUGH_DATA
    if comparison.p_value < comparison.alpha:
        return f"{name_b if comparison.difference > 0 else name_a} better"
    return VERDICT_NO_DIFFERENCE
