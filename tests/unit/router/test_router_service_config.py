"""Routing config validation: every bad config is refused with a message naming the problem."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from services.core.settings import REPO_ROOT
from services.router.config import RoutingConfig, RoutingConfigError, parse_config

BASE = {
    "name": "bc",
    "model": "breast-cancer",
    "variants": {
        "stable": {"url": "http://127.0.0.1:8501", "model": "breast-cancer", "version": 1},
        "candidate": {"url": "http://127.0.0.1:8502", "model": "breast-cancer", "version": 2, "timeout_s": 0.5},
    },
    "policy": {"kind": "canary", "params": {"weights": {"stable": 90, "candidate": 10}}},
    "fallback": "stable",
}


def with_changes(**changes) -> dict:
    cfg = copy.deepcopy(BASE)
    for path, value in changes.items():
        node = cfg
        keys = path.split("__")
        for k in keys[:-1]:
            node = node[k]
        if value is _DELETE:
            del node[keys[-1]]
        else:
            node[keys[-1]] = value
    return cfg


_DELETE = object()


def test_valid_config_fills_defaults() -> None:
    cfg = parse_config(yaml.safe_dump(BASE))
    assert isinstance(cfg, RoutingConfig)
    assert cfg.fallback_variant == "stable"
    assert cfg.variants["stable"].timeout_s == 1.0
    assert cfg.sticky.header == "x-user-id" and cfg.override_header == "x-variant"
    assert cfg.outlier_detection.consecutive_failures == 5
    assert cfg.feedback.ttl_s == 3600


def test_fallback_defaults_to_the_first_variant() -> None:
    assert parse_config(with_changes(fallback=_DELETE)).fallback_variant == "stable"


def test_hash_ignores_formatting_but_not_content() -> None:
    a = parse_config(yaml.safe_dump(BASE))
    b = parse_config("# a comment\n" + yaml.safe_dump(BASE, default_flow_style=True))
    assert a.content_hash() == b.content_hash()
    c = parse_config(with_changes(policy__params__weights={"stable": 80, "candidate": 20}))
    assert c.content_hash() != a.content_hash()


@pytest.mark.parametrize(
    ("changes", "problem"),
    [
        ({"colour": "blue"}, "colour: unknown key"),
        ({"variants__stable__weight": 3}, "variants.stable.weight: unknown key"),
        ({"policy__params__weights": {"stable": 90, "candidate": 20}}, "weights sum to 110; they must sum to 100"),
        ({"policy__params__weights": {"stable": 0.5, "candidate": 0.4}}, "weights sum to 0.9"),
        ({"policy__params__weights": {"stable": 100}}, "no weight for variants ['candidate']"),
        ({"policy__params__weights": {"stable": 90, "candidate": 5, "ghost": 5}},
         "weights for unknown variants ['ghost']"),
        ({"policy__params__weights": {"stable": 110, "candidate": -10}}, "greater than or equal to 0"),
        ({"policy__params__sticky": True}, "sticky: Extra inputs are not permitted"),
        ({"policy__kind": "round_robin"}, "unknown policy kind 'round_robin'"),
        ({"policy__kind": "ab", "policy__params": {"alpha": 2}}, "alpha: Input should be less than 1"),
        ({"policy__kind": "thompson", "policy__params": {"prior_mean": 1}}, "prior_mean: does not apply"),
        ({"policy__kind": "shadow", "policy__params": {"primary": "ghost"}}, "primary: unknown variant 'ghost'"),
        ({"fallback": "ghost"}, "fallback: unknown variant 'ghost'"),
        ({"variants": {}}, "at least one variant is required"),
        ({"variants__stable__url": "ftp://x"}, "variants.stable.url: expected http://host:port"),
        ({"variants__stable__url": "http://x:notaport"}, "variants.stable.url: bad port"),
        ({"variants__stable__timeout_s": 0}, "variants.stable.timeout_s: Input should be greater than 0"),
        ({"variants__stable__grpc": "localhost"}, "variants.stable.grpc: expected host:port"),
        ({"variants__stable__grpc": "localhost:99999"}, "variants.stable.grpc: expected host:port"),
        ({"variants__stable__version": 0}, "version numbers start at 1"),
        ({"variants__stable__model": "a/b"}, "variants.stable.model: expected a model name"),
        ({"variants__stable__model": _DELETE}, "variants.stable.model: required"),
        ({"name": "has space"}, "name: expected 1-63 letters"),
        ({"override_header": "x-user-id"}, "sticky.header and override_header are both 'x-user-id'"),
        ({"override_header": "content-type"}, "'content-type' is reserved"),
        ({"sticky": {"header": "bad header"}}, "not a valid HTTP header name"),
        ({"outlier_detection": {"base_ejection_s": 60, "max_ejection_s": 10}}, "max_ejection_s (10.0) is below"),
        ({"shadow": {"queue_size": 0}}, "shadow.queue_size: Input should be greater than or equal to 1"),
        ({"feedback": {"ttl_s": -1}}, "feedback.ttl_s: Input should be greater than 0"),
    ],
)
def test_bad_config_is_refused_naming_the_problem(changes: dict, problem: str) -> None:
    with pytest.raises(RoutingConfigError) as err:
        parse_config(with_changes(**changes))
    assert problem in err.value.message
    assert err.value.http_status == 400


def test_variant_names_must_be_safe_for_headers_and_metrics() -> None:
    cfg = with_changes()
    cfg["variants"]["bad name"] = cfg["variants"].pop("candidate")
    cfg["policy"]["params"]["weights"] = {"stable": 90, "bad name": 10}
    with pytest.raises(RoutingConfigError, match="bad: \\['bad name'\\]"):
        parse_config(cfg)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("", "expected a mapping at the top level, got empty"),
        ("- a\n- b\n", "expected a mapping at the top level, got list"),
        ("name: [unclosed\n", "not valid YAML"),
    ],
)
def test_unparseable_text_is_refused(text: str, problem: str) -> None:
    with pytest.raises(RoutingConfigError, match=problem.replace("[", "\\[")):
        parse_config(text, "routing.yaml")


def test_several_problems_are_all_named() -> None:
    with pytest.raises(RoutingConfigError) as err:
        parse_config(with_changes(colour="blue", variants__stable__timeout_s=-1))
    assert "colour: unknown key" in err.value.message
    assert "variants.stable.timeout_s" in err.value.message
    assert len(err.value.details["problems"]) == 2


@pytest.mark.parametrize("pattern", ["shadow", "canary", "ab-test", "bandit"])
def test_pattern_routing_configs_are_valid(pattern: str) -> None:
    path = Path(REPO_ROOT) / "patterns" / pattern / "routing.yaml"
    cfg = parse_config(path.read_text(), str(path))
    assert cfg.variants and cfg.fallback_variant in cfg.variants
