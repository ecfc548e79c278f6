"""Policy checks on every rendered manifest: probes, resources, hardened security contexts, pinned images.

Probes are required on every long-running container; the `helm test` pod and the model publisher
Job run to completion and are excepted (a probe would only restart them).
"""

from __future__ import annotations

import copy
import re

import pytest

from tests.chart.helpers import (
    all_renders,
    by_kind,
    containers,
    is_test_pod,
    pod_spec,
    render,
    render_error,
    render_id,
)

RUN_AS = 10001
CASES = all_renders()


def _long_running(doc) -> bool:
    return doc["kind"] in ("Deployment", "StatefulSet")


def policy_problems(docs) -> list[str]:
    problems = []
    for doc, c in containers(docs):
        where = f"{doc['kind']}/{doc['metadata']['name']} container {c['name']}"
        if _long_running(doc):
            for probe in ("readinessProbe", "livenessProbe"):
                if probe not in c:
                    problems.append(f"{where}: no {probe}")
        elif not (is_test_pod(doc) or doc["kind"] == "Job"):
            problems.append(f"{where}: a {doc['kind']} that is neither a workload, a Job nor a helm test pod")
        res = c.get("resources", {})
        for part in ("requests", "limits"):
            for r in ("cpu", "memory"):
                if r not in res.get(part, {}):
                    problems.append(f"{where}: no resources.{part}.{r}")
        sc = c.get("securityContext", {})
        wanted = {"runAsNonRoot": True, "readOnlyRootFilesystem": True, "allowPrivilegeEscalation": False,
                  "runAsUser": RUN_AS}
        for key, value in wanted.items():
            if sc.get(key) != value:
                problems.append(f"{where}: securityContext.{key} is {sc.get(key)!r}, want {value!r}")
        if sc.get("capabilities", {}).get("drop") != ["ALL"]:
            problems.append(f"{where}: capabilities do not drop ALL")
        if sc.get("capabilities", {}).get("add"):
            problems.append(f"{where}: adds capabilities")
        if sc.get("privileged"):
            problems.append(f"{where}: privileged")
        if sc.get("seccompProfile", {}).get("type") != "RuntimeDefault":
            problems.append(f"{where}: seccompProfile is not RuntimeDefault")
        image = c.get("image", "")
        name, _, tag = image.rpartition(":")
        if not name or "/" in tag or not tag:
            problems.append(f"{where}: image {image!r} has no tag")
        elif tag == "latest":
            problems.append(f"{where}: image {image!r} uses :latest")
        if c.get("imagePullPolicy") not in ("IfNotPresent", "Always", "Never"):
            problems.append(f"{where}: imagePullPolicy {c.get('imagePullPolicy')!r}")
        mounts = {m["mountPath"] for m in c.get("volumeMounts", [])}
        if "/tmp" not in mounts:
            problems.append(f"{where}: no writable /tmp volume (the root file system is read-only)")
    for doc in docs:
        spec = pod_spec(doc)
        if spec is None:
            continue
        psc = spec.get("securityContext", {})
        if not (psc.get("runAsNonRoot") and psc.get("runAsUser") == RUN_AS
                and psc.get("seccompProfile", {}).get("type") == "RuntimeDefault"):
            problems.append(f"{doc['kind']}/{doc['metadata']['name']}: pod securityContext {psc}")
        if spec.get("automountServiceAccountToken") is not False:
            problems.append(f"{doc['kind']}/{doc['metadata']['name']}: mounts a ServiceAccount token")
        for v in spec.get("volumes", []):
            if "hostPath" in v:
                problems.append(f"{doc['kind']}/{doc['metadata']['name']}: hostPath volume {v['name']}")
    return problems


@pytest.mark.parametrize("case", CASES, ids=render_id)
def test_every_container_is_hardened_and_sized(case):
    problems = policy_problems(render(case[0], *case[1]))
    assert not problems, "\n".join(problems)


def test_the_policy_check_finds_what_it_looks_for():
    docs = copy.deepcopy(render("canary"))
    deployment = by_kind(docs, "Deployment")[0]
    c = deployment["spec"]["template"]["spec"]["containers"][0]
    del c["livenessProbe"]
    del c["resources"]["limits"]["memory"]
    c["securityContext"]["readOnlyRootFilesystem"] = False
    c["image"] = "serving-patterns:latest"
    deployment["spec"]["template"]["spec"]["containers"].append({**c, "name": "bare", "image": "busybox"})
    problems = "\n".join(policy_problems(docs))
    for expected in ("no livenessProbe", "no resources.limits.memory", "readOnlyRootFilesystem is False",
                     "uses :latest", "image 'busybox' has no tag"):
        assert expected in problems, problems


@pytest.mark.parametrize("case", CASES, ids=render_id)
def test_every_workload_has_a_service_a_budget_and_a_config_checksum(case):
    docs = render(case[0], *case[1])
    pdbs = by_kind(docs, "PodDisruptionBudget")
    services = by_kind(docs, "Service")
    for w in by_kind(docs, "Deployment") + by_kind(docs, "StatefulSet"):
        name = w["metadata"]["name"]
        labels = w["spec"]["template"]["metadata"]["labels"]
        selector = w["spec"]["selector"]["matchLabels"]
        assert selector.items() <= labels.items(), name
        for key in ("app.kubernetes.io/name", "app.kubernetes.io/instance", "app.kubernetes.io/component",
                    "app.kubernetes.io/version", "app.kubernetes.io/managed-by", "helm.sh/chart"):
            assert key in labels, f"{name}: pod label {key} missing"
        assert re.fullmatch(r"[0-9a-f]{64}", w["spec"]["template"]["metadata"]["annotations"]["checksum/config"])
        assert any(p["spec"]["selector"]["matchLabels"] == selector for p in pdbs), f"{name}: no PodDisruptionBudget"
        assert any(s["spec"].get("selector") and s["spec"]["selector"].items() <= labels.items() for s in services), \
            f"{name}: no Service selects it"
        ports = {p["name"] for c in w["spec"]["template"]["spec"]["containers"] for p in c.get("ports", [])}
        for s in services:
            if s["spec"].get("selector") and s["spec"]["selector"].items() <= labels.items():
                for p in s["spec"]["ports"]:
                    assert p["targetPort"] in ports, f"Service {s['metadata']['name']} targets {p['targetPort']}"
    for s in services:
        selector = s["spec"]["selector"]
        assert any(selector.items() <= w["spec"]["template"]["metadata"]["labels"].items()
                   for w in by_kind(docs, "Deployment") + by_kind(docs, "StatefulSet")), \
            f"Service {s['metadata']['name']} selects no pods"


def test_selectors_of_workloads_do_not_overlap():
    docs = render("canary")
    selectors = [d["spec"]["selector"]["matchLabels"] for d in by_kind(docs, "Deployment")]
    for i, a in enumerate(selectors):
        for b in selectors[i + 1:]:
            assert not (a.items() <= b.items() or b.items() <= a.items()), (a, b)


def test_readiness_probes_use_each_service_s_ready_endpoint():
    wanted = {"services.apps.embedded": "/readyz", "services.apps.remote": "/readyz",
              "services.apps.streaming": "/readyz", "services.model_server": "/v2/health/ready",
              "services.router": "/v2/health/ready",
              "services.kafka.scoring": "/readyz", "services.supervisor": "/readyz"}
    seen = set()
    for pattern, sets in CASES:
        for doc, c in containers(render(pattern, *sets)):
            cmd = c.get("command", [])
            if doc["kind"] == "Deployment":
                module = cmd[2]
                assert c["readinessProbe"]["httpGet"]["path"] == wanted[module], (doc["metadata"]["name"], module)
                seen.add(module)
    assert seen == set(wanted)


def test_pods_roll_when_the_routing_config_changes():
    def checksum(*sets):
        docs = render("canary", *sets)
        router = next(d for d in by_kind(docs, "Deployment") if d["metadata"]["name"].endswith("-router"))
        return router["spec"]["template"]["metadata"]["annotations"]["checksum/config"]

    assert checksum() != checksum("routing.config.policy.params.weights.stable=80",
                                  "routing.config.policy.params.weights.candidate=20")
    assert checksum() == checksum()


@pytest.mark.parametrize("tag", ["latest"])
def test_a_latest_image_tag_is_refused(tag):
    err = render_error("embedded", f"image.tag={tag}")
    assert "image/tag" in err or "image.tag" in err, err


def test_image_pull_policy_is_configurable_and_defaults_to_if_not_present():
    default = {c["imagePullPolicy"] for _, c in containers(render("model-as-data"))}
    assert default == {"IfNotPresent"}
    never = {c["imagePullPolicy"] for _, c in containers(render("model-as-data", "image.pullPolicy=Never",
                                                                  "kafka.image.pullPolicy=Never"))}
    assert never == {"Never"}
