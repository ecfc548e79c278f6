"""Decision records and rollout state: what the supervisor decided, why, and where it stands.

Both serialise to JSON. Decisions are written (served, logged, produced to Kafka later); the
state is persisted after every check and read back by a restarted supervisor, which resumes
where it stopped (:meth:`RolloutState.from_json`).

Decision record, schema version 1 (``Decision.to_dict``; JSON has no NaN/Infinity, so a
non-finite number is written as null)::

    {
      "schema": 1,
      "rollout": "breast-cancer-v2",      # spec name
      "kind": "canary",                   # canary | shadow | ab-test
      "mode": "canary",                   # shadow | canary | ab-test: the phase of the rollout checked
      "check": 17,                        # sequence number of this check since the state was created
      "at": 1733000000.0,                 # time of the check (unix seconds)
      "next_check_at": 1733000060.0,
      "candidate_version": 2,
      "step_index": 1,                    # index into spec.steps before the action
      "candidate_weight": 25.0,           # candidate weight (percent) before the action; null for ab-test
                                          # and for the first check (nothing routed by the supervisor yet)
      "verdict": "pass",                  # pass | fail | inconclusive | blocked | none
      "action": {
        "kind": "step",                   # see ACTIONS
        "candidate_weight": 50.0,         # weight to set; null = unchanged
        "weights": {"stable": 50.0, "candidate": 50.0},   # ready for the router's canary weights
        "policy": "canary",               # router policy the action implies (canary | shadow); null = unchanged
        "new_stable": null                # promote / conclude: the variant that now is the stable
      },
      "explanation": "Stepping from 25% to 50%: ...",    # one paragraph, human readable
      "rules": [RuleResult.to_dict(), ...],             # rule, metric, verdict, reason, threshold, on_fail,
                                                        # stable_value, candidate_value, stable_n, candidate_n,
                                                        # statistic, p_value, warning, details
      "sequential": [SequentialResult.to_dict(), ...],  # test, stable/candidate value and n, statistic (log
                                                        # Lambda), threshold (log 1/alpha), p_value, alpha,
                                                        # rejected, reason
      "failures": 1, "failure_limit": 3,  # failed checks since the analysis (re)started, after this check
      "inconclusive_streak": 0,
      "window": {"start": ..., "end": ...},            # span of the step's accumulated window; null if none
      "bake": {"elapsed_s": 120.0, "required_s": 300.0},
      "phase": "running",                 # phase after the action: running | paused | promoted |
                                          # rolled_back | concluded
      "restarted": null                   # or {"from_version": 2, "to_version": 3, "reason": "..."}
    }

Fields are only ever added to a schema version, never renamed or removed.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from .rules import RuleResult, json_safe
from .sequential import MeanTest, ProportionTest, SequentialResult, test_from_dict
from .windows import VariantWindow

DECISION_SCHEMA_VERSION = 1
STATE_SCHEMA_VERSION = 1

ActionKind = Literal["start", "restart", "hold", "pause", "step", "promote", "promote_shadow", "rollback", "conclude",
                     "none"]
#: What each action asks of the service loop.
ACTIONS: dict[str, str] = {
    "start": "set the first step's routing (canary weight, or mirroring for a shadow rollout)",
    "restart": "a new candidate version: set the first step's routing again; the analysis restarted",
    "hold": "change nothing; check again after the interval",
    "pause": "change nothing; automatic progress is paused until resume() (rollbacks stay automatic)",
    "step": "set the candidate's weight to candidate_weight",
    "promote": "set the candidate's weight to 100: it becomes the stable",
    "promote_shadow": "stop mirroring; route candidate_weight percent to the candidate as a canary",
    "rollback": "set the candidate's weight to 0 (stop mirroring for a shadow)",
    "conclude": "A/B test over: route everything to new_stable",
    "none": "the rollout is finished; nothing to do",
}
Phase = Literal["running", "paused", "promoted", "rolled_back", "concluded"]
TERMINAL_PHASES = ("promoted", "rolled_back", "concluded")
Verdict = Literal["pass", "fail", "inconclusive", "blocked", "none"]


@dataclass(frozen=True)
class Action:
    """What the service loop should apply."""

    kind: ActionKind
    candidate_weight: float | None = None
    """Candidate weight in percent to set; None leaves the routing as it is."""
    weights: dict[str, float] | None = None
    """The same as the router's canary weights ({stable: 100 - w, candidate: w})."""
    policy: Literal["canary", "shadow"] | None = None
    """Router policy the action implies; None leaves it as it is."""
    new_stable: str | None = None
    """For promote and conclude: the variant that is the stable from now on."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "candidate_weight": self.candidate_weight,
            "weights": dict(self.weights) if self.weights is not None else None,
            "policy": self.policy,
            "new_stable": self.new_stable,
        }


@dataclass(frozen=True)
class Decision:
    """One check's record. See the module docstring for the JSON schema."""

    rollout: str
    kind: str
    mode: str
    check: int
    at: float
    next_check_at: float
    candidate_version: int | str | None
    step_index: int
    candidate_weight: float | None
    verdict: Verdict
    action: Action
    explanation: str
    rules: list[RuleResult] = field(default_factory=list)
    sequential: list[SequentialResult] = field(default_factory=list)
    failures: int = 0
    failure_limit: int = 0
    inconclusive_streak: int = 0
    window: dict[str, float] | None = None
    bake: dict[str, float] | None = None
    phase: Phase = "running"
    restarted: dict[str, Any] | None = None

    def failing(self) -> list[RuleResult]:
        return [r for r in self.rules if r.verdict == "fail"]

    def rule(self, name: str) -> RuleResult | None:
        return next((r for r in self.rules if r.rule == name), None)

    def to_dict(self) -> dict[str, Any]:
        return json_safe(
            {
                "schema": DECISION_SCHEMA_VERSION,
                "rollout": self.rollout,
                "kind": self.kind,
                "mode": self.mode,
                "check": self.check,
                "at": self.at,
                "next_check_at": self.next_check_at,
                "candidate_version": self.candidate_version,
                "step_index": self.step_index,
                "candidate_weight": self.candidate_weight,
                "verdict": self.verdict,
                "action": self.action.to_dict(),
                "explanation": self.explanation,
                "rules": [r.to_dict() for r in self.rules],
                "sequential": [s.to_dict() for s in self.sequential],
                "failures": self.failures,
                "failure_limit": self.failure_limit,
                "inconclusive_streak": self.inconclusive_streak,
                "window": self.window,
                "bake": self.bake,
                "phase": self.phase,
                "restarted": self.restarted,
            }
        )

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), allow_nan=False)


@dataclass(frozen=True)
class RolloutState:
    """Where a rollout stands between checks; everything the next check needs."""

    rollout: str
    kind: str
    mode: str
    """shadow | canary | ab-test: a shadow rollout becomes a canary when it graduates."""
    phase: Phase
    candidate_version: int | str | None
    step_index: int
    step_started_at: float
    analysis_started_at: float
    failures: int = 0
    """Failed checks (rules with on_fail: rollback) since the analysis (re)started."""
    inconclusive_streak: int = 0
    checks: int = 0
    restarts: int = 0
    last_window_end: float | None = None
    """End of the last interval consumed: a window is never counted twice."""
    window: tuple[VariantWindow, VariantWindow] | None = None
    """(stable, candidate) accumulated since the current step began."""
    sequential: dict[str, ProportionTest | MeanTest] = field(default_factory=dict)
    history: tuple[str, ...] = ()
    """One line per action that changed the routing, for the record and the dashboard."""

    @property
    def finished(self) -> bool:
        return self.phase in TERMINAL_PHASES

    def with_history(self, line: str) -> RolloutState:
        return replace(self, history=(*self.history, line))

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": STATE_SCHEMA_VERSION,
            "rollout": self.rollout,
            "kind": self.kind,
            "mode": self.mode,
            "phase": self.phase,
            "candidate_version": self.candidate_version,
            "step_index": self.step_index,
            "step_started_at": self.step_started_at,
            "analysis_started_at": self.analysis_started_at,
            "failures": self.failures,
            "inconclusive_streak": self.inconclusive_streak,
            "checks": self.checks,
            "restarts": self.restarts,
            "last_window_end": self.last_window_end,
            "window": [w.to_dict() for w in self.window] if self.window is not None else None,
            "sequential": {name: test.to_dict() for name, test in self.sequential.items()},
            "history": list(self.history),
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), allow_nan=False)

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> RolloutState:
        schema = raw.get("schema")
        if schema != STATE_SCHEMA_VERSION:
            raise ValueError(f"rollout state: schema {schema!r} is not {STATE_SCHEMA_VERSION}")
        data = {k: v for k, v in raw.items() if k != "schema"}
        if data.get("window") is not None:
            stable, candidate = (VariantWindow.from_dict(w) for w in data["window"])
            data["window"] = (stable, candidate)
        data["sequential"] = {name: test_from_dict(t) for name, t in data.get("sequential", {}).items()}
        data["history"] = tuple(data.get("history", ()))
        return cls(**data)

    @classmethod
    def from_json(cls, text: str | bytes) -> RolloutState:
        return cls.from_dict(json.loads(text))
