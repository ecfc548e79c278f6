"""Sequential tests that may be checked after every interval: always-valid mixture SPRTs.

A fixed-sample test looked at every minute and stopped at the first "significant" reading
rejects a good candidate far more often than its alpha. These tests are *test martingales*: a
non-negative process ``Lambda_t`` with ``E[Lambda_t] <= 1`` under the null hypothesis ("the
candidate is no worse than the stable"), so by Ville's inequality

    P(Lambda_t >= 1/alpha at any time t, ever) <= alpha

and rolling back the first time ``Lambda_t >= 1/alpha`` keeps the false-rollback probability at
most ``alpha`` however often the supervisor looks and however long the rollout runs. The
always-valid p-value is ``min(1, 1 / max_s<=t Lambda_s)``. Both tests are one-sided: only a
worse candidate is evidence; a better one is not.

**Proportions (error rate, misprediction rate): exact conditional mixture SPRT on the odds
ratio.** Within one interval the stable answered ``n_s`` requests with ``x_s`` errors and the
candidate ``n_c`` with ``x_c``. Given the interval's margins (``n_s``, ``n_c`` and the total
``e = x_s + x_c``), the candidate's share of the errors follows Fisher's noncentral
hypergeometric law with odds ratio ``psi`` (``psi = 1`` when both error rates are equal), so the
interval's likelihood ratio of ``psi`` against 1 is

    LR_psi = psi**x_c / E_1[psi**Y],   Y ~ Hypergeometric(N = n_s + n_c, K = n_c, draws = e)

whose expectation under ``psi = 1`` is exactly 1 whatever the margins. The product over
intervals is a martingale for every ``psi`` (a supermartingale when the candidate is better,
``psi < 1``, by the monotone likelihood ratio), and so is any mixture of them over ``psi >= 1``.

The mixture starts at **the smallest effect worth catching**: ``log psi = log(2) +
HalfNormal(sd)`` (start ``min_log_odds``) with sd = 1.0 (``log_odds_sd``), discretised on 32
points up to 4 sd above the start. An odds ratio of 2 is a candidate doubling the odds of a bad
event: 0.5 % -> 1 % errors, Flagger's default 99 % success rate over a healthy stable;
a 5 % -> 7 % misprediction rate (a 2-point accuracy drop) is 1.4, 5 % -> 10 % is 2.1. A mixture centred on
"no effect" (the earlier ``HalfNormal(1)`` from ``psi = 1``) spends most of its weight on odds
ratios nobody would roll back for, and pays for it in evidence: on simulated 0.5 % vs 2 % error
streams at a 10 % canary (alpha 0.005, 30 seeded runs) it needed a median ~670 candidate requests,
this one ~500; at 5 % errors 170 vs 150; for a 5 % -> 15 % misprediction rate ~115 vs ~95 labels.
It is slower only on effects below an odds ratio of 2, mostly within the rules' tolerances (the
rules judge those). Validity does not depend on where the mixture sits: every component is a
martingale under ``psi = 1``, and a discrete mixture is as valid as a continuous one (seeded
false-rollback tests in ``tests/unit/supervisor/test_sequential.py``). A test persisted before
this change (no ``min_log_odds`` in its state) resumes with its own mixture (start 0).

Why not the normal mSPRT on the difference of rates (as the router's A/B report uses)? Error
counts are small (a 5 % canary at 1 % errors sees a handful an interval), the plug-in variance
of a normal approximation is unreliable there, and the traffic split changes at every step,
which breaks the random-walk structure the normal mSPRT assumes. The conditional test needs no
variance estimate, is exact at any count, and conditioning on each interval's margins makes the
split changes irrelevant. It is also faster: on simulated 1 % vs 5 % error streams at a 5 %
canary (alpha 0.05) it stops in a median ~110 candidate requests where the plug-in normal
mSPRT (tau 0.02) needs ~320 (see the unit tests and the README).

**Means (reward): normal mixture SPRT on the difference of means, in blocks.** Rewards are
grouped into blocks holding at least ``min_block`` rewards per variant. Block ``k`` gives the
difference ``d_k = mean_stable - mean_candidate`` with variance ``V_k = s2 (1/n_s + 1/n_c)``,
``s2`` the *pooled* sample variance (the variance under the null; per-arm plug-in variances of
small blocks make the test reject far too often). With ``Z = sum d_k / V_k`` and
``I = sum 1 / V_k`` the Gaussian likelihood ratio of a difference ``theta`` is
``exp(theta Z - theta**2 I / 2)`` — a product of independent block ratios, valid however the
block sizes and the split vary — and mixing ``theta ~ HalfNormal(tau)`` (**mixing variance
tau**2**, tau in reward units, default 0.05) gives the closed form

    Lambda = 2 / sqrt(1 + tau**2 I) * exp(tau**2 Z**2 / (2 (1 + tau**2 I))) * Phi(tau Z / sqrt(1 + tau**2 I))

This one rests on the normal approximation of each block's mean (hence ``min_block``).

The states are immutable and serialise to JSON, so a restarted supervisor resumes its tests.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Any

import numpy as np
from scipy import stats

DEFAULT_ALPHA = 0.01
DEFAULT_LOG_ODDS_SD = 1.0
DEFAULT_MIN_LOG_ODDS = math.log(2.0)
"""The mixture's start: the smallest odds ratio worth catching (see the module docstring)."""
DEFAULT_REWARD_TAU = 0.05
DEFAULT_MIN_BLOCK = 30
GRID_POINTS = 32
GRID_SPAN_SDS = 4.0


@lru_cache(maxsize=16)
def _grid(sd: float, start: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Points ``log psi`` and log weights of the discretised ``start + HalfNormal(sd)`` mixing law."""
    edges = np.linspace(0.0, GRID_SPAN_SDS * sd, GRID_POINTS + 1)
    cdf = stats.halfnorm.cdf(edges, scale=sd)
    cdf[-1] = 1.0  # the last point carries the tail: the weights sum to exactly 1
    weights = np.diff(cdf)
    points = start + (edges[:-1] + edges[1:]) / 2.0
    return points, np.log(weights)


def _check_alpha(alpha: float) -> None:
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha: must be in (0, 1), got {alpha}")


@dataclass(frozen=True)
class SequentialResult:
    """Where one sequential test stands (part of every decision record)."""

    test: str
    """What is tested: error_rate | misprediction_rate | reward."""
    stable_value: float | None
    """Stable's rate or mean reward since the analysis started."""
    candidate_value: float | None
    stable_n: int
    candidate_n: int
    statistic: float
    """log Lambda, the log mixture likelihood ratio now."""
    threshold: float
    """log(1 / alpha): the test rejects when the statistic reaches it."""
    p_value: float
    """Always-valid p-value, min(1, 1 / max Lambda so far)."""
    alpha: float
    rejected: bool
    """The candidate is significantly worse; once true it stays true."""
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


@dataclass(frozen=True)
class ProportionTest:
    """Exact conditional mixture SPRT: is the candidate's rate of bad events higher?

    Feed it one interval at a time with :meth:`update` (counts over that interval, not
    cumulative ones). ``test`` names the rate ("error_rate", "misprediction_rate").
    """

    test: str
    alpha: float = DEFAULT_ALPHA
    log_odds_sd: float = DEFAULT_LOG_ODDS_SD
    """Spread of the mixture above its start, on the log odds ratio."""
    min_log_odds: float = DEFAULT_MIN_LOG_ODDS
    """Where the mixture starts: log of the smallest odds ratio worth catching (>= 0)."""
    log_lr: tuple[float, ...] = ()
    """Running log likelihood ratio at each mixing point (empty = all zero)."""
    stable_n: int = 0
    stable_events: int = 0
    candidate_n: int = 0
    candidate_events: int = 0
    max_log_mixture: float = 0.0

    def __post_init__(self) -> None:
        _check_alpha(self.alpha)
        if not (math.isfinite(self.log_odds_sd) and self.log_odds_sd > 0):
            raise ValueError(f"log_odds_sd: must be a positive number, got {self.log_odds_sd}")
        if not (math.isfinite(self.min_log_odds) and self.min_log_odds >= 0):
            # Components below psi = 1 are not martingales under the null: the test would not be valid.
            raise ValueError(f"min_log_odds: must be a number >= 0, got {self.min_log_odds}")
        if self.log_lr and len(self.log_lr) != GRID_POINTS:
            raise ValueError(f"log_lr: expected {GRID_POINTS} values, got {len(self.log_lr)}")

    def _log_lr(self) -> np.ndarray:
        return np.asarray(self.log_lr, dtype=float) if self.log_lr else np.zeros(GRID_POINTS)

    @property
    def log_mixture(self) -> float:
        points, log_w = _grid(self.log_odds_sd, self.min_log_odds)
        return float(np.logaddexp.reduce(self._log_lr() + log_w))

    @property
    def p_value(self) -> float:
        return min(1.0, math.exp(-self.max_log_mixture))

    @property
    def rejected(self) -> bool:
        return self.max_log_mixture >= math.log(1.0 / self.alpha)

    def update(self, stable_n: int, stable_events: int, candidate_n: int, candidate_events: int) -> ProportionTest:
        """The test after one more interval with these counts."""
        for name, n, x in (("stable", stable_n, stable_events), ("candidate", candidate_n, candidate_events)):
            if n < 0 or not 0 <= x <= n:
                raise ValueError(f"{name}: need 0 <= events <= n, got events={x}, n={n}")
        log_lr = self._log_lr()
        total_events = stable_events + candidate_events
        # No event, or one variant idle: the interval's ratio is 1 for every psi.
        if total_events > 0 and stable_n > 0 and candidate_n > 0:
            points, _ = _grid(self.log_odds_sd, self.min_log_odds)
            low, high = max(0, total_events - stable_n), min(candidate_n, total_events)
            support = np.arange(low, high + 1)
            log_pmf = stats.hypergeom.logpmf(support, stable_n + candidate_n, candidate_n, total_events)
            # log E_1[psi**Y] for every psi at once.
            log_norm = np.logaddexp.reduce(log_pmf[None, :] + np.outer(points, support), axis=1)
            log_lr = log_lr + candidate_events * points - log_norm
        moved = replace(
            self,
            log_lr=tuple(float(v) for v in log_lr),
            stable_n=self.stable_n + stable_n,
            stable_events=self.stable_events + stable_events,
            candidate_n=self.candidate_n + candidate_n,
            candidate_events=self.candidate_events + candidate_events,
        )
        return replace(moved, max_log_mixture=max(self.max_log_mixture, moved.log_mixture))

    def result(self) -> SequentialResult:
        stable_rate = self.stable_events / self.stable_n if self.stable_n else None
        candidate_rate = self.candidate_events / self.candidate_n if self.candidate_n else None
        threshold = math.log(1.0 / self.alpha)
        what = self.test.replace("_", " ")
        rates = (
            f"candidate {_fmt(candidate_rate)} (n={self.candidate_n}) "
            f"vs stable {_fmt(stable_rate)} (n={self.stable_n})"
        )
        if self.rejected:
            reason = (
                f"{what} significantly higher: {rates}; always-valid p={self.p_value:.2g} < alpha={self.alpha:g}"
            )
        else:
            reason = f"no significant increase in {what} yet: {rates}; always-valid p={self.p_value:.2g}"
        return SequentialResult(
            test=self.test,
            stable_value=stable_rate,
            candidate_value=candidate_rate,
            stable_n=self.stable_n,
            candidate_n=self.candidate_n,
            statistic=self.log_mixture,
            threshold=threshold,
            p_value=self.p_value,
            alpha=self.alpha,
            rejected=self.rejected,
            reason=reason,
        )

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "proportion", **{k: _jsonable(getattr(self, k)) for k in self.__dataclass_fields__}}

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> ProportionTest:
        data = {k: v for k, v in raw.items() if k != "kind"}
        data["log_lr"] = tuple(data.get("log_lr", ()))
        if data["log_lr"] and "min_log_odds" not in data:
            # Persisted before the mixture had a start: its ratios were accumulated at points from 0.
            data["min_log_odds"] = 0.0
        return cls(**data)


@dataclass(frozen=True)
class _Sums:
    n: int = 0
    total: float = 0.0
    total_sq: float = 0.0

    def plus(self, n: int, total: float, total_sq: float) -> _Sums:
        return _Sums(self.n + n, self.total + total, self.total_sq + total_sq)

    def as_tuple(self) -> tuple[int, float, float]:
        return (self.n, self.total, self.total_sq)


@dataclass(frozen=True)
class MeanTest:
    """Normal mixture SPRT in blocks: is the candidate's mean reward lower than the stable's?

    Feed it one interval at a time with :meth:`update` (reward count, sum and sum of squares
    of each variant over that interval).
    """

    test: str = "reward"
    alpha: float = DEFAULT_ALPHA
    tau: float = DEFAULT_REWARD_TAU
    min_block: int = DEFAULT_MIN_BLOCK
    z: float = 0.0
    info: float = 0.0
    pending_stable: tuple[int, float, float] = (0, 0.0, 0.0)
    pending_candidate: tuple[int, float, float] = (0, 0.0, 0.0)
    stable: tuple[int, float, float] = (0, 0.0, 0.0)
    """Cumulative (count, sum, sum of squares) of the stable's rewards, for the record."""
    candidate: tuple[int, float, float] = (0, 0.0, 0.0)
    max_log_mixture: float = 0.0

    def __post_init__(self) -> None:
        _check_alpha(self.alpha)
        if not (math.isfinite(self.tau) and self.tau > 0):
            raise ValueError(f"tau: must be a positive number, got {self.tau}")
        if self.min_block < 2:
            raise ValueError(f"min_block: need at least 2 rewards per variant and block, got {self.min_block}")
        for name in ("pending_stable", "pending_candidate", "stable", "candidate"):
            n, total, total_sq = getattr(self, name)
            object.__setattr__(self, name, (int(n), float(total), float(total_sq)))

    @property
    def log_mixture(self) -> float:
        a = 1.0 + self.tau * self.tau * self.info
        return float(
            math.log(2.0)
            - 0.5 * math.log(a)
            + self.tau * self.tau * self.z * self.z / (2.0 * a)
            + stats.norm.logcdf(self.tau * self.z / math.sqrt(a))
        )

    @property
    def p_value(self) -> float:
        return min(1.0, math.exp(-self.max_log_mixture))

    @property
    def rejected(self) -> bool:
        return self.max_log_mixture >= math.log(1.0 / self.alpha)

    def update(
        self, stable: tuple[int, float, float], candidate: tuple[int, float, float]
    ) -> MeanTest:
        """The test after one more interval; each argument is (count, sum, sum of squares)."""
        for name, (n, total, total_sq) in (("stable", stable), ("candidate", candidate)):
            if n < 0 or not all(math.isfinite(v) for v in (total, total_sq)) or total_sq < 0:
                raise ValueError(f"{name}: need a count >= 0 and finite sums, got {(n, total, total_sq)}")
        ps = _Sums(*self.pending_stable).plus(*stable)
        pc = _Sums(*self.pending_candidate).plus(*candidate)
        z, info = self.z, self.info
        if ps.n >= self.min_block and pc.n >= self.min_block:
            n = ps.n + pc.n
            total = ps.total + pc.total
            pooled = (ps.total_sq + pc.total_sq - total * total / n) / (n - 1)
            if pooled > 0.0:
                variance = pooled * (1.0 / ps.n + 1.0 / pc.n)
                # theta > 0 means the candidate earns less: the direction we test.
                z += (ps.total / ps.n - pc.total / pc.n) / variance
                info += 1.0 / variance
            # A block without any spread carries no information about a difference: dropped.
            ps, pc = _Sums(), _Sums()
        moved = replace(
            self,
            z=z,
            info=info,
            pending_stable=ps.as_tuple(),
            pending_candidate=pc.as_tuple(),
            stable=_Sums(*self.stable).plus(*stable).as_tuple(),
            candidate=_Sums(*self.candidate).plus(*candidate).as_tuple(),
        )
        return replace(moved, max_log_mixture=max(self.max_log_mixture, moved.log_mixture))

    def result(self) -> SequentialResult:
        sn, ss, _ = self.stable
        cn, cs, _ = self.candidate
        stable_mean = ss / sn if sn else None
        candidate_mean = cs / cn if cn else None
        means = f"candidate {_fmt(candidate_mean)} (n={cn}) vs stable {_fmt(stable_mean)} (n={sn})"
        if self.rejected:
            reason = (
                f"mean reward significantly lower: {means}; "
                f"always-valid p={self.p_value:.2g} < alpha={self.alpha:g}"
            )
        else:
            reason = f"no significant drop in mean reward yet: {means}; always-valid p={self.p_value:.2g}"
        return SequentialResult(
            test=self.test,
            stable_value=stable_mean,
            candidate_value=candidate_mean,
            stable_n=sn,
            candidate_n=cn,
            statistic=self.log_mixture,
            threshold=math.log(1.0 / self.alpha),
            p_value=self.p_value,
            alpha=self.alpha,
            rejected=self.rejected,
            reason=reason,
        )

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "mean", **{k: _jsonable(getattr(self, k)) for k in self.__dataclass_fields__}}

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> MeanTest:
        data = {k: v for k, v in raw.items() if k != "kind"}
        for name in ("pending_stable", "pending_candidate", "stable", "candidate"):
            if name in data:
                data[name] = tuple(data[name])
        return cls(**data)


def test_from_dict(raw: Mapping[str, Any]) -> ProportionTest | MeanTest:
    """Rebuild a persisted test (``to_dict`` output) of either kind."""
    kind = raw.get("kind")
    if kind == "proportion":
        return ProportionTest.from_dict(raw)
    if kind == "mean":
        return MeanTest.from_dict(raw)
    raise ValueError(f"sequential test: unknown kind {kind!r}")


# pytest collects module-level names starting with "test"; this one is not a test.
test_from_dict.__test__ = False  # type: ignore[attr-defined]


@dataclass(frozen=True)
class ConfidenceSequence:
    """An always-valid (1 - alpha) interval for rate_b - rate_a."""

    difference: float
    low: float
    high: float
    p_value: float
    """Two-sided always-valid p-value of 'no difference'."""


def proportion_confidence_sequence(
    conversions_a: int, n_a: int, conversions_b: int, n_b: int, *, tau: float, alpha: float
) -> ConfidenceSequence | None:
    """Normal-mixture confidence sequence for rate_b - rate_a (Johari, Pekelis & Walsh 2017).

    Inverting the two-sided mSPRT with mixing law ``N(0, tau**2)``: theta is in the interval
    while its mixture ratio stays below ``1/alpha``,

        |d - theta| < sqrt(V (V + tau**2) / tau**2 * (2 log(1/alpha) + log((V + tau**2) / V)))

    with ``V`` the unpooled variance of ``d``. Valid under continuous monitoring when the split
    is fixed (an A/B test); it rests on the normal approximation, so use it with dozens of
    conversions and non-conversions per arm. The p-value matches the router's
    ``msprt_p_value``. None when either arm is empty or has no spread at all.
    """
    _check_alpha(alpha)
    if tau <= 0:
        raise ValueError(f"tau: must be positive, got {tau}")
    if n_a < 1 or n_b < 1:
        return None
    rate_a, rate_b = conversions_a / n_a, conversions_b / n_b
    variance = rate_a * (1 - rate_a) / n_a + rate_b * (1 - rate_b) / n_b
    if variance <= 0.0:
        pooled = (conversions_a + conversions_b) / (n_a + n_b)
        variance = pooled * (1 - pooled) * (1 / n_a + 1 / n_b)
        if variance <= 0.0:
            return None
    d = rate_b - rate_a
    t2 = tau * tau
    half = math.sqrt(variance * (variance + t2) / t2 * (2 * math.log(1 / alpha) + math.log((variance + t2) / variance)))
    log_lambda = 0.5 * math.log(variance / (variance + t2)) + t2 * d * d / (2 * variance * (variance + t2))
    return ConfidenceSequence(d, d - half, d + half, 1.0 if log_lambda <= 0 else math.exp(-log_lambda))


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4g}"


def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple):
        return list(value)
    return value

