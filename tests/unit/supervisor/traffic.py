"""Synthetic, seeded traffic for the supervisor's tests: per-interval windows of two variants.

A :class:`Model` says how a variant behaves (error rate, accuracy, latency, reward); a
:class:`Traffic` splits a steady request rate between stable and candidate by the weight the
supervisor last set, draws every count from a seeded generator, and yields the interval's pair
of windows — exactly what the service loop will hand to ``analysis.evaluate``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from services.supervisor.analysis import Evaluation, evaluate
from services.supervisor.decisions import Decision, RolloutState
from services.supervisor.rules import Evidence
from services.supervisor.spec import RolloutSpec
from services.supervisor.windows import Feedback, LatencyHistogram, Rewards, ShadowComparison, VariantWindow

BOUNDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, float("inf"))


@dataclass(frozen=True)
class Model:
    error_rate: float = 0.01
    accuracy: float = 0.95
    latency_s: float = 0.004
    """Median latency; draws are lognormal around it (sigma 0.5)."""
    reward: float | None = None
    """Bernoulli reward probability; None: no rewards reported."""
    agreement: float = 0.98
    """Shadow only: share of rows agreeing with the stable."""
    version: int = 2
    label_shares: tuple[float, float] = (0.4, 0.6)


def histogram(rng: np.random.Generator, n: int, median_s: float) -> LatencyHistogram:
    draws = rng.lognormal(np.log(median_s), 0.5, size=n)
    cumulative = np.searchsorted(np.sort(draws), np.asarray(BOUNDS), side="right")
    return LatencyHistogram(BOUNDS, tuple(int(c) for c in cumulative))


def window(rng: np.random.Generator, name: str, model: Model, n: int, start: float, end: float,
           feedback_share: float, shadow_rows: int = 0) -> VariantWindow:
    errors = int(rng.binomial(n, model.error_rate)) if n else 0
    answered = n - errors
    labelled = int(rng.binomial(answered, feedback_share)) if answered else 0
    correct = int(rng.binomial(labelled, model.accuracy)) if labelled else 0
    rewards = None
    if model.reward is not None:
        r = rng.binomial(1, model.reward, size=answered)
        rewards = Rewards(int(answered), float(r.sum()), float(r.sum()))
    shadow = None
    if shadow_rows:
        agreeing = int(rng.binomial(shadow_rows, model.agreement))
        shadow = ShadowComparison(shadow_rows, agreeing, float((shadow_rows - agreeing) * 0.4 + agreeing * 0.01))
    ones = int(rng.binomial(answered, model.label_shares[1])) if answered else 0
    return VariantWindow(
        variant=name,
        start=start,
        end=end,
        observed_at=end,
        requests=n,
        errors=errors,
        version=model.version,
        latency=histogram(rng, n, model.latency_s) if n else LatencyHistogram(BOUNDS, (0,) * len(BOUNDS)),
        feedback=Feedback(labelled, correct),
        rewards=rewards,
        shadow=shadow,
        predicted_labels={"0": answered - ones, "1": ones},
    )


@dataclass
class Traffic:
    """Steady traffic split by the candidate's weight; one call per interval."""

    stable: Model
    candidate: Model
    seed: int
    rate_per_s: float = 20.0
    interval_s: float = 60.0
    feedback_share: float = 0.5
    now: float = 1_000_000.0
    weight: float = 0.0
    shadow: bool = False
    rng: np.random.Generator = field(init=False)

    def __post_init__(self) -> None:
        self.rng = np.random.default_rng(self.seed)

    def next(self) -> Evidence:
        start, end = self.now, self.now + self.interval_s
        self.now = end
        total = int(self.rng.poisson(self.rate_per_s * self.interval_s))
        if self.shadow:
            # Every request reaches the stable and is mirrored to the candidate.
            s = window(self.rng, "stable", self.stable, total, start, end, self.feedback_share)
            c = window(self.rng, "candidate", self.candidate, total, start, end, 0.0, shadow_rows=total)
            return Evidence(s, replace(c, feedback=None))
        n_c = int(self.rng.binomial(total, self.weight / 100.0))
        s = window(self.rng, "stable", self.stable, total - n_c, start, end, self.feedback_share)
        c = window(self.rng, "candidate", self.candidate, n_c, start, end, self.feedback_share)
        return Evidence(s, c)

    def apply(self, decision: Decision) -> None:
        """What the service loop will do with the action."""
        action = decision.action
        if action.policy == "shadow":
            self.shadow, self.weight = True, 0.0
        elif action.candidate_weight is not None:
            self.shadow, self.weight = False, action.candidate_weight


def run(spec: RolloutSpec, traffic: Traffic, checks: int, state: RolloutState | None = None,
        evidence_hook=None) -> tuple[list[Decision], RolloutState]:
    """Drive the state machine for ``checks`` intervals (or until the rollout finishes)."""
    decisions: list[Decision] = []
    for _ in range(checks):
        ev = traffic.next()
        if evidence_hook is not None:
            ev = evidence_hook(ev, len(decisions))
        result: Evaluation = evaluate(spec, state, ev, traffic.now)
        decisions.append(result.decision)
        state = result.state
        traffic.apply(result.decision)
        if state.finished:
            break
    assert state is not None
    return decisions, state
