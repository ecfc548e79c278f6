"""The model supervisor in the chart (canary with the project's router) and the Grafana dashboard.

- files/rollout/canary.yaml is byte-identical to patterns/canary/rollout.yaml, and the rendered
  rollout ConfigMap holds it; files/grafana/serving-patterns.json is byte-identical to
  services/supervisor/grafana/serving-patterns.json;
- the supervisor's env points at the release's router Service, the admin-token Secret mounted as a
  file, the rollout ConfigMap and the writable state volume; its pod rolls when the spec changes;
- it is rendered for canary only (and not behind Gateway API / Istio, nor when disabled).
"""

from __future__ import annotations

import json

import pytest
import yaml

from services.stack.paths import REPO_ROOT
from services.supervisor.spec import parse_spec
from tests.chart.helpers import CHART, PATTERNS, by_kind, containers, module_of, named, pod_spec, render

SUPERVISOR = "sp-serving-patterns-supervisor"
ROLLOUT_SOURCE = REPO_ROOT / "patterns" / "canary" / "rollout.yaml"
DASHBOARD_SOURCE = REPO_ROOT / "services" / "supervisor" / "grafana" / "serving-patterns.json"


def supervisor_container(docs) -> tuple[dict, dict]:
    found = [(d, c) for d, c in containers(docs) if module_of(c) == "services.supervisor"]
    assert len(found) == 1, found
    return found[0]


def test_the_chart_carries_the_canary_rollout_spec_unchanged():
    copy = CHART / "files" / "rollout" / "canary.yaml"
    assert copy.read_text() == ROLLOUT_SOURCE.read_text(), (
        f"{copy} differs from patterns/canary/rollout.yaml: copy the pattern's file into the chart")


def test_the_chart_carries_the_grafana_dashboard_unchanged():
    copy = CHART / "files" / "grafana" / "serving-patterns.json"
    assert copy.read_text() == DASHBOARD_SOURCE.read_text(), (
        f"{copy} differs from {DASHBOARD_SOURCE.relative_to(REPO_ROOT)}: copy the dashboard into the chart")


def test_the_supervisor_reaches_the_router_with_its_token_spec_and_state():
    docs = render("canary")
    dep, c = supervisor_container(docs)
    assert dep["metadata"]["name"] == SUPERVISOR and dep["spec"]["replicas"] == 1
    assert dep["spec"]["strategy"] == {"type": "Recreate"}
    env = {v["name"]: v["value"] for v in c["env"]}
    assert env["SUPERVISOR_ROUTER_URL"] == "http://sp-serving-patterns-router.serving.svc.cluster.local:8080"
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in dep["spec"]["template"]["spec"]["volumes"]}

    def volume_of(path: str) -> dict:
        dirs = [p for p in mounts if path.startswith(p + "/")]
        assert len(dirs) == 1, (path, sorted(mounts))
        return mounts[dirs[0]], volumes[mounts[dirs[0]]["name"]]

    mount, vol = volume_of(env["SUPERVISOR_ADMIN_TOKEN_FILE"])
    assert mount["readOnly"] and vol["secret"]["secretName"] == "sp-serving-patterns-router-admin"
    assert env["SUPERVISOR_ADMIN_TOKEN_FILE"].endswith("/token")
    mount, vol = volume_of(env["SUPERVISOR_ROLLOUT_SPEC"])
    assert mount["readOnly"] and vol["configMap"]["name"] == "sp-serving-patterns-rollout"
    mount, vol = volume_of(env["SUPERVISOR_STATE_FILE"])
    assert not mount.get("readOnly") and "emptyDir" in vol
    # The router's Secret is the one the supervisor reads.
    router = named(docs, "Deployment", "sp-serving-patterns-router")
    router_volumes = {v["name"]: v for v in router["spec"]["template"]["spec"]["volumes"]}
    assert router_volumes["admin-token"]["secret"] == volumes["admin-token"]["secret"]
    # The ConfigMap holds the pattern's spec, and the supervisor's own parser accepts it.
    cm = named(docs, "ConfigMap", "sp-serving-patterns-rollout")
    assert cm["data"]["rollout.yaml"] == ROLLOUT_SOURCE.read_text()
    assert parse_spec(cm["data"]["rollout.yaml"], "rendered ConfigMap").candidate == "candidate"
    probes = (c["readinessProbe"]["httpGet"]["path"], c["livenessProbe"]["httpGet"]["path"])
    assert probes == ("/readyz", "/healthz")
    assert named(docs, "Service", SUPERVISOR) and named(docs, "PodDisruptionBudget", SUPERVISOR)


def test_the_supervisor_rolls_when_its_settings_change():
    def checksum(*sets: str) -> str:
        dep, _ = supervisor_container(render("canary", *sets))
        return dep["spec"]["template"]["metadata"]["annotations"]["checksum/config"]

    assert checksum() != checksum("supervisor.settings.interval_s=30")
    assert checksum() == checksum("routing.config.policy.params.weights.stable=90",
                                  "routing.config.policy.params.weights.candidate=10")


@pytest.mark.parametrize("pattern", [p for p in PATTERNS if p != "canary"])
def test_only_the_canary_pattern_runs_the_supervisor(pattern):
    docs = render(pattern)
    assert not [c for _, c in containers(docs) if module_of(c) == "services.supervisor"]
    assert not [d for d in by_kind(docs, "ConfigMap") if d["metadata"]["name"].endswith("-rollout")]


@pytest.mark.parametrize("sets", [("supervisor.enabled=false",), ("routing.provider=gateway-api",),
                                  ("routing.provider=istio",)])
def test_no_supervisor_when_disabled_or_without_the_router(sets):
    docs = render("canary", *sets)
    assert not [c for _, c in containers(docs) if module_of(c) == "services.supervisor"]


def test_the_grafana_dashboard_configmap():
    assert not [d for d in by_kind(render("canary"), "ConfigMap") if "grafana_dashboard" in d["metadata"]["labels"]]
    docs = render("canary", "grafana.dashboard.enabled=true")
    cm = named(docs, "ConfigMap", "sp-serving-patterns-grafana-dashboard")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(cm["data"]["serving-patterns.json"]) == json.loads(DASHBOARD_SOURCE.read_text())
    yaml.safe_dump(cm)  # plain data


def test_router_api_mode_gives_no_pod_a_token_and_renders_no_rbac():
    docs = render("canary")
    dep, c = supervisor_container(docs)
    assert dep["spec"]["template"]["spec"]["automountServiceAccountToken"] is False
    assert not by_kind(docs, "Role") and not by_kind(docs, "RoleBinding")
    assert {v["name"]: v["value"] for v in c["env"]}["SUPERVISOR_ACTUATOR"] == "router-api"


def test_configmap_mode_role_allows_only_writing_the_routing_configmap():
    docs = render("canary", "supervisor.actuator=configmap")
    dep, c = supervisor_container(docs)
    pod = dep["spec"]["template"]["spec"]
    assert (pod["serviceAccountName"], pod["automountServiceAccountToken"]) == (SUPERVISOR, True)
    env = {v["name"]: v["value"] for v in c["env"]}
    assert env["SUPERVISOR_ACTUATOR"] == "configmap"
    assert env["SUPERVISOR_ROUTING_CONFIGMAP"] == "sp-serving-patterns-routing"
    assert env["SUPERVISOR_ROUTING_CONFIGMAP_NAMESPACE"] == "serving"
    routing = named(docs, "ConfigMap", "sp-serving-patterns-routing")
    assert "routing.yaml" in routing["data"]
    # Only the supervisor runs as that ServiceAccount, and only it gets a token.
    for d, _ in containers(docs):
        spec = pod_spec(d)
        if d is not dep:
            assert spec.get("serviceAccountName") != SUPERVISOR and spec.get("automountServiceAccountToken") is False
    (role,) = by_kind(docs, "Role")
    assert role["rules"] == [{"apiGroups": [""], "resources": ["configmaps"],
                              "resourceNames": ["sp-serving-patterns-routing"], "verbs": ["get", "patch", "update"]}]
    (binding,) = by_kind(docs, "RoleBinding")
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                  "name": role["metadata"]["name"]}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": SUPERVISOR, "namespace": "serving"}]
    assert not by_kind(docs, "ClusterRole") and not by_kind(docs, "ClusterRoleBinding")
    assert named(docs, "ServiceAccount", SUPERVISOR)["automountServiceAccountToken"] is False
