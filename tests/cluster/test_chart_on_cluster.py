"""The Helm chart on a real cluster: every pattern installed with helm 4, running, probed and answering.

The session's single-node cluster (fixtures.py) gets the project image, built for real from the
Dockerfile with buildah (skipped when its inputs are unchanged), and a Kafka broker image built
here (services/stack/cluster/kafka_image.py), both imported into the node (`imagePullPolicy: Never`,
tests/cluster/values-cluster.yaml). Then, each in its own namespace enforcing the `restricted`
Pod Security Standard:

* every `patterns/*/values.yaml` is `helm install --wait`ed with helm 4 (server-side apply, strict
  fields); its Deployments are available, its StatefulSet ready, its Jobs complete, every pod
  runs the image and the securityContext the chart rendered, and from inside each container the
  hardening holds (uid/gid 10001, no capabilities, no_new_privs, seccomp, read-only root); each
  Service has ready endpoints that are exactly its ready pods; `helm test` sends a real
  prediction through the pattern's entry point and checks the answer;
* canary: `helm upgrade` from 95/5 to 0/100 rolls only the router (checksum/config) and then
  every user is answered by the candidate (`x-variant`, from a pod through the router Service);
* model-as-service: a model-server pod and an app pod are deleted while a client pod keeps
  asking; both are replaced and every request is answered;
* the Gateway API and Istio CRDs (from their Go modules) are installed into the API server; the
  chart's routes for `routing.provider: gateway-api` and `istio` (shadow, canary; mesh and
  north-south) are accepted by it with strict validation, and broken ones refused; canary with
  Gateway API and shadow with Istio install for real and answer `helm test`.

A failing test gets the pods' events and their containers' last log lines in its report.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from kubernetes import client, config

from services.stack import helm as helm_tool
from services.stack.cluster import Cluster
from tests.cluster import fixtures
from tests.cluster.chart_support import (
    GID,
    UID,
    ClientPod,
    Helm,
    app_body,
    ask,
    build_images,
    crd_files,
    hardened_pod_spec,
    live_pods,
    runtime_view,
    v2_body,
    wait_for,
    workloads,
)

pytestmark = pytest.mark.integration

PATTERNS = helm_tool.PATTERNS
FULL = "serving-patterns"  # resource names are <release>-serving-patterns-<component>
PSS_RESTRICTED = {f"pod-security.kubernetes.io/{mode}": "restricted" for mode in ("enforce", "warn", "audit")}
ROUTE_KINDS = {"gateway-api": {"HTTPRoute"}, "istio": {"VirtualService", "DestinationRule"}}
NORTH_SOUTH = {"gateway-api": ("routing.gatewayApi.parentRefs[0].name=public",
                               "routing.gatewayApi.parentRefs[0].namespace=gateways",
                               "routing.gatewayApi.hostnames[0]=ml.example.internal"),
               "istio": ("routing.istio.gateways[0]=gateways/public", "routing.istio.hosts[0]=ml.example.internal")}


def _log(msg: str) -> None:
    print(msg, flush=True)


# --- fixtures ------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def built_images() -> dict:
    """Both images, built before the cluster starts (each only when its inputs changed)."""
    try:
        return build_images(_log)
    except Exception as e:  # noqa: BLE001 - a failed build is a test failure with the builder's output
        pytest.fail(f"building the images failed: {e}", pytrace=False)


@pytest.fixture(scope="session")
def chart_cluster(built_images: dict, k8s_session) -> Cluster:
    """The session's cluster with both images imported into its node."""
    if k8s_session.stopped:
        pytest.fail("the session's cluster was already torn down", pytrace=False)
    cluster = k8s_session.cluster
    for name, archive in built_images.items():
        cluster.load_image(archive)
        assert name in cluster.images(), f"{name} not in the node after importing {archive}"
    return cluster


@pytest.fixture(scope="module")
def kube(chart_cluster: Cluster) -> client.ApiClient:
    return config.new_client_from_config(config_file=str(chart_cluster.kubeconfig))


@pytest.fixture(scope="module")
def core(kube) -> client.CoreV1Api:
    return client.CoreV1Api(kube)


@pytest.fixture(scope="module")
def apps(kube) -> client.AppsV1Api:
    return client.AppsV1Api(kube)


@pytest.fixture(scope="module")
def helm(chart_cluster: Cluster) -> Helm:
    return Helm(chart_cluster)


def make_namespace(core: client.CoreV1Api, name: str) -> str:
    core.create_namespace({"metadata": {"name": name, "labels": PSS_RESTRICTED}})
    wait_for(f"the default ServiceAccount of {name}", lambda: core.list_namespaced_service_account(name).items, 60)
    return name


@dataclass
class Release:
    name: str
    namespace: str
    pattern: str
    manifests: list[dict]

    def resource(self, component: str) -> str:
        return f"{self.name}-{FULL}-{component}"

    def svc_url(self, component: str, port: int, path: str) -> str:
        return f"http://{self.resource(component)}.{self.namespace}.svc.cluster.local:{port}{path}"


@pytest.fixture
def deploy(helm: Helm, core: client.CoreV1Api) -> Iterator[Callable[..., Release]]:
    """helm 4 `install --wait` of a pattern into a fresh restricted namespace; uninstalled afterwards.

    The namespace goes away without waiting (the next install's pods are scheduled as its pods
    terminate: the node has 2 CPUs and every pattern requests its defaults).
    """
    created: list[tuple[str, str]] = []

    def _deploy(pattern: str, *sets: str, release: str | None = None, set_json: tuple[str, ...] = ()) -> Release:
        name = release or pattern
        namespace = make_namespace(core, f"sp-{name}")
        created.append((name, namespace))
        helm.install(name, namespace, pattern, *sets, set_json=set_json)
        return Release(name, namespace, pattern, helm.manifests(name, namespace))

    yield _deploy
    for name, namespace in created:
        helm.run("uninstall", name, "--namespace", namespace, check=False)
        core.delete_namespace(namespace)


# --- what a release must look like once installed --------------------------------------------------------


def _plain(api: client.ApiClient, obj) -> object:
    return api.sanitize_for_serialization(obj)


def _contains(live: object, rendered: object) -> bool:
    """`live` holds everything `rendered` says (the server may add its defaults, e.g. a probe's scheme)."""
    if isinstance(rendered, dict):
        return isinstance(live, dict) and all(k in live and _contains(live[k], v) for k, v in rendered.items())
    if isinstance(rendered, list):
        return isinstance(live, list) and len(live) == len(rendered) and all(map(_contains, live, rendered))
    return live == rendered


def check_release(cluster: Cluster, kube: client.ApiClient, rel: Release) -> dict[str, list[client.V1Pod]]:
    """Workloads up, pods exactly as rendered and hardened at run time, Services backed by ready pods."""
    core, apps, batch = client.CoreV1Api(kube), client.AppsV1Api(kube), client.BatchV1Api(kube)
    discovery = client.DiscoveryV1Api(kube)
    ns = rel.namespace
    pods_of: dict[str, list[client.V1Pod]] = {}
    found_kinds = Counter()
    for doc in workloads(rel.manifests):
        kind, name = doc["kind"], doc["metadata"]["name"]
        found_kinds[kind] += 1
        template = doc["spec"]["template"]
        if kind == "Deployment":
            dep = apps.read_namespaced_deployment(name, ns)
            want = doc["spec"]["replicas"]
            assert (dep.status.available_replicas, dep.status.updated_replicas) == (want, want), (name, dep.status)
            conditions = {c.type: c.status for c in dep.status.conditions}
            assert conditions.get("Available") == "True", (name, conditions)
            # helm 4 applied it server-side (field manager "helm", operation Apply).
            managers = {(m.manager, m.operation) for m in dep.metadata.managed_fields}
            assert any(op == "Apply" and "helm" in mgr for mgr, op in managers), (name, managers)
            labels = doc["spec"]["selector"]["matchLabels"]
        elif kind == "StatefulSet":
            sts = apps.read_namespaced_stateful_set(name, ns)
            assert sts.status.ready_replicas == doc["spec"]["replicas"], (name, sts.status)
            labels = doc["spec"]["selector"]["matchLabels"]
        else:  # Job
            wait_for(f"Job {name} to complete", lambda n=name: (batch.read_namespaced_job_status(n, ns).status.succeeded
                                                                or 0) >= 1, 180)
            labels = {"batch.kubernetes.io/job-name": name}
        pods = live_pods(core, ns, labels)
        if kind != "Job":
            assert len(pods) == doc["spec"]["replicas"], (name, [p.metadata.name for p in pods])
        assert pods, f"no pods of {kind} {name}"
        pods_of[name] = pods
        rendered_containers = {c["name"]: c for c in template["spec"]["containers"]}
        for pod in pods:
            spec = _plain(kube, pod.spec)
            where = f"{kind} {name} pod {pod.metadata.name}"
            assert spec["securityContext"] == template["spec"]["securityContext"], where
            assert spec.get("automountServiceAccountToken") is False, where
            assert not any(v["name"].startswith("kube-api-access") for v in spec.get("volumes", [])), where
            assert {c["name"] for c in spec["containers"]} == set(rendered_containers), where
            for c in spec["containers"]:
                r = rendered_containers[c["name"]]
                assert c["securityContext"] == r["securityContext"], (where, c["name"])
                assert (c["image"], c["imagePullPolicy"]) == (r["image"], "Never"), (where, c["name"])
                assert c["resources"] == r["resources"], (where, c["name"], c["resources"], r["resources"])
                for probe in ("readinessProbe", "livenessProbe"):
                    assert _contains(c.get(probe), r.get(probe)), (where, c["name"], probe, c.get(probe))
            if kind == "Job":
                assert pod.status.phase == "Succeeded", (where, pod.status.phase)
                continue
            assert pod.status.phase == "Running", (where, pod.status.phase)
            for cs in pod.status.container_statuses:
                # Ready (readiness probe passing) and never restarted (liveness probe passing).
                assert cs.ready and cs.restart_count == 0, (where, cs.name, cs.ready, cs.restart_count)
                view = runtime_view(cluster, ns, pod.metadata.name, cs.name)
                assert view.get("Uid") == f"{UID} {UID} {UID} {UID}", (where, view)
                assert view.get("Gid") == f"{GID} {GID} {GID} {GID}", (where, view)
                assert view.get("CapEff") == "0000000000000000", (where, view)
                assert (view.get("NoNewPrivs"), view.get("Seccomp")) == ("1", "2"), (where, view)
                assert view.get("root") == "read-only" and view.get("tmp") == "writable", (where, view)
    assert found_kinds["Deployment"] + found_kinds["StatefulSet"] > 0, found_kinds
    for svc in (d for d in rel.manifests if d["kind"] == "Service"):
        name = svc["metadata"]["name"]
        selected = live_pods(core, ns, svc["spec"]["selector"])
        want = {p.status.pod_ip for p in selected
                if any(c.type == "Ready" and c.status == "True" for c in p.status.conditions or [])}

        def ready_endpoints(name: str = name) -> set[str]:
            slices = discovery.list_namespaced_endpoint_slice(ns, label_selector=f"kubernetes.io/service-name={name}")
            return {a for s in slices.items for e in (s.endpoints or []) if e.conditions.ready for a in e.addresses}

        assert want, f"Service {name} selects no ready pod"
        wait_for(f"Service {name}'s endpoints to be its ready pods {sorted(want)}",
                 lambda want=want: ready_endpoints() == want, 30)
    return pods_of


def assert_helm_test_passes(helm: Helm, rel: Release) -> str:
    result = helm.test(rel.name, rel.namespace)
    assert result.returncode == 0, f"helm test {rel.name} failed:\n{result.stdout}\n{result.stderr}"
    assert "Phase:          Succeeded" in result.stdout and "\nok: " in result.stdout, result.stdout
    return result.stdout


# GETs a URL from inside the cluster, retried until it answers 200 (kube-proxy may not have programmed a
# new Service yet); prints one JSON line: the status and the decoded body.
GET_CLIENT = r"""
import json, sys, time, urllib.request
url, deadline, last = sys.argv[1], time.time() + 60, None
while time.time() < deadline:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            print(json.dumps({"status": resp.status, "body": json.loads(resp.read())}), flush=True)
            sys.exit(0)
    except Exception as e:
        last = f"{type(e).__name__}: {e}"
    time.sleep(0.5)
print(json.dumps({"status": 0, "error": last}), flush=True)
sys.exit(2)
"""


def get_json(core: client.CoreV1Api, namespace: str, url: str) -> dict:
    """GET `url` from a client pod in `namespace` (the way every test reaches Services)."""
    name = f"get-{int(time.time() * 1000) % 10**8}"
    core.create_namespaced_pod(namespace, hardened_pod_spec(name, ["python3", "-c", GET_CLIENT, url]))
    phase = wait_for(f"client pod {name} to finish", lambda: (
        p := core.read_namespaced_pod(name, namespace).status.phase) in ("Succeeded", "Failed") and p, 120)
    logs = core.read_namespaced_pod_log(name, namespace, container="client")
    lines = [json.loads(ln) for ln in (logs or "").splitlines() if ln.startswith("{")]
    assert phase == "Succeeded" and lines, f"GET {url} from {name}: {phase} {logs}"
    core.delete_namespaced_pod(name, namespace, grace_period_seconds=0)
    return lines[-1]


# --- every pattern -------------------------------------------------------------------------------------


@pytest.mark.parametrize("pattern", PATTERNS)
def test_pattern_installs_runs_and_answers(pattern: str, deploy, helm: Helm, chart_cluster: Cluster, kube,
                                          core) -> None:
    rel = deploy(pattern)
    kinds = Counter(d["kind"] for d in rel.manifests)
    pods_of = check_release(chart_cluster, kube, rel)
    if pattern in ("model-as-data", "stream-scoring"):
        # Kafka inside the release: the demo broker's StatefulSet runs (read-only, uid 10001).
        assert kinds["StatefulSet"] == 1 and pods_of[rel.resource("kafka")], kinds
    if pattern == "model-as-data":
        assert kinds["Job"] == 1  # the publisher, whose model message made the apps ready
    if pattern in ("shadow", "canary", "ab-test", "bandit"):
        assert pods_of[rel.resource("router")]
        assert len([n for n in pods_of if "-model-server-" in n]) >= 2, sorted(pods_of)
    if pattern == "canary":
        # The model supervisor is Ready (check_release: its Deployment available, the pod Ready on
        # /readyz, hardened) and its /status answers through its Service from a pod: it reads the
        # rollout spec from the ConfigMap and knows the router's in-cluster URL.
        assert pods_of[rel.resource("supervisor")]
        got = get_json(core, rel.namespace, rel.svc_url("supervisor", 8090, "/status"))
        assert got["status"] == 200, got
        status = got["body"]
        assert (status["rollout"], status["stable"], status["candidate"]) == (
            "breast-cancer-v2", "stable", "candidate"), status
        assert status["router"] == rel.svc_url("router", 8080, ""), status
    out = assert_helm_test_passes(helm, rel)
    print(out)


# --- helm upgrade rolls the router, and the new routing answers ---------------------------------------------

UPGRADE_TO_CANDIDATE = ('routing.config={"policy": {"params": {"weights": {"stable": 0, "candidate": 100}}}}',)
# The supervisor is disabled for this release (install and upgrade alike: helm upgrade without
# --reuse-values would bring it back): it writes the canary weights through PUT /admin/routing and
# would move them away from the 95/5 and 0/100 this test sets through helm. Its own install is
# checked in test_pattern_installs_runs_and_answers[canary].
NO_SUPERVISOR = "supervisor.enabled=false"


def test_canary_upgrade_rolls_the_router_and_the_new_weights_answer(deploy, helm: Helm, core, apps,
                                                                   kube) -> None:
    rel = deploy("canary", NO_SUPERVISOR, release="canary-upgrade")
    assert not [d for d in rel.manifests if "supervisor" in d["metadata"]["name"]]
    ns = rel.namespace
    router = rel.resource("router")
    url = rel.svc_url("router", 8080, "/v2/models/breast-cancer/infer")
    users = [f"user-{i}" for i in range(40)]
    body = v2_body()

    before = ask(core, ns, url, body, users)
    assert [a["status"] for a in before] == [200] * len(users), [a for a in before if a["status"] != 200]
    variants = Counter(a["variant"] for a in before)
    # 95/5, sticky per user: most users on stable (and only known variants answer).
    assert set(variants) <= {"stable", "candidate"} and variants["stable"] > variants["candidate"], variants

    def template_state() -> dict[str, tuple[str, set[str]]]:
        out = {}
        for dep in apps.list_namespaced_deployment(ns).items:
            pods = {p.metadata.name for p in live_pods(core, ns, dep.spec.selector.match_labels)}
            out[dep.metadata.name] = (dep.spec.template.metadata.annotations["checksum/config"], pods)
        return out

    old = template_state()
    helm.upgrade(rel.name, ns, "canary", NO_SUPERVISOR, set_json=UPGRADE_TO_CANDIDATE)
    cm = core.read_namespaced_config_map(rel.resource("routing"), ns)
    weights = yaml.safe_load(cm.data["routing.yaml"])["policy"]["params"]["weights"]
    assert weights == {"stable": 0, "candidate": 100}, weights

    def rolled() -> dict | None:
        state = template_state()
        pods = core.list_namespaced_pod(ns, label_selector="app.kubernetes.io/component=router").items
        ready = [p for p in pods if p.metadata.deletion_timestamp is None
                 and all(cs.ready for cs in p.status.container_statuses or [])]
        # Only the new router pod is left (the old one drained and went away).
        return state if len(pods) == 1 and len(ready) == 1 and ready[0].metadata.name not in old[router][1] else None

    new = wait_for("the router to roll", rolled, 120)
    assert new[router][0] != old[router][0], "checksum/config of the router did not change"
    for name in old:
        if name != router:  # the model servers' config did not change: they do not roll
            assert new[name] == old[name], (name, old[name], new[name])
    deployment = apps.read_namespaced_deployment(router, ns)
    assert deployment.metadata.generation == 2 and deployment.status.observed_generation == 2

    after = ask(core, ns, url, body, users)
    assert [a["status"] for a in after] == [200] * len(users), [a for a in after if a["status"] != 200]
    assert Counter(a["variant"] for a in after) == {"candidate": len(users)}, after
    assert {str(a["version"]) for a in after} == {"2"}, after
    assert_helm_test_passes(helm, rel)


# --- a killed pod is replaced, the pattern keeps answering ------------------------------------------------


def test_killed_pods_are_replaced_and_the_pattern_keeps_answering(deploy, core, apps) -> None:
    rel = deploy("model-as-service")
    ns = rel.namespace
    servers, apps_dep = rel.resource("model-server"), rel.resource("app")
    url = rel.svc_url("app", 8080, "/predict")
    # About 30 s of requests through the app's Service, while pods are killed behind it.
    pod = ClientPod(core, ns).start(url, app_body(), ["steady-user"], rounds=100, pause=0.2)
    pod.wait_answers(5)

    victims = {}
    for dep_name in (servers, apps_dep):
        dep = apps.read_namespaced_deployment(dep_name, ns)
        victim = live_pods(core, ns, dep.spec.selector.match_labels)[0].metadata.name
        victims[dep_name] = victim
    killed_at = time.time()
    for victim in victims.values():
        core.delete_namespaced_pod(victim, ns)

    def replaced(dep_name: str) -> bool:
        dep = apps.read_namespaced_deployment(dep_name, ns)
        pods = core.list_namespaced_pod(ns, label_selector=",".join(
            f"{k}={v}" for k, v in dep.spec.selector.match_labels.items())).items
        ready = [p.metadata.name for p in pods if p.metadata.deletion_timestamp is None
                 and all(cs.ready for cs in p.status.container_statuses or [])]
        return len(pods) == 2 and len(ready) == 2 and victims[dep_name] not in ready

    for dep_name in victims:
        wait_for(f"{dep_name} to replace {victims[dep_name]}", lambda d=dep_name: replaced(d), 120)
    replaced_at = time.time()
    answers = pod.answers()
    failed = [a for a in answers if a["status"] != 200]
    assert not failed, f"{len(failed)} of {len(answers)} requests failed while pods were killed: {failed[:5]}"
    assert len(answers) == 100
    # Requests were answered throughout: before the kill, while the pods were replaced, and after.
    assert any(a["t"] < killed_at for a in answers)
    assert any(killed_at < a["t"] < replaced_at for a in answers)
    assert any(a["t"] > replaced_at for a in answers)
    for dep_name in victims:
        assert apps.read_namespaced_deployment(dep_name, ns).status.available_replicas == 2


# --- mesh routing: the CRDs in the API server, the chart's routes accepted -------------------------------------


@pytest.fixture(scope="module")
def mesh_crds(chart_cluster: Cluster) -> list[str]:
    """The Gateway API (standard channel) and Istio CRDs, from their Go modules, applied and Established."""
    for path in crd_files():
        chart_cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(path), timeout=120)
    names = ["httproutes.gateway.networking.k8s.io", "gateways.gateway.networking.k8s.io",
             "virtualservices.networking.istio.io", "destinationrules.networking.istio.io"]
    chart_cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s",
                          *(f"crd/{n}" for n in names), timeout=90)
    return names


@pytest.fixture(scope="module")
def mesh_namespace(mesh_crds, core: client.CoreV1Api) -> Iterator[str]:
    ns = make_namespace(core, "sp-mesh-dry-run")
    yield ns
    core.delete_namespace(ns)


def server_dry_run(cluster: Cluster, namespace: str, manifest: str) -> tuple[int, str]:
    proc = cluster.kubectl("apply", "--dry-run=server", "--validate=strict", "-n", namespace, "-f", "-",
                           input=manifest, check=False, timeout=120)
    return proc.returncode, proc.stdout + proc.stderr


MESH_CASES = [(p, prov, ns) for p in ("shadow", "canary") for prov in ("gateway-api", "istio")
              for ns in (False, True)]


@pytest.mark.parametrize("case", MESH_CASES, ids=lambda c: f"{c[0]}-{c[1]}-{'north-south' if c[2] else 'mesh'}")
def test_mesh_routes_are_accepted_by_the_api_server(case, helm: Helm, chart_cluster: Cluster,
                                                     mesh_namespace: str) -> None:
    pattern, provider, north_south = case
    sets = (f"routing.provider={provider}", *(NORTH_SOUTH[provider] if north_south else ()))
    manifest = helm.template("sp", mesh_namespace, pattern, *sets)
    docs = [d for d in yaml.safe_load_all(manifest) if d]
    kinds = {d["kind"] for d in docs}
    other = set().union(*ROUTE_KINDS.values()) - ROUTE_KINDS[provider]
    assert ROUTE_KINDS[provider] <= kinds and "Deployment" in kinds and not kinds & other, kinds
    rc, out = server_dry_run(chart_cluster, mesh_namespace, manifest)
    assert rc == 0, out
    for doc in docs:  # every object of the release, routes included, accepted by the server
        assert f"{doc['kind'].lower()}." in out or f"{doc['kind'].lower()}/" in out, (doc["kind"], out)
    for kind in ROUTE_KINDS[provider]:
        assert any(line.startswith(f"{kind.lower()}.") and line.endswith("created (server dry run)")
                   for line in out.splitlines()), out


def _broken(docs: list[dict], kind: str, mutate: Callable[[dict], None]) -> str:
    doc = json.loads(json.dumps(next(d for d in docs if d["kind"] == kind)))
    mutate(doc)
    return yaml.safe_dump(doc)


def test_the_api_server_refuses_broken_routes(helm: Helm, chart_cluster: Cluster, mesh_namespace: str) -> None:
    """The CRDs' schemas are enforced by the server (so the acceptance above means something)."""
    gw = [d for d in yaml.safe_load_all(helm.template("sp", mesh_namespace, "shadow", "routing.provider=gateway-api"))
          if d]
    istio = [d for d in yaml.safe_load_all(helm.template("sp", mesh_namespace, "canary", "routing.provider=istio"))
             if d]
    cases = {
        "mirror percent 150": (_broken(gw, "HTTPRoute", lambda d: d["spec"]["rules"][-1]["filters"][0]["requestMirror"]
                                       .__setitem__("percent", 150)), "percent"),
        "unknown HTTPRoute field": (_broken(gw, "HTTPRoute", lambda d: d["spec"]["rules"][-1]
                                            .__setitem__("mirrorPercent", 5)), "mirrorPercent"),
        "weight as text": (_broken(istio, "VirtualService", lambda d: d["spec"]["http"][-1]["route"][0]
                                   .__setitem__("weight", "five")), "weight"),
        "unknown DestinationRule field": (_broken(istio, "DestinationRule", lambda d: d["spec"]
                                                  .__setitem__("subset", "stable")), "subset"),
    }
    for what, (manifest, field_name) in cases.items():
        rc, out = server_dry_run(chart_cluster, mesh_namespace, manifest)
        assert rc != 0 and field_name in out, f"{what}: the server accepted it:\n{out}"


@pytest.mark.parametrize("pattern,provider", [("canary", "gateway-api"), ("shadow", "istio")])
def test_mesh_release_installs_and_answers(pattern: str, provider: str, mesh_crds, deploy, helm: Helm,
                                           chart_cluster: Cluster, kube) -> None:
    rel = deploy(pattern, f"routing.provider={provider}", release=f"{pattern}-{provider}")
    kinds = Counter(d["kind"] for d in rel.manifests)
    assert all(kinds[k] == 1 for k in ROUTE_KINDS[provider]) and "ConfigMap" not in kinds, kinds
    pods_of = check_release(chart_cluster, kube, rel)
    assert rel.resource("router") not in pods_of  # the mesh routes, not the project's router
    custom = client.CustomObjectsApi(kube)
    group, version = ("gateway.networking.k8s.io", "v1") if provider == "gateway-api" else ("networking.istio.io", "v1")
    for kind in ROUTE_KINDS[provider]:
        obj = custom.get_namespaced_custom_object(group, version, rel.namespace, f"{kind.lower()}s",
                                                  rel.resource("model"))
        assert obj["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "Helm", obj["metadata"]
    # Without a mesh the front Service spreads over the variants; the answer is checked against whichever answered.
    assert_helm_test_passes(helm, rel)


def test_offline_crd_schemas_are_the_ones_the_server_enforces(mesh_crds, chart_cluster: Cluster) -> None:
    """tests/chart validates routes offline against tests/chart/crds: the same schemas the server now holds."""
    vendored = Path(__file__).parents[1] / "chart" / "crds"
    for crd_name, kind in (("httproutes.gateway.networking.k8s.io", "httproute"),
                           ("virtualservices.networking.istio.io", "virtualservice"),
                           ("destinationrules.networking.istio.io", "destinationrule")):
        crd = json.loads(chart_cluster.kubectl("get", "crd", crd_name, "-o", "json").stdout)
        group = crd["spec"]["group"]
        served = {v["name"]: v["schema"]["openAPIV3Schema"] for v in crd["spec"]["versions"]}
        offline = json.loads((vendored / f"{kind}-{group}-v1.json").read_text())["openAPIV3Schema"]
        assert served["v1"] == offline, f"tests/chart/crds/{kind}-{group}-v1.json differs from the {crd_name} CRD"


# --- a failing test can be read without rerunning it ------------------------------------------------------

MARKER = "sp-diagnostics-marker: the model file is missing"


def test_a_failed_cluster_test_reports_events_and_log_tails(k8s_session, core: client.CoreV1Api) -> None:
    """The report hook (fixtures.py) adds each pod's events and its containers' last log lines to a failure."""
    ns = make_namespace(core, "sp-diagnostics")
    pod = "crashing-service"
    core.create_namespaced_pod(ns, hardened_pod_spec(pod, ["python3", "-c", f"print({MARKER!r}); raise SystemExit(3)"]))
    wait_for("the crashing pod to fail", lambda: core.read_namespaced_pod(pod, ns).status.phase == "Failed", 60)
    # What pytest does for a failed test that used the cluster, driven by hand.
    report = SimpleNamespace(failed=True, sections=[])
    item = SimpleNamespace(nodeid="tests/cluster/example.py::test_that_failed", fixturenames=["k8s_session"],
                           config=SimpleNamespace(_k8s_session=k8s_session))
    hook = fixtures.pytest_runtest_makereport(item, None)
    next(hook)
    try:
        hook.send(report)
    except StopIteration as done:
        assert done.value is report
    try:
        assert len(report.sections) == 1, report.sections
        title, text = report.sections[0]
        assert "cluster diagnostics" in title
        assert f"--- pod {ns}/{pod}: Failed" in text, text[-3000:]
        assert f"event Normal Scheduled: Successfully assigned {ns}/{pod}" in text, text[-3000:]
        assert "container client: ready=False restarts=0" in text and '"exitCode": 3' in text, text[-3000:]
        assert f"    | {MARKER}" in text, text[-3000:]
        assert "--- kubelet log (last lines)" in text  # and the daemons' log tails
    finally:
        k8s_session.failures.remove(item.nodeid)
        k8s_session.reported.remove(item.nodeid)
        core.delete_namespace(ns)
