"""Rollout specs: the example parses; every invalid case is refused with a message naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.supervisor.spec import (
    METRICS,
    ErrorRateRule,
    InputDriftRule,
    RolloutSpec,
    RolloutSpecError,
    parse_spec,
)

ROOT = Path(__file__).resolve().parents[3]
EXAMPLE = ROOT / "patterns" / "canary" / "rollout.yaml"

BASE = {
    "name": "bc-v2",
    "kind": "canary",
    "stable": "stable",
    "candidate": "candidate",
    "candidate_version": 2,
    "rules": [{"metric": "error_rate"}],
}


def test_the_shipped_example_parses_and_comments_every_key():
    spec = parse_spec(EXAMPLE.read_text(), str(EXAMPLE))
    assert spec.kind == "canary" and spec.steps == (5.0, 25.0, 50.0, 100.0)
    assert [r.metric for r in spec.rules] == ["error_rate", "latency_p99", "accuracy", "label_drift", "input_drift"]
    drift = spec.rules[-1]
    assert isinstance(drift, InputDriftRule) and (drift.warn, drift.threshold, drift.on_fail) == (0.1, 0.25, "block")
    for number, line in enumerate(EXAMPLE.read_text().splitlines(), 1):
        if line.strip() and not line.lstrip().startswith("#"):
            assert "#" in line, f"rollout.yaml line {number} has no comment: {line!r}"


def test_defaults_and_the_last_step_is_appended():
    spec = parse_spec({**BASE, "steps": [10, 30]})
    assert spec.steps == (10.0, 30.0, 100.0)
    assert spec.staleness_s == 2 * spec.interval_s
    assert spec.sequential.alpha_per_test() == pytest.approx(0.01 / 3)
    rule = spec.rules[0]
    assert isinstance(rule, ErrorRateRule) and rule.rule_name == "error_rate" and rule.applies("canary")


def test_yaml_text_and_mapping_agree():
    text = "name: bc-v2\nkind: canary\nstable: stable\ncandidate: candidate\ncandidate_version: 2\n" \
           "rules:\n  - metric: error_rate\n"
    assert parse_spec(text) == parse_spec(BASE)


def test_every_field_has_a_docstring():
    models = [RolloutSpec, type(parse_spec(BASE).sequential)]
    models += [type(r) for r in parse_spec(EXAMPLE.read_text()).rules]
    for model in models:
        for name, info in model.model_fields.items():
            assert info.description, f"{model.__name__}.{name} has no docstring"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"steps": [5, 5, 100]}, "steps: must increase strictly"),
        ({"steps": [0, 50]}, "steps: every step must be in (0, 100]"),
        ({"steps": [50, 120]}, "steps: every step must be in (0, 100]"),
        ({"steps": [100]}, "steps: at least one step below 100"),
        ({"steps": "5,25"}, "steps: expected a list"),
        ({"surprise": 1}, "surprise: unknown key"),
        ({"kind": "blue-green"}, "kind: Input should be 'canary', 'shadow' or 'ab-test'"),
        ({"candidate": "stable"}, "stable and candidate are the same variant"),
        ({"candidate_version": 0}, "candidate_version: version numbers start at 1"),
        ({"bake_s": -1}, "bake_s: Input should be greater than or equal to 0"),
        ({"interval_s": 0}, "interval_s: Input should be greater than 0"),
        ({"min_samples": 0}, "min_samples: Input should be greater than or equal to 1"),
        ({"failure_limit": 0}, "failure_limit: Input should be greater than or equal to 1"),
        ({"on_inconclusive": "promote"}, "on_inconclusive: Input should be 'hold' or 'pause'"),
        ({"stale_after_s": 10}, "stale_after_s (10.0) is below interval_s (60.0)"),
        ({"rules": []}, "rules: List should have at least 1 item"),
        ({"rules": [{"metric": "vibes"}]}, "rules[0].metric: unknown metric 'vibes'"),
        ({"rules": [{"threshold": 0.1}]}, "rules[0].metric: required"),
        ({"rules": [{"metric": "error_rate", "threshold": 2}]}, "rules[0].threshold: Input should be less than"),
        ({"rules": [{"metric": "error_rate", "treshold": 0.1}]}, "rules[0].treshold: unknown key"),
        ({"rules": [{"metric": "error_rate"}, {"metric": "reward"}]}, "rules[1].threshold: required"),
        ({"rules": [{"metric": "latency_p99", "threshold": 0.9}]}, "rules[0].threshold: Input should be greater"),
        ({"rules": [{"metric": "latency_p99", "min_samples": 20}]}, "rules[0].min_samples: Input should be greater"),
        ({"rules": [{"metric": "input_drift", "warn": 0.3}]}, "rules[0]: warn (0.3) is above threshold (0.25)"),
        ({"rules": [{"metric": "error_rate"}, {"metric": "error_rate"}]}, "['error_rate'] appear more than once"),
        ({"rules": [{"metric": "shadow_agreement"}]}, "none is evaluated in canary mode"),
        ({"kind": "ab-test", "steps": [5, 100], "rules": [{"metric": "ab_verdict"}]}, "steps: an A/B test keeps"),
        ({"conclude": True}, "conclude: only for kind ab-test"),
        ({"sequential": {"alpha": 1.5}}, "sequential.alpha: Input should be less than 1"),
        ({"sequential": {"tests": ["error_rate", "error_rate"]}}, "sequential.tests: each test at most once"),
        ({"sequential": {"tests": ["latency"]}}, "sequential.tests[0]: Input should be"),
    ],
)
def test_invalid_specs_are_refused_naming_the_key(change, message):
    with pytest.raises(RolloutSpecError) as err:
        parse_spec({**BASE, **change})
    assert message in err.value.message
    assert err.value.message.startswith("rollout: ")


def test_the_error_carries_the_key_path_as_field():
    with pytest.raises(RolloutSpecError) as err:
        parse_spec({**BASE, "rules": [{"metric": "error_rate", "treshold": 0.1}]})
    assert err.value.field == "rules[0].treshold"
    with pytest.raises(RolloutSpecError) as err:
        parse_spec({**BASE, "steps": [100]})
    assert err.value.field == "steps"


def test_a_shadow_rollout_needs_rules_for_both_of_its_phases():
    with pytest.raises(RolloutSpecError, match="none is evaluated in shadow mode"):
        parse_spec({**BASE, "kind": "shadow", "rules": [{"metric": "accuracy"}]})
    spec = parse_spec({**BASE, "kind": "shadow", "rules": [{"metric": "error_rate"}, {"metric": "shadow_agreement"}]})
    assert [r.metric for r in spec.rules_for("shadow")] == ["error_rate", "shadow_agreement"]
    assert [r.metric for r in spec.rules_for("canary")] == ["error_rate"]


@pytest.mark.parametrize("source", ["", "- a\n- b\n", "name: [unclosed\n"])
def test_not_a_mapping_or_not_yaml(source):
    with pytest.raises(RolloutSpecError, match="rollout: (expected a mapping|not valid YAML)"):
        parse_spec(source)


def test_every_metric_has_a_rule_kind():
    for metric in METRICS:
        extra = {"threshold": 0.1} if metric == "reward" else {}
        kind = {"ab_verdict": "ab-test"}.get(metric, "canary")
        rules = [{"metric": metric, "during": [kind], **extra}]
        spec = parse_spec({**BASE, "kind": kind, "rules": rules})
        assert spec.rules[0].metric == metric
