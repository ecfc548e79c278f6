"""The rollout state machine end to end on seeded synthetic traffic (see traffic.py)."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from services.core.card import ModelCard
from services.supervisor.analysis import candidate_weight, evaluate, resume
from services.supervisor.decisions import ACTIONS, RolloutState
from services.supervisor.drift import feature_drift
from services.supervisor.rules import Evidence
from services.supervisor.spec import parse_spec
from tests.unit.supervisor.traffic import Model, Traffic, run

STABLE = Model(version=1, error_rate=0.01, accuracy=0.95, latency_s=0.004)
GOOD = Model(version=2, error_rate=0.01, accuracy=0.95, latency_s=0.004)

CANARY = {
    "name": "bc-v2",
    "kind": "canary",
    "stable": "stable",
    "candidate": "candidate",
    "candidate_version": 2,
    "steps": [5, 25, 50],
    "bake_s": 300,
    "interval_s": 60,
    "min_samples": 200,
    "failure_limit": 3,
    "rules": [{"metric": "error_rate"}, {"metric": "latency_p99"}, {"metric": "accuracy"}],
}


def spec(**changes):
    return parse_spec({**CANARY, **changes})


def actions(decisions):
    return [(d.action.kind, d.action.candidate_weight) for d in decisions if d.action.kind not in ("hold", "pause")]


def test_a_good_candidate_is_promoted_through_every_step_to_exactly_100():
    decisions, state = run(spec(), Traffic(STABLE, GOOD, seed=1), checks=200)
    assert actions(decisions) == [("start", 5.0), ("step", 25.0), ("step", 50.0), ("promote", 100.0)]
    last = decisions[-1]
    assert last.action.weights == {"stable": 0.0, "candidate": 100.0} and last.action.new_stable == "candidate"
    assert last.phase == "promoted" and state.phase == "promoted" and candidate_weight(spec(), state) == 100.0
    assert "goes to exactly 100% and becomes the stable" in last.explanation
    assert [r.verdict for r in last.rules] == ["pass"] * 3
    # Every step baked for its full time before moving on, and nothing moved on missing samples.
    for d in decisions:
        if d.action.kind in ("step", "promote"):
            assert d.bake["elapsed_s"] >= 300 and all(r.verdict == "pass" for r in d.rules)
            assert all(r.stable_n >= 200 and r.candidate_n >= 200 for r in d.rules)
    assert all(not s.rejected for s in last.sequential)
    # Once promoted, further checks change nothing.
    after = evaluate(spec(), state, Traffic(STABLE, GOOD, seed=2, now=2e6).next(), 2e6 + 60)
    assert after.decision.action.kind == "none" and "finished" in after.decision.explanation


def test_an_appended_last_step_lands_exactly_on_100():
    odd = spec(steps=[10, 33.3, 66.6], bake_s=120)
    decisions, state = run(odd, Traffic(STABLE, GOOD, seed=3), checks=200)
    assert actions(decisions) == [("start", 10.0), ("step", 33.3), ("step", 66.6), ("promote", 100.0)]
    assert state.phase == "promoted"


def test_a_wrong_but_error_free_candidate_is_rolled_back_by_the_sequential_test():
    poor = Model(version=2, error_rate=0.01, accuracy=0.55)  # answers fine, wrong far more often
    decisions, state = run(spec(), Traffic(STABLE, poor, seed=4), checks=50)
    last = decisions[-1]
    assert state.phase == "rolled_back" and last.action.kind == "rollback" and last.action.candidate_weight == 0.0
    assert len(decisions) <= 4  # within a few minutes at 5%
    test = next(s for s in last.sequential if s.test == "misprediction_rate")
    assert test.rejected and test.candidate_value > 0.3 and test.stable_value < 0.1 and test.p_value < test.alpha
    assert "sequential test on misprediction rate rejected" in last.explanation
    assert f"n={test.candidate_n}" in last.explanation


def test_a_wrong_candidate_is_rolled_back_by_the_accuracy_rule_naming_it_and_its_values():
    poor = Model(version=2, error_rate=0.01, accuracy=0.55)
    no_sequential = spec(sequential={"enabled": False})
    decisions, state = run(no_sequential, Traffic(STABLE, poor, seed=5), checks=50)
    last = decisions[-1]
    assert state.phase == "rolled_back" and last.action.kind == "rollback"
    assert [d.failures for d in decisions if d.verdict == "fail"] == [1, 2, 3]
    failing = last.failing()
    assert [r.rule for r in failing] == ["accuracy"]
    accuracy = failing[0]
    assert accuracy.candidate_value < 0.65 and accuracy.stable_value > 0.9
    assert accuracy.candidate_n >= 200 and accuracy.stable_n >= 200 and accuracy.p_value < 0.01
    assert "failed check 3 of 3 allowed" in last.explanation and "accuracy" in last.explanation
    assert f"(n={accuracy.candidate_n})" in last.explanation
    record = json.loads(last.to_json())
    assert record["rules"][2]["rule"] == "accuracy" and record["rules"][2]["verdict"] == "fail"


def test_a_failing_candidate_is_rolled_back_at_once():
    failing = Model(version=2, error_rate=0.3)
    decisions, state = run(spec(), Traffic(STABLE, failing, seed=6), checks=50)
    assert state.phase == "rolled_back" and len(decisions) == 2  # the first check after the start
    test = next(s for s in decisions[-1].sequential if s.test == "error_rate")
    assert test.rejected and test.candidate_value > 0.2
    # Significant evidence does not wait for the bake nor for the rules' minimum samples.
    assert decisions[-1].bake["elapsed_s"] < decisions[-1].bake["required_s"]
    assert test.candidate_n < spec().min_samples


def test_a_slow_candidate_is_rolled_back_naming_the_latency_rule():
    slow = Model(version=2, latency_s=0.03)
    decisions, state = run(spec(), Traffic(STABLE, slow, seed=7), checks=50)
    last = decisions[-1]
    assert state.phase == "rolled_back" and [r.rule for r in last.failing()] == ["latency_p99"]
    latency = last.rule("latency_p99")
    assert latency.candidate_value > 1.25 * latency.stable_value and latency.statistic > 1.25
    assert "latency_p99: p99" in last.explanation


def test_no_traffic_holds_and_never_promotes():
    traffic = Traffic(STABLE, GOOD, seed=8)
    idle = spec(max_inconclusive=None)

    def no_candidate_traffic(ev, _):
        return replace(ev, candidate=replace(ev.candidate, requests=0, errors=0, feedback=None))

    decisions, state = run(idle, traffic, checks=60, evidence_hook=no_candidate_traffic)
    assert state.phase == "running" and state.step_index == 0
    assert actions(decisions) == [("start", 5.0)]
    for d in decisions[1:]:
        assert d.verdict == "inconclusive" and d.action.kind == "hold"
        assert "no traffic on the candidate" in d.explanation
        assert "Nothing is promoted on missing or insufficient data" in d.explanation


def test_a_rollout_inconclusive_for_too_long_pauses_instead_of_waiting_silently():
    def no_labels(ev, _):
        return replace(ev, candidate=replace(ev.candidate, feedback=None))

    decisions, state = run(spec(max_inconclusive=10), Traffic(STABLE, GOOD, seed=9), checks=30,
                           evidence_hook=no_labels)
    kinds = [d.action.kind for d in decisions]
    first_pause = kinds.index("pause")
    assert set(kinds[1:first_pause]) == {"hold"} and set(kinds[first_pause:]) == {"pause"}
    pausing = decisions[first_pause]
    assert pausing.inconclusive_streak == 10 and "10 inconclusive checks in a row" in pausing.explanation
    assert "no outcome feedback (labels)" in pausing.explanation and "someone should look" in pausing.explanation
    assert state.phase == "paused" and state.step_index == 0


def test_stale_metrics_hold():
    traffic = Traffic(STABLE, GOOD, seed=10)

    def stale_after_ten(ev, index):
        if index < 10:
            return ev
        old = ev.stable.end - 400
        return replace(ev, stable=replace(ev.stable, observed_at=old), candidate=replace(ev.candidate, observed_at=old))

    decisions, state = run(spec(max_inconclusive=None), traffic, checks=40, evidence_hook=stale_after_ten)
    for d in decisions[10:]:
        assert d.verdict == "inconclusive" and d.action.kind == "hold"
        assert "metrics are stale: observed 400 s ago (stale after 120 s)" in d.explanation
        assert all(r.verdict == "inconclusive" for r in d.rules)
    assert state.phase == "running"


def test_a_counter_reset_interval_is_discarded_and_holds():
    traffic = Traffic(STABLE, GOOD, seed=11)

    def reset_at_five(ev, index):
        if index != 5:
            return ev
        broken = replace(ev.candidate, requests=None, errors=None, problem="counter reset: requests went down")
        return replace(ev, candidate=broken)

    decisions, state = run(spec(), traffic, checks=200, evidence_hook=reset_at_five)
    assert decisions[5].verdict == "inconclusive" and "counter reset" in decisions[5].explanation
    assert state.phase == "promoted"  # the rollout carries on afterwards


def test_the_same_window_is_never_counted_twice():
    s = spec()
    traffic = Traffic(STABLE, GOOD, seed=12)
    state = evaluate(s, None, traffic.next(), traffic.now).state
    ev = traffic.next()
    once = evaluate(s, state, ev, traffic.now)
    twice = evaluate(s, once.state, ev, traffic.now)
    assert twice.decision.verdict == "inconclusive" and "already evaluated" in twice.decision.explanation
    assert twice.state.sequential == once.state.sequential


def test_shifted_inputs_block_promotion_until_they_return(model_repo, holdout):
    card = ModelCard.from_file(model_repo / "breast-cancer" / "1" / "model-card.json")
    names, x, _ = holdout
    rng = np.random.default_rng(13)
    live = x[rng.integers(0, len(x), 1000)]
    shifted = live.copy()
    shifted[:, names.index("mean texture")] *= 1.4
    with_drift = spec(rules=[*CANARY["rules"], {"metric": "input_drift"}])
    traffic = Traffic(STABLE, GOOD, seed=14)

    def drift_until_check_40(ev, index):
        rows = shifted if index < 40 else live
        return replace(ev, drift=feature_drift(card, rows, observed_at=ev.stable.observed_at))

    decisions, state = run(with_drift, traffic, checks=200, evidence_hook=drift_until_check_40)
    first_passing = next(i for i, d in enumerate(decisions) if d.verdict in ("pass", "blocked"))
    for d in decisions[first_passing:40]:
        assert d.verdict == "blocked" and d.action.kind == "hold"
        drift = d.rule("input_drift")
        assert drift.verdict == "fail" and drift.on_fail == "block" and drift.candidate_value > 0.25
        assert drift.details["feature"] == "mean texture" and "promotion blocked" in d.explanation
    assert state.failures == 0  # blocked, never counted as a failure of the candidate
    assert actions(decisions)[:2] == [("start", 5.0), ("step", 25.0)]
    assert next(i for i, d in enumerate(decisions) if d.action.kind == "step") >= 40
    assert state.phase == "promoted"


def test_a_new_candidate_version_mid_rollout_restarts_the_analysis():
    traffic = Traffic(STABLE, GOOD, seed=15)
    s = spec()
    state = None
    while state is None or state.step_index < 1:  # up to 25%
        result = evaluate(s, state, traffic.next(), traffic.now)
        state = result.state
        traffic.apply(result.decision)
    assert state.step_index == 1 and state.phase == "running"
    traffic.candidate = replace(GOOD, version=3)
    restart = evaluate(s, state, traffic.next(), traffic.now)
    d = restart.decision
    assert d.restarted == {"from_version": 2, "to_version": 3,
                           "reason": "the candidate changed from v2 to v3 mid-rollout"}
    assert d.action.kind == "restart" and d.action.candidate_weight == 5.0 and d.candidate_weight == 25.0
    assert "Restarted the analysis" in d.explanation and "back" not in d.action.kind
    new = restart.state
    assert (new.step_index, new.failures, new.window, new.candidate_version, new.restarts) == (0, 0, None, 3, 1)
    assert all(t.stable_n == 0 and t.candidate_n == 0 for t in new.sequential.values() if hasattr(t, "stable_n"))
    traffic.apply(d)
    more, final = run(s, traffic, checks=200, state=new)
    assert actions(more) == [("step", 25.0), ("step", 50.0), ("promote", 100.0)]
    assert final.candidate_version == 3 and final.phase == "promoted"


def test_the_spec_naming_a_new_version_restarts_too():
    traffic = Traffic(STABLE, replace(GOOD, version=None), seed=16)  # the candidate reports no version
    decisions, state = run(spec(), traffic, checks=5)
    again = evaluate(spec(candidate_version=3), state, traffic.next(), traffic.now)
    assert again.decision.restarted["to_version"] == 3 and again.state.step_index == 0


def test_pause_on_inconclusive_and_resume():
    # No bake time: any inconclusive check is past the bake, so on_inconclusive applies at once.
    paused_spec = spec(on_inconclusive="pause", bake_s=0)
    traffic = Traffic(STABLE, GOOD, seed=17)
    decisions, state = run(paused_spec, traffic, checks=3)
    assert decisions[1].action.kind == "pause" and state.phase == "paused"
    assert "resume() after a look" in decisions[1].explanation
    # Paused: a passing candidate does not advance...
    decisions, state = run(paused_spec, traffic, checks=15, state=state)
    assert all(d.action.kind == "pause" for d in decisions) and state.step_index == 0
    assert any("resume() to advance" in d.explanation for d in decisions)
    # ...until a human resumes it.
    decisions, state = run(paused_spec, traffic, checks=1, state=resume(state, traffic.now))
    assert actions(decisions) == [("step", 25.0)] and state.step_index == 1
    with pytest.raises(ValueError, match="only a paused rollout resumes"):
        resume(replace(state, phase="running"), traffic.now)


def test_a_paused_rollout_still_rolls_back_by_itself():
    paused_spec = spec(on_inconclusive="pause", bake_s=0)
    traffic = Traffic(STABLE, GOOD, seed=18)
    _, state = run(paused_spec, traffic, checks=3)
    assert state.phase == "paused"
    traffic.candidate = replace(GOOD, error_rate=0.4)
    decisions, state = run(paused_spec, traffic, checks=10, state=state)
    assert state.phase == "rolled_back" and decisions[-1].action.kind == "rollback"


def test_holding_while_the_step_bakes_is_not_an_anomaly():
    # With a long bake, checks short of samples hold without pausing or counting a streak.
    decisions, state = run(spec(on_inconclusive="pause", bake_s=600, max_inconclusive=2),
                           Traffic(STABLE, GOOD, seed=26), checks=6)
    assert [d.action.kind for d in decisions[1:]] == ["hold"] * 5
    assert all("baking" in d.explanation for d in decisions[1:] if d.verdict == "inconclusive")
    assert state.phase == "running" and state.inconclusive_streak == 0


def test_state_round_trips_through_json_and_a_restarted_supervisor_resumes_identically():
    s = spec()
    straight = Traffic(STABLE, GOOD, seed=19)
    resumed = Traffic(STABLE, GOOD, seed=19)
    state_a = state_b = None
    for _ in range(40):
        ev_a, ev_b = straight.next(), resumed.next()
        a = evaluate(s, state_a, ev_a, straight.now)
        persisted = None if state_b is None else RolloutState.from_json(state_b.to_json())
        assert persisted == state_b
        b = evaluate(s, persisted, ev_b, resumed.now)
        assert a.decision.to_dict() == b.decision.to_dict()
        state_a, state_b = a.state, b.state
        straight.apply(a.decision)
        resumed.apply(b.decision)
        if state_a.finished:
            break
    assert state_a.phase == "promoted"
    with pytest.raises(ValueError, match="schema"):
        RolloutState.from_dict({**state_a.to_dict(), "schema": 99})


def test_decision_records_have_the_documented_schema():
    decisions, _ = run(spec(), Traffic(STABLE, GOOD, seed=20), checks=12)
    keys = {"schema", "rollout", "kind", "mode", "check", "at", "next_check_at", "candidate_version", "step_index",
            "candidate_weight", "verdict", "action", "explanation", "rules", "sequential", "failures",
            "failure_limit", "inconclusive_streak", "window", "bake", "phase", "restarted"}
    rule_keys = {"rule", "metric", "verdict", "reason", "threshold", "on_fail", "stable_value", "candidate_value",
                 "stable_n", "candidate_n", "statistic", "p_value", "warning", "details"}
    seq_keys = {"test", "stable_value", "candidate_value", "stable_n", "candidate_n", "statistic", "threshold",
                "p_value", "alpha", "rejected", "reason"}
    for d in decisions:
        record = json.loads(d.to_json())
        assert set(record) == keys and record["schema"] == 1
        assert set(record["action"]) == {"kind", "candidate_weight", "weights", "policy", "new_stable"}
        assert record["action"]["kind"] in ACTIONS
        assert all(set(r) == rule_keys for r in record["rules"])
        assert all(set(t) == seq_keys for t in record["sequential"])
        assert record["next_check_at"] == record["at"] + 60
    assert [t["test"] for t in json.loads(decisions[-1].to_json())["sequential"]] == [
        "error_rate", "misprediction_rate", "reward"]


def test_a_shadow_graduates_to_a_canary_and_is_promoted():
    shadow = spec(kind="shadow", rules=[*CANARY["rules"], {"metric": "shadow_agreement"}, {"metric": "shadow_abs_dp"}])
    decisions, state = run(shadow, Traffic(STABLE, GOOD, seed=21), checks=300)
    assert decisions[0].action.policy == "shadow" and decisions[0].action.candidate_weight == 0.0
    assert actions(decisions) == [("start", 0.0), ("promote_shadow", 5.0), ("step", 25.0), ("step", 50.0),
                                  ("promote", 100.0)]
    graduation = next(d for d in decisions if d.action.kind == "promote_shadow")
    assert graduation.mode == "shadow" and {r.rule for r in graduation.rules} == {
        "error_rate", "latency_p99", "shadow_agreement", "shadow_abs_dp"}
    assert "Promoting the shadow to a canary at 5%" in graduation.explanation
    assert state.phase == "promoted"


def test_a_disagreeing_shadow_is_rolled_back():
    shadow = spec(kind="shadow", rules=[{"metric": "error_rate"}, {"metric": "shadow_agreement"}],
                  sequential={"enabled": False})
    decisions, state = run(shadow, Traffic(STABLE, replace(GOOD, agreement=0.7), seed=22), checks=50)
    assert state.phase == "rolled_back" and [r.rule for r in decisions[-1].failing()] == ["shadow_agreement"]
    assert decisions[-1].rule("shadow_agreement").candidate_value < 0.8


def _ab_spec(**changes):
    return parse_spec({"name": "ab", "kind": "ab-test", "stable": "stable", "candidate": "candidate",
                       "candidate_version": 2, "conclude": True, "rules": [{"metric": "ab_verdict"},
                                                                          {"metric": "error_rate"}], **changes})


def _ab_run(s, conversion_candidate: float, seed: int, checks: int = 100):
    rng = np.random.default_rng(seed)
    arms = {"stable": [0, 0], "candidate": [0, 0]}
    traffic = Traffic(STABLE, GOOD, seed=seed, weight=50.0)

    def with_report(ev: Evidence, _):
        for name, rate in (("stable", 0.2), ("candidate", conversion_candidate)):
            n = 1000
            arms[name][0] += n
            arms[name][1] += int(rng.binomial(n, rate))
        report = {"arms": {k: {"n": v[0], "conversions": v[1]} for k, v in arms.items()}}
        return replace(ev, ab_report=report, ab_observed_at=ev.stable.observed_at)

    return run(s, traffic, checks=checks, evidence_hook=with_report)


def test_an_ab_test_concludes_to_the_winner():
    decisions, state = _ab_run(_ab_spec(), 0.25, seed=23)
    last = decisions[-1]
    assert state.phase == "concluded" and last.action.kind == "conclude"
    assert last.action.new_stable == "candidate" and last.action.candidate_weight == 100.0
    assert last.rule("ab_verdict").details["winner"] == "candidate"
    decisions, state = _ab_run(_ab_spec(), 0.15, seed=24)
    assert state.phase == "concluded" and decisions[-1].action.new_stable == "stable"
    assert decisions[-1].action.candidate_weight == 0.0


def test_an_ab_test_without_conclude_keeps_running_on_equal_arms():
    decisions, state = _ab_run(_ab_spec(conclude=False), 0.2, seed=25, checks=40)
    assert state.phase == "running" and {d.action.kind for d in decisions[1:]} == {"hold"}
    assert decisions[-1].verdict == "pass" and "no significant winner" in decisions[-1].explanation
