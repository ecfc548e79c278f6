"""Version policies and the per-model config.yaml of the model server."""

from __future__ import annotations

import pytest

from services.model_server.config import (
    BatchingConfig,
    ConfigError,
    ModelConfig,
    VersionPolicy,
    parse_model_config,
    read_model_config,
)


@pytest.mark.parametrize(
    ("raw", "versions", "selected"),
    [
        ("latest:2", [1, 2, 3], {2, 3}),
        ("latest:1", [1, 2, 3], {3}),
        ("latest:5", [1, 2, 3], {1, 2, 3}),
        ("all", [1, 4, 9], {1, 4, 9}),
        ("specific:1,3", [1, 2, 3], {1, 3}),
        ("specific:7", [1, 2, 3], set()),
        ({"latest": 2}, [5, 1, 3], {3, 5}),
        ({"specific": [2]}, [1, 2, 3], {2}),
        ({"all": None}, [1, 2], {1, 2}),
        ("latest:2", [], set()),
    ],
)
def test_version_policy_selects_like_tf_serving(raw, versions, selected):
    assert VersionPolicy.parse(raw).select(versions) == selected


@pytest.mark.parametrize("raw", ["newest", "latest:0", "latest:x", "specific:", "specific:a", {"latest": 0}, 3,
                                 {"latest": 1, "all": None}])
def test_bad_version_policy_is_refused_with_the_accepted_forms(raw):
    with pytest.raises(ConfigError, match="version_policy"):
        VersionPolicy.parse(raw)


def test_config_overrides_defaults_key_by_key():
    defaults = ModelConfig(VersionPolicy.parse("latest:2"), {}, BatchingConfig(enabled=False, max_rows=64))
    cfg = parse_model_config(
        {"labels": {"stable": 1, "canary": 2}, "batching": {"enabled": True, "max_delay_ms": 5}},
        defaults, "config.yaml",
    )
    assert cfg.policy == defaults.policy
    assert cfg.labels == {"stable": 1, "canary": 2}
    assert cfg.batching == BatchingConfig(enabled=True, max_rows=64, max_delay_s=0.005, max_queue=512)
    assert parse_model_config(None, defaults, "x") is defaults


@pytest.mark.parametrize(
    ("raw", "words"),
    [
        ([1, 2], "expected a mapping"),
        ({"lables": {}}, "unknown key(s) ['lables']"),
        ({"labels": {"stable": "two"}}, "must point to a version number"),
        ({"labels": {"3": 3}}, "non-numeric"),
        ({"labels": [1]}, "must map a label"),
        ({"batching": {"max_rows": 0}}, "max_rows >= 1"),
        ({"batching": {"max_rows": "many"}}, "batching"),
        ({"batching": {"delay": 1}}, "unknown batching key"),
        ({"version_policy": "newest"}, "version_policy"),
    ],
)
def test_bad_config_names_the_problem(raw, words):
    with pytest.raises(ConfigError) as err:
        parse_model_config(raw, ModelConfig(), "m/config.yaml")
    assert words in str(err.value)
    assert "m/config.yaml" in str(err.value)


def test_read_model_config_file(tmp_path):
    defaults = ModelConfig()
    assert read_model_config(tmp_path / "missing.yaml", defaults) is defaults
    (tmp_path / "config.yaml").write_text("version_policy: all\nlabels: {stable: 2}\n")
    cfg = read_model_config(tmp_path / "config.yaml", defaults)
    assert cfg.policy.kind == "all" and cfg.labels == {"stable": 2}
    (tmp_path / "bad.yaml").write_text("labels: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        read_model_config(tmp_path / "bad.yaml", defaults)
