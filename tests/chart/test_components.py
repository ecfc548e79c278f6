"""The chart runs, per pattern, what `make up PATTERN=<pattern>` runs locally (services/stack/patterns.py).

Roles are compared, not ports: a local process `model-server-candidate` or `scoring-worker-1` is
the chart's Deployment with component `model-server` + variant `candidate`, or `scoring-worker`.
The local stack's side effects (Kafka broker, model publishing, key and config files) are replaced
by stubs that record them: a local broker corresponds to the chart's Kafka StatefulSet, a local
publish to the chart's publisher Job.
"""

from __future__ import annotations

import re
from collections import Counter
from types import SimpleNamespace

import pytest

from services.stack import patterns as local
from tests.chart.helpers import NOT_IN_CHART, PATTERNS, by_kind, render


def local_stack(pattern: str, monkeypatch, tmp_path) -> tuple[Counter, set[str]]:
    used: set[str] = set()

    def broker(bootstrap_servers=None):
        used.add("kafka-broker")
        return "kafka.test:9092", {}

    def publish(*args, **kwargs):
        used.add("model-publisher")
        return SimpleNamespace(describe=lambda: "stub")

    monkeypatch.setattr(local, "_local_broker", broker)
    monkeypatch.setattr(local, "publish", publish)
    monkeypatch.setattr(local, "ensure_key_file", lambda path: tmp_path / "model-signing.key")
    monkeypatch.setattr(local, "load_signing_key", lambda *a, **k: b"k" * 32)
    factory = local.PATTERNS[pattern]
    stack = factory(run_dir=tmp_path) if pattern in ("shadow", "canary", "ab-test", "bandit") else factory()
    roles = Counter(re.sub(r"-\d+$", "", p.name) for p in stack.processes)
    return roles, used


def chart_stack(pattern: str, *sets: str) -> tuple[Counter, set[str]]:
    docs = render(pattern, *sets)
    roles: Counter = Counter()
    for d in by_kind(docs, "Deployment"):
        labels = d["spec"]["template"]["metadata"]["labels"]
        role = labels["app.kubernetes.io/component"]
        if "serving-patterns.io/variant" in labels:
            role += "-" + labels["serving-patterns.io/variant"]
        roles[role] += d["spec"]["replicas"]
    extras = {d["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"]
              for d in by_kind(docs, "StatefulSet") + by_kind(docs, "Job")}
    return roles, extras


# Local processes the chart does not render yet, each with why. Remove an entry when the chart renders it.
NOT_YET_IN_THE_CHART: dict[str, str] = {}


def test_the_local_stack_knows_the_same_patterns():
    assert sorted(set(local.PATTERNS) - set(NOT_IN_CHART)) == sorted(PATTERNS)


@pytest.mark.parametrize("pattern", PATTERNS)
def test_the_chart_runs_what_make_up_runs(pattern, monkeypatch, tmp_path):
    local_roles, local_extras = local_stack(pattern, monkeypatch, tmp_path)
    chart_roles, chart_extras = chart_stack(pattern)
    for role in NOT_YET_IN_THE_CHART:
        assert role not in chart_roles, f"the chart renders {role!r} now: drop it from NOT_YET_IN_THE_CHART"
        local_roles.pop(role, None)
    assert set(chart_roles) == set(local_roles), (
        f"{pattern}: the chart renders {sorted(chart_roles)}, make up starts {sorted(local_roles)}")
    assert chart_extras == local_extras, f"{pattern}: chart {chart_extras} vs local stack {local_extras}"
    if "scoring-worker" in local_roles:
        assert chart_roles["scoring-worker"] == local_roles["scoring-worker"], "workers in the consumer group"


def test_stream_scoring_following_the_models_topic_publishes_first(monkeypatch, tmp_path):
    used: set[str] = set()
    monkeypatch.setattr(local, "_local_broker", lambda bootstrap_servers=None: ("kafka.test:9092", {}))
    monkeypatch.setattr(local, "publish", lambda *a, **k: used.add("model-publisher") or SimpleNamespace(
        describe=lambda: "stub"))
    monkeypatch.setattr(local, "ensure_key_file", lambda path: tmp_path / "k")
    monkeypatch.setattr(local, "load_signing_key", lambda *a, **k: b"k" * 32)
    stack = local.PATTERNS["stream-scoring"](SCORING_FOLLOW_MODELS="true")
    assert "model-publisher" in used and stack.processes
    _, extras = chart_stack("stream-scoring", "scoring.settings.follow_models=true")
    assert "model-publisher" in extras


def test_an_existing_kafka_cluster_replaces_the_demo_broker():
    roles, extras = chart_stack("model-as-data", "kafka.enabled=false", "kafka.bootstrapServers=kafka.data:9092")
    assert "kafka-broker" not in extras and roles["streaming-app"]
