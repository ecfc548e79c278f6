"""Router replicas in the chart: how many pods, the shared token key, the feedback topic, the PDB."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from tests.chart.helpers import render


def _one(docs: list[dict[str, Any]], kind: str, name_end: str) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"].endswith(name_end)]
    assert len(found) == 1, [d["metadata"]["name"] for d in docs if d["kind"] == kind]
    return found[0]


def _router_env(docs: list[dict[str, Any]]) -> dict[str, str]:
    deployment = _one(docs, "Deployment", "-router")
    return {e["name"]: e["value"] for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}


@pytest.mark.parametrize("pattern", ["bandit", "ab-test"])
def test_learning_patterns_run_two_routers_sharing_the_feedback_topic_when_kafka_is_available(pattern) -> None:
    docs = render(pattern, "kafka.enabled=true")
    deployment = _one(docs, "Deployment", "-router")
    assert deployment["spec"]["replicas"] == 2
    env = _router_env(docs)
    assert env["ROUTER_KAFKA_BOOTSTRAP_SERVERS"].endswith(":9092") and "kafka" in env["ROUTER_KAFKA_BOOTSTRAP_SERVERS"]
    assert env["ROUTER_FEEDBACK_TOPIC"] == "feedback" and env["ROUTER_FEEDBACK_TOPIC_PARTITIONS"] == "3"
    assert env["ROUTER_TOKEN_KEY_FILE"].endswith("/key")
    pod = deployment["spec"]["template"]["spec"]
    mounts = {m["name"]: m for m in pod["containers"][0]["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert env["ROUTER_TOKEN_KEY_FILE"].startswith(mounts["token-key"]["mountPath"]) and mounts["token-key"]["readOnly"]
    secret = _one(docs, "Secret", "-router-token-key")
    assert volumes["token-key"]["secret"]["secretName"] == secret["metadata"]["name"] and "key" in secret["data"]
    pdb = _one(docs, "PodDisruptionBudget", "-router")
    assert pdb["spec"]["maxUnavailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"].items() <= deployment["spec"]["selector"]["matchLabels"].items()
    _one(docs, "StatefulSet", "-kafka")  # the demo broker the topic lives on


def test_ab_test_with_replicas_counts_by_outcomes() -> None:
    routing = _one(render("ab-test", "kafka.enabled=true"), "ConfigMap", "-routing")
    config = yaml.safe_load(next(iter(routing["data"].values())))
    assert config["policy"]["params"]["count_by"] == "outcomes"
    single = _one(render("ab-test"), "ConfigMap", "-routing")
    assert yaml.safe_load(next(iter(single["data"].values())))["policy"]["params"]["count_by"] == "assignments"


@pytest.mark.parametrize("pattern", ["bandit", "ab-test", "canary"])
def test_without_kafka_one_router_and_no_topic(pattern) -> None:
    docs = render(pattern)
    assert _one(docs, "Deployment", "-router")["spec"]["replicas"] == 1
    env = _router_env(docs)
    assert "ROUTER_KAFKA_BOOTSTRAP_SERVERS" not in env and "ROUTER_TOKEN_KEY_FILE" in env
    assert not [d for d in docs if d["kind"] == "StatefulSet"]


def test_an_existing_secret_holds_the_token_key_and_an_explicit_count_wins() -> None:
    docs = render("bandit", "kafka.bootstrapServers=kafka.example:9092", "router.replicas=3",
                  "router.tokenKey.existingSecret=my-keys", "router.tokenKey.key=current",
                  "router.feedback.topic=bandit-feedback")
    deployment = _one(docs, "Deployment", "-router")
    assert deployment["spec"]["replicas"] == 3
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    assert volumes["token-key"]["secret"]["secretName"] == "my-keys"
    assert not [d for d in docs if d["kind"] == "Secret" and d["metadata"]["name"].endswith("-router-token-key")]
    env = _router_env(docs)
    assert env["ROUTER_KAFKA_BOOTSTRAP_SERVERS"] == "kafka.example:9092"
    assert env["ROUTER_TOKEN_KEY_FILE"].endswith("/current") and env["ROUTER_FEEDBACK_TOPIC"] == "bandit-feedback"


def test_canary_replicas_share_the_topic_only_when_kafka_is_there() -> None:
    assert "ROUTER_KAFKA_BOOTSTRAP_SERVERS" not in _router_env(render("canary", "router.replicas=2"))
    shared = _router_env(render("canary", "router.replicas=2", "kafka.bootstrapServers=k:9092"))
    assert shared["ROUTER_KAFKA_BOOTSTRAP_SERVERS"] == "k:9092"
