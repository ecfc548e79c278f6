"""The rollout state machine: spec + state + this interval's evidence -> decision + next state.

The service loop does three things every ``interval_s``: fetch both variants' metrics windows
for the interval since the last check (plus the A/B report and a drift report where the spec
uses them), call :func:`evaluate`, apply ``decision.action`` and persist ``state``. Everything
here is pure: no clock (``now`` is passed in), no I/O.

One check, in order:

1. **First check** (``state`` None): the analysis starts for the version the candidate reports
   (else the spec's), and the action sets the first step (canary weight, or mirroring).
2. **New candidate version** (the candidate's window reports another version than the one
   under analysis, or the spec names another): the analysis restarts — step 0, failures,
   accumulated windows and sequential tests reset — and the record says so (``restarted``).
3. **Finished** rollouts (promoted, rolled back, concluded) do nothing more.
4. **The interval is checked**: both windows present, not broken (counter reset), not stale,
   covering the same span, not already consumed. If not, every rule is inconclusive for that
   reason and the rollout holds (or pauses); the interval is not used.
5. The interval is **added** to the step's accumulated window (rules judge everything since
   the step began) and to the **sequential tests** (everything since the analysis started).
6. **Sequential test rejected** -> roll back at once, whatever step.
7. **A rule failed** (on_fail: rollback) -> one more failed check; at ``failure_limit`` roll
   back, else hold. A failed rule with on_fail: block holds (promotion blocked).
8. **Inconclusive** while the step still bakes -> hold (gathering samples is expected). After
   the bake time, or at once when the interval itself is unusable (step 4) -> hold, or pause
   (``on_inconclusive``); after ``max_inconclusive`` such checks in a row a holding rollout
   pauses and says so, rather than wait silently.
9. **Everything passed**: before ``bake_s`` at this step, hold; then the next step — the step
   before 100 passes into **promote** (weight exactly 100, the candidate becomes the stable);
   a shadow graduates to a canary at the first step; an A/B test with ``conclude`` ends on a
   significant winner. A paused rollout does not advance until :func:`resume`.

There is no path to promotion that does not go through step 9, and step 9 requires every rule
of the mode to pass — each with its minimum samples per variant, on fresh, complete data.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

from .decisions import Action, Decision, RolloutState, Verdict
from .rules import FAIL, INCONCLUSIVE, Evidence, RuleContext, RuleResult, evaluate_rule
from .sequential import MeanTest, ProportionTest, SequentialResult
from .spec import RolloutSpec
from .windows import VariantWindow, merge_pair

INITIAL_MODE = {"canary": "canary", "shadow": "shadow", "ab-test": "ab-test"}


@dataclass(frozen=True)
class Evaluation:
    """The decision of one check and the state to persist for the next."""

    decision: Decision
    state: RolloutState


def _pct(weight: float | None) -> str:
    return "n/a" if weight is None else f"{weight:g}%"


def _where(spec: RolloutSpec, state: RolloutState) -> str:
    """Where the rollout stands, for explanations: '25%', 'the shadow stage', 'the A/B split'."""
    if state.mode == "shadow" and state.phase not in ("promoted", "rolled_back"):
        return "the shadow stage (mirrored traffic, 0%)"
    if state.mode == "ab-test" and state.phase == "running":
        return "the A/B split"
    return _pct(candidate_weight(spec, state))


def candidate_weight(spec: RolloutSpec, state: RolloutState) -> float | None:
    """The candidate's weight (percent) the state stands for; None where the router's A/B split rules."""
    if state.phase == "rolled_back":
        return 0.0
    if state.phase in ("promoted", "concluded"):
        return 100.0 if state.mode != "ab-test" else None
    if state.mode == "shadow":
        return 0.0
    if state.mode == "ab-test":
        return None
    return spec.steps[min(state.step_index, len(spec.steps) - 1)]


def _weights(spec: RolloutSpec, weight: float) -> dict[str, float]:
    return {spec.stable: 100.0 - weight, spec.candidate: weight}


def _first_action(spec: RolloutSpec, kind: str) -> Action:
    if spec.kind == "shadow":
        return Action(kind, candidate_weight=0.0, weights=_weights(spec, 0.0), policy="shadow")  # type: ignore[arg-type]
    if spec.kind == "ab-test":
        return Action(kind)  # type: ignore[arg-type]
    first = spec.steps[0]
    return Action(kind, candidate_weight=first, weights=_weights(spec, first), policy="canary")  # type: ignore[arg-type]


def _fresh_tests(spec: RolloutSpec) -> dict[str, ProportionTest | MeanTest]:
    seq = spec.sequential
    if not seq.enabled:
        return {}
    alpha = seq.alpha_per_test()
    tests: dict[str, ProportionTest | MeanTest] = {}
    for name in seq.tests:
        if name == "reward":
            tests[name] = MeanTest("reward", alpha=alpha, tau=seq.reward_tau, min_block=seq.min_block)
        else:
            tests[name] = ProportionTest(name, alpha=alpha, log_odds_sd=seq.log_odds_sd)
    return tests


def _fresh_state(spec: RolloutSpec, version: int | str | None, now: float, restarts: int,
                 last_window_end: float | None, history: tuple[str, ...]) -> RolloutState:
    return RolloutState(
        rollout=spec.name,
        kind=spec.kind,
        mode=INITIAL_MODE[spec.kind],
        phase="running",
        candidate_version=version,
        step_index=0,
        step_started_at=now,
        analysis_started_at=now,
        restarts=restarts,
        last_window_end=last_window_end,
        sequential=_fresh_tests(spec),
        history=history,
    )


def _observed_version(spec: RolloutSpec, evidence: Evidence) -> int | str:
    if evidence.candidate is not None and evidence.candidate.version is not None:
        return evidence.candidate.version
    return spec.candidate_version


def _same_version(a: Any, b: Any) -> bool:
    # "2" from a label and 2 from a config are the same version.
    return str(a) == str(b)


def _window_end(evidence: Evidence) -> float | None:
    ends = [w.end for w in (evidence.stable, evidence.candidate) if w is not None]
    return max(ends) if ends else None


def evaluate(spec: RolloutSpec, state: RolloutState | None, evidence: Evidence, now: float) -> Evaluation:
    """Run one check. ``state`` None starts the rollout. See the module docstring."""
    if not math.isfinite(now):
        raise ValueError(f"now: expected a finite time, got {now}")
    version = _observed_version(spec, evidence)
    if state is None:
        fresh = _fresh_state(spec, version, now, 0, _window_end(evidence), ())
        action = _first_action(spec, "start")
        text = _start_text(spec, fresh, version)
        fresh = replace(fresh, checks=1).with_history(f"{now:.0f} start v{version}: {text}")
        # Nothing was routed by the supervisor before its first action.
        decision = replace(_record(spec, fresh, fresh, now, "none", action, text, [], []), candidate_weight=None)
        return Evaluation(decision, fresh)
    if state.rollout != spec.name:
        raise ValueError(f"state of rollout {state.rollout!r} given for spec {spec.name!r}")
    if state.kind != spec.kind or not _same_version(state.candidate_version, version):
        return _restart(spec, state, evidence, now, version)
    state = replace(state, checks=state.checks + 1)
    if state.finished:
        text = f"The rollout is finished ({state.phase.replace('_', ' ')}); a new candidate version restarts it."
        return Evaluation(_record(spec, state, state, now, "none", Action("none"), text, [], _seq(state)), state)

    rules = spec.rules_for(state.mode)
    problem = _interval_problem(spec, state, evidence, now)
    if problem:
        results = [_inconclusive(rule, problem) for rule in rules]
        return _on_inconclusive(spec, state, now, results, _seq(state), [problem])

    interval = (evidence.stable, evidence.candidate)
    assert interval[0] is not None and interval[1] is not None
    accumulated = merge_pair(state.window, interval)  # type: ignore[arg-type]
    tests = _update_tests(state.sequential, interval[0], interval[1])
    state = replace(state, window=accumulated, sequential=tests, last_window_end=max(interval[0].end, interval[1].end))
    ctx = RuleContext(now=now, stale_after_s=spec.staleness_s, min_samples=spec.min_samples)
    step_evidence = replace(evidence, stable=accumulated[0], candidate=accumulated[1])
    results = [evaluate_rule(r, step_evidence, ctx, stable=spec.stable, candidate=spec.candidate) for r in rules]
    seq = _seq(state)

    rejected = [s for s in seq if s.rejected]
    if rejected:
        first = rejected[0]
        text = (
            f"Rolling back to 0% from {_where(spec, state)}: the sequential test on "
            f"{first.test.replace('_', ' ')} rejected — {first.reason}. The test is valid under continuous "
            "monitoring, so this is not a multiple-looks artefact."
        )
        return _rollback(spec, state, now, results, seq, text)

    failed = [r for r in results if r.verdict == FAIL and r.on_fail == "rollback"]
    winner = _ab_winner(results)
    if state.mode == "ab-test" and spec.conclude and winner == spec.stable:
        return _conclude(spec, state, now, results, seq, spec.stable)
    if failed:
        state = replace(state, failures=state.failures + 1, inconclusive_streak=0)
        evidence_text = "; ".join(f"{r.rule}: {r.reason}" for r in failed)
        if state.failures >= spec.failure_limit:
            text = (
                f"Rolling back to 0% from {_where(spec, state)}: failed check {state.failures} of "
                f"{spec.failure_limit} allowed — {evidence_text}."
            )
            return _rollback(spec, state, now, results, seq, text)
        text = (
            f"Holding at {_where(spec, state)}: failed check {state.failures} of "
            f"{spec.failure_limit} allowed (rollback at {spec.failure_limit}) — {evidence_text}."
        )
        return _finish(spec, state, now, "fail", Action("hold"), text, results, seq)

    blocked = [r for r in results if r.verdict == FAIL]
    if blocked:
        state = replace(state, inconclusive_streak=0)
        text = f"Holding at {_where(spec, state)}, promotion blocked — " + "; ".join(
            f"{r.rule}: {r.reason}" for r in blocked
        ) + "."
        return _finish(spec, state, now, "blocked", Action("hold"), text, results, seq)

    unsure = [r for r in results if r.verdict == INCONCLUSIVE]
    if unsure:
        reasons = [f"{r.rule}: {r.reason}" for r in unsure]
        elapsed = now - state.step_started_at
        if elapsed < spec.bake_s:
            # Gathering samples while the step bakes is expected, not an anomaly: hold quietly;
            # on_inconclusive and max_inconclusive apply once the bake time is over.
            text = (
                f"Holding at {_where(spec, state)}: baking {elapsed:.0f} of {spec.bake_s:.0f} s; not conclusive yet — "
                f"{'; '.join(reasons)}. Nothing is promoted on missing or insufficient data."
            )
            action = Action("pause" if state.phase == "paused" else "hold")
            return _finish(spec, state, now, "inconclusive", action, text, results, seq)
        return _on_inconclusive(spec, state, now, results, seq, reasons)

    state = replace(state, inconclusive_streak=0)
    return _all_passed(spec, state, now, results, seq, winner)


def resume(state: RolloutState, now: float) -> RolloutState:
    """A human resumes a paused rollout: automatic progress continues at the next check."""
    if state.phase != "paused":
        raise ValueError(f"only a paused rollout resumes; this one is {state.phase}")
    return replace(state, phase="running", inconclusive_streak=0).with_history(f"{now:.0f} resumed")


def _seq(state: RolloutState) -> list[SequentialResult]:
    return [test.result() for test in state.sequential.values()]


def _update_tests(
    tests: dict[str, ProportionTest | MeanTest], stable: VariantWindow, candidate: VariantWindow
) -> dict[str, ProportionTest | MeanTest]:
    out: dict[str, ProportionTest | MeanTest] = {}
    for name, test in tests.items():
        if name == "error_rate" and isinstance(test, ProportionTest):
            # Both counts are present: _interval_problem refused the interval otherwise.
            test = test.update(stable.requests, stable.errors, candidate.requests, candidate.errors)  # type: ignore[arg-type]
        elif name == "misprediction_rate" and isinstance(test, ProportionTest):
            fs, fc = stable.feedback, candidate.feedback
            if fs is not None and fc is not None:
                test = test.update(fs.labelled, fs.labelled - fs.correct, fc.labelled, fc.labelled - fc.correct)
        elif name == "reward" and isinstance(test, MeanTest):
            rs, rc = stable.rewards, candidate.rewards
            if rs is not None and rc is not None:
                test = test.update((rs.count, rs.total, rs.total_sq), (rc.count, rc.total, rc.total_sq))
        out[name] = test
    return out


def _interval_problem(spec: RolloutSpec, state: RolloutState, ev: Evidence, now: float) -> str | None:
    """Why this interval's windows cannot be used at all, or None."""
    for role, window in (("stable", ev.stable), ("candidate", ev.candidate)):
        if window is None:
            return f"no metrics window for the {role} (scrape failed or metrics missing)"
        if window.problem:
            return f"the {role}'s window is unusable: {window.problem}"
        if window.requests is None or window.errors is None:
            return f"request or error counts missing (or NaN) for the {role}"
        age = now - window.observed_at
        if age > spec.staleness_s:
            return f"the {role}'s metrics are stale: observed {age:.0f} s ago (stale after {spec.staleness_s:.0f} s)"
        if state.last_window_end is not None and window.end <= state.last_window_end:
            return f"the {role}'s window ending at {window.end:.0f} was already evaluated: no new data"
        if state.last_window_end is not None and window.start < state.last_window_end - 1.0:
            early = state.last_window_end - window.start
            return f"the {role}'s window overlaps the previous one (starts {early:.0f} s early): counted twice"
    assert ev.stable is not None and ev.candidate is not None
    span = max(ev.stable.duration_s, ev.candidate.duration_s)
    tolerance = max(1.0, 0.02 * span)
    if abs(ev.stable.start - ev.candidate.start) > tolerance or abs(ev.stable.end - ev.candidate.end) > tolerance:
        return "the two variants' windows cover different spans: not a comparison over the same window"
    return None


def _inconclusive(rule: Any, reason: str) -> RuleResult:
    return RuleResult(
        rule=rule.rule_name,
        metric=rule.metric,
        verdict=INCONCLUSIVE,
        reason=reason,
        threshold=float(rule.threshold),
        on_fail=rule.on_fail,
    )


def _ab_winner(results: list[RuleResult]) -> str | None:
    for r in results:
        if r.metric == "ab_verdict" and r.details.get("winner"):
            return r.details["winner"]
    return None


def _on_inconclusive(spec: RolloutSpec, state: RolloutState, now: float, results: list[RuleResult],
                     seq: list[SequentialResult], reasons: list[str]) -> Evaluation:
    state = replace(state, inconclusive_streak=state.inconclusive_streak + 1)
    where = _where(spec, state)
    why = "; ".join(reasons)
    if state.phase == "paused":
        text = f"Paused at {where}; still inconclusive — {why}. Waiting for resume()."
        return _finish(spec, state, now, "inconclusive", Action("pause"), text, results, seq)
    if spec.on_inconclusive == "pause":
        state = replace(state, phase="paused").with_history(f"{now:.0f} paused: inconclusive")
        text = f"Pausing at {where} (on_inconclusive: pause): inconclusive — {why}. Nothing is promoted on " \
               "missing or insufficient data; resume() after a look."
        return _finish(spec, state, now, "inconclusive", Action("pause"), text, results, seq)
    if spec.max_inconclusive is not None and state.inconclusive_streak >= spec.max_inconclusive:
        state = replace(state, phase="paused").with_history(f"{now:.0f} paused: inconclusive too long")
        text = (
            f"Pausing at {where}: {state.inconclusive_streak} inconclusive checks in a row "
            f"(max_inconclusive {spec.max_inconclusive}) — {why}. Not promoting on this evidence and not waiting "
            "silently: someone should look; resume() to continue."
        )
        return _finish(spec, state, now, "inconclusive", Action("pause"), text, results, seq)
    text = f"Holding at {where}: inconclusive — {why}. Nothing is promoted on missing or insufficient data."
    return _finish(spec, state, now, "inconclusive", Action("hold"), text, results, seq)


def _all_passed(spec: RolloutSpec, state: RolloutState, now: float, results: list[RuleResult],
                seq: list[SequentialResult], winner: str | None) -> Evaluation:
    names = ", ".join(r.rule for r in results)
    warnings = [r.warning for r in results if r.warning]
    note = f" Warning: {'; '.join(warnings)}." if warnings else ""
    if state.mode == "ab-test":
        if spec.conclude and winner == spec.candidate:
            return _conclude(spec, state, now, results, seq, spec.candidate)
        text = f"Experiment running: every rule passes ({names}); no significant winner to conclude on yet.{note}"
        return _finish(spec, state, now, "pass", Action("hold"), text, results, seq)
    where = _where(spec, state)
    elapsed = now - state.step_started_at
    if elapsed < spec.bake_s:
        text = f"Holding at {where}: every rule passes ({names}); baking {elapsed:.0f} of {spec.bake_s:.0f} s.{note}"
        return _finish(spec, state, now, "pass", Action("hold"), text, results, seq)
    if state.phase == "paused":
        text = f"Paused at {where}: every rule passes ({names}) and the bake is done; resume() to advance.{note}"
        return _finish(spec, state, now, "pass", Action("pause"), text, results, seq)
    evidence = f"every rule passed ({names}) over {elapsed:.0f} s at {where}"
    if state.mode == "shadow":
        first = spec.steps[0]
        nxt = replace(state, mode="canary", step_index=0, step_started_at=now, window=None)
        text = f"Promoting the shadow to a canary at {_pct(first)}: {evidence}.{note}"
        action = Action("promote_shadow", candidate_weight=first, weights=_weights(spec, first), policy="canary")
        return _finish(spec, state, now, "pass", action, text, results, seq, after=nxt.with_history(
            f"{now:.0f} shadow -> canary {_pct(first)}"))
    nxt_index = state.step_index + 1
    if nxt_index >= len(spec.steps) - 1:
        nxt = replace(state, step_index=len(spec.steps) - 1, step_started_at=now, phase="promoted", window=None)
        text = (
            f"Promoting: {evidence}; candidate v{state.candidate_version} goes to exactly 100% and becomes the "
            f"stable.{note}"
        )
        action = Action("promote", candidate_weight=100.0, weights=_weights(spec, 100.0), policy="canary",
                        new_stable=spec.candidate)
        return _finish(spec, state, now, "pass", action, text, results, seq,
                       after=nxt.with_history(f"{now:.0f} promoted v{state.candidate_version} to 100%"))
    weight = spec.steps[nxt_index]
    nxt = replace(state, step_index=nxt_index, step_started_at=now, window=None)
    text = f"Stepping from {where} to {_pct(weight)} (step {nxt_index + 1} of {len(spec.steps)}): {evidence}.{note}"
    action = Action("step", candidate_weight=weight, weights=_weights(spec, weight), policy="canary")
    return _finish(spec, state, now, "pass", action, text, results, seq,
                   after=nxt.with_history(f"{now:.0f} step {where} -> {_pct(weight)}"))


def _rollback(spec: RolloutSpec, state: RolloutState, now: float, results: list[RuleResult],
              seq: list[SequentialResult], text: str) -> Evaluation:
    nxt = replace(state, phase="rolled_back", window=None).with_history(
        f"{now:.0f} rolled back v{state.candidate_version} from {_where(spec, state)}"
    )
    action = Action("rollback", candidate_weight=0.0, weights=_weights(spec, 0.0),
                    policy="canary", new_stable=spec.stable)
    return _finish(spec, state, now, "fail", action, text, results, seq, after=nxt)


def _conclude(spec: RolloutSpec, state: RolloutState, now: float, results: list[RuleResult],
              seq: list[SequentialResult], winner: str) -> Evaluation:
    ab = next(r for r in results if r.metric == "ab_verdict")
    weight = 100.0 if winner == spec.candidate else 0.0
    nxt = replace(state, phase="concluded", window=None).with_history(f"{now:.0f} concluded: {winner} wins")
    text = f"Concluding the A/B test: {winner} wins — {ab.reason}; all traffic goes to {winner}."
    action = Action("conclude", candidate_weight=weight, weights=_weights(spec, weight), policy="canary",
                    new_stable=winner)
    verdict: Verdict = "pass" if winner == spec.candidate else "fail"
    return _finish(spec, state, now, verdict, action, text, results, seq, after=nxt)


def _restart(spec: RolloutSpec, state: RolloutState, evidence: Evidence, now: float,
             version: int | str) -> Evaluation:
    if state.kind != spec.kind:
        reason = f"the rollout kind changed from {state.kind} to {spec.kind}"
    else:
        reason = f"the candidate changed from v{state.candidate_version} to v{version} mid-rollout"
    before = _where(spec, state)
    fresh = _fresh_state(spec, version, now, state.restarts + 1, _window_end(evidence), state.history)
    fresh = replace(fresh, checks=state.checks + 1)
    action = _first_action(spec, "restart")
    text = (
        f"Restarted the analysis: {reason} (was at {before}, phase {state.phase}). Steps, failed checks, "
        f"accumulated windows and sequential tests are reset; {_start_text(spec, fresh, version)}"
    )
    fresh = fresh.with_history(f"{now:.0f} restart: {reason}")
    restarted = {"from_version": state.candidate_version, "to_version": version, "reason": reason}
    decision = _record(spec, state, fresh, now, "none", action, text, [], _seq(fresh), restarted=restarted)
    return Evaluation(decision, fresh)


def _start_text(spec: RolloutSpec, state: RolloutState, version: int | str | None) -> str:
    if spec.kind == "shadow":
        return f"candidate v{version} starts as a shadow (mirrored traffic, weight 0%)."
    if spec.kind == "ab-test":
        return f"A/B analysis of candidate v{version} starts on the router's fixed split."
    return f"candidate v{version} starts at {_pct(spec.steps[0])} (step 1 of {len(spec.steps)})."


def _finish(spec: RolloutSpec, state: RolloutState, now: float, verdict: Verdict, action: Action, text: str,
            results: list[RuleResult], seq: list[SequentialResult], after: RolloutState | None = None) -> Evaluation:
    after = after if after is not None else state
    return Evaluation(_record(spec, state, after, now, verdict, action, text, results, seq), after)


def _record(spec: RolloutSpec, before: RolloutState, after: RolloutState, now: float, verdict: Verdict,
            action: Action, text: str, results: list[RuleResult], seq: list[SequentialResult],
            restarted: dict[str, Any] | None = None) -> Decision:
    window = None
    if before.window is not None:
        window = {"start": before.window[0].start, "end": before.window[0].end}
    return Decision(
        rollout=spec.name,
        kind=spec.kind,
        mode=before.mode,
        check=after.checks,
        at=now,
        next_check_at=now + spec.interval_s,
        candidate_version=after.candidate_version,
        step_index=before.step_index,
        candidate_weight=candidate_weight(spec, before),
        verdict=verdict,
        action=action,
        explanation=text,
        rules=results,
        sequential=seq,
        failures=after.failures,
        failure_limit=spec.failure_limit,
        inconclusive_streak=after.inconclusive_streak,
        window=window,
        bake={"elapsed_s": max(0.0, now - before.step_started_at), "required_s": spec.bake_s},
        phase=after.phase,
        restarted=restarted,
    )
