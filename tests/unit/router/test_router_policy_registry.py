"""Policy registry, the shared interface, config validation and the shadow policy."""

from __future__ import annotations

import json

import pytest

from services.router.policies import (
    POLICIES,
    PolicyConfigError,
    PolicyStateError,
    RouteRequest,
    RoutingPolicy,
    ShadowPolicy,
    UnknownVariantError,
    build_policy,
    params_model,
)

MINIMAL_PARAMS = {
    "shadow": {},
    "canary": {"weights": {"a": 9, "b": 1}},
    "ab": {},
    "epsilon_greedy": {},
    "ucb1": {},
    "thompson": {},
}


def test_registry_covers_every_kind() -> None:
    assert set(POLICIES) == set(MINIMAL_PARAMS)


@pytest.mark.parametrize("kind", sorted(MINIMAL_PARAMS))
def test_every_policy_honours_the_interface(kind: str) -> None:
    policy = build_policy(kind, ["a", "b"], MINIMAL_PARAMS[kind], rng_seed=0)
    assert isinstance(policy, RoutingPolicy) and policy.kind == kind
    assert policy.variants == ("a", "b")
    decision = policy.choose(RouteRequest("r1", key="user-1"))
    assert decision.variant in policy.variants and isinstance(decision.reason, str)
    forced = policy.choose(RouteRequest("r2", key="user-1", override="b"))
    assert (forced.variant, forced.reason) == ("b", "override")
    with pytest.raises(UnknownVariantError):
        policy.choose(RouteRequest("r3", override="c"))
    policy.on_result(decision, "r1", ok=True, latency_s=0.002)
    policy.on_reward(decision.variant, 1)
    state = json.loads(json.dumps(policy.state(), allow_nan=False))
    assert state["kind"] == kind and state["variants"] == ["a", "b"]
    fresh = build_policy(kind, ["a", "b"], MINIMAL_PARAMS[kind], rng_seed=1)
    fresh.load_state(state)
    assert fresh.state() == policy.state()
    with pytest.raises(PolicyStateError):
        fresh.load_state({"kind": kind, "version": 999})


LEARNS = {"ab", "epsilon_greedy", "ucb1", "thompson"}


@pytest.mark.parametrize("kind", sorted(MINIMAL_PARAMS))
def test_what_the_router_asks_of_a_policy(kind: str) -> None:
    policy = build_policy(kind, ["a", "b"], MINIMAL_PARAMS[kind], rng_seed=0)
    assert policy.takes_feedback is (kind in LEARNS)
    assert policy.carries_state is (kind in LEARNS)  # canary weights and shadow roles come from the config
    assert policy.mirrors == (("b",) if kind == "shadow" else ())
    assert isinstance(policy.report(), dict)
    scored = policy.on_failure("a", 0.0)
    assert scored is (kind in LEARNS - {"ab"})  # bandits score the failure reward; A/B and others ignore it
    assert policy.on_failure("a", None) is False  # no failure reward configured: nothing learned
    json.dumps(policy.report(), allow_nan=False)


def test_bandit_carry_over_drops_removed_arms_and_starts_new_ones_fresh() -> None:
    old = build_policy("ucb1", ["a", "b", "c"], {}, rng_seed=0)
    for variant, reward in (("a", 1), ("b", 0), ("c", 1)):
        old.choose(RouteRequest("r", override=variant))
        old.on_reward(variant, reward)
    new = build_policy("ucb1", ["a", "d"], {}, rng_seed=0)
    new.carry_over(old.state())
    arms = new.state()["arms"]
    assert arms["a"]["rewards"] == 1 and arms["d"]["rewards"] == 0 and set(arms) == {"a", "d"}
    with pytest.raises(PolicyStateError):
        new.load_state(old.state())  # a plain restore refuses unknown arms; carry_over drops them


def test_ab_carry_over_needs_the_same_arms() -> None:
    old = build_policy("ab", ["a", "b"], {}, rng_seed=0)
    old.choose(RouteRequest("r", key="u1"))
    same = build_policy("ab", ["a", "b"], {"min_samples": 5}, rng_seed=0)
    same.carry_over(old.state())
    assert same.state()["arms"] == old.state()["arms"]
    with pytest.raises(PolicyStateError, match="the experiment starts fresh"):
        build_policy("ab", ["a", "c"], {}, rng_seed=0).carry_over(old.state())


@pytest.mark.parametrize("kind", sorted(MINIMAL_PARAMS))
def test_every_param_is_documented(kind: str) -> None:
    # The YAML routing config embeds these models; their field docstrings are its documentation.
    schema = params_model(kind).model_json_schema()
    assert schema.get("additionalProperties") is False
    for name, field in schema["properties"].items():
        assert field.get("description"), f"{kind}.{name} has no docstring"


@pytest.mark.parametrize(
    ("kind", "variants", "params", "problem"),
    [
        ("nope", ["a"], {}, "kind: unknown policy kind 'nope'"),
        ("canary", [], {"weights": {}}, "variants: at least one variant is required"),
        ("canary", ["a", "a"], {"weights": {"a": 1}}, "variants: duplicate names ['a']"),
        ("canary", ["a", ""], {"weights": {"a": 1}}, "variants: every name must be a non-empty string"),
        ("canary", ["a", "b"], {}, "weights: Field required"),
        ("canary", ["a", "b"], {"weights": {"a": -1, "b": 1}}, "weights.a: Input should be greater than or equal to 0"),
        ("canary", ["a", "b"], {"weights": {"a": 0, "b": 0}}, "weights: all weights are zero"),
        ("canary", ["a", "b"], {"weights": {"a": 1, "b": 1, "z": 1}}, "weights: weights for unknown variants ['z']"),
        ("canary", ["a", "b"], {"weights": {"a": 1}}, "weights: no weight for variants ['b']"),
        ("canary", ["a", "b"], {"weights": {"a": 1, "b": 1}, "sticky": True}, "sticky: Extra inputs are not permitted"),
        ("canary", ["a", "b"], ["weights"], "params: expected a mapping"),
        ("shadow", ["a", "b"], {"primary": "x"}, "primary: unknown variant 'x'"),
        ("shadow", ["a", "b"], {"shadows": ["a"]}, "shadows: 'a' is the primary"),
        ("shadow", ["a", "b"], {"shadows": ["q"]}, "shadows: unknown variants ['q']"),
    ],
)
def test_bad_config_names_the_problem(kind: str, variants: list[str], params: object, problem: str) -> None:
    with pytest.raises(PolicyConfigError) as info:
        build_policy(kind, variants, params)  # type: ignore[arg-type]
    assert problem in str(info.value)


def test_config_error_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        build_policy("canary", ["a"], {"weights": {"a": -1}})


def test_shadow_routes_to_primary_and_exposes_its_mirrors() -> None:
    policy = build_policy("shadow", ["stable", "candidate-1", "candidate-2"], {})
    assert isinstance(policy, ShadowPolicy)
    assert policy.primary == "stable"
    assert policy.mirrors == ("candidate-1", "candidate-2")
    for i in range(100):
        decision = policy.choose(RouteRequest(str(i), key=f"user-{i}"))
        assert (decision.variant, decision.reason) == ("stable", "primary")
    explicit = ShadowPolicy(["a", "b", "c"], {"primary": "b", "shadows": ["c"]})
    assert (explicit.primary, explicit.mirrors) == ("b", ("c",))  # a tuple: not changeable from outside
