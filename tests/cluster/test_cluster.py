"""A real single-node cluster: node, hardened Deployment, Service via CoreDNS, self-healing, clean teardown.

Objects are created and checked with the `kubernetes` Python client against the cluster that
`services.stack.cluster` starts (the session fixture in fixtures.py).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from kubernetes import client, config

from services.stack.cluster import Cluster, ClusterError, host, layout
from services.stack.cluster.cluster import OWNER_FILE, dns_lookup, dns_query
from services.stack.cluster.versions import BASE_IMAGE, K8S_VERSION

pytestmark = pytest.mark.integration

NS = "sp-tests"
APP = "echo"
UID = 10001

# A tiny HTTP server that reports what the container sees of its own hardening.
SERVER = r"""
import http.server, json, os, socket

def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return line.split()[1]

def root_writable():
    try:
        open("/probe", "w").close()
        return True
    except OSError:
        return False

class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps({
            "pod": socket.gethostname(), "uid": os.getuid(), "gid": os.getgid(),
            "cap_eff": status("CapEff"), "no_new_privs": status("NoNewPrivs"), "seccomp": status("Seccomp"),
            "root_writable": root_writable(), "path": self.path,
        }).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass

http.server.ThreadingHTTPServer(("", 8080), Handler).serve_forever()
"""

# The client: GET each URL `rounds` times, one JSON line per answer; exits non-zero on any error.
CLIENT = r"""
import json, sys, time, urllib.request
rounds, pause, urls = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3:]
for _ in range(rounds):
    for url in urls:
        with urllib.request.urlopen(url, timeout=5) as resp:
            print(json.dumps({"url": url, "status": resp.status, "body": json.loads(resp.read())}), flush=True)
    time.sleep(pause)
"""

HARDENED_POD = {
    "runAsNonRoot": True,
    "runAsUser": UID,
    "runAsGroup": UID,
    "fsGroup": UID,
    "seccompProfile": {"type": "RuntimeDefault"},
}
HARDENED_CONTAINER = {
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "capabilities": {"drop": ["ALL"]},
    "runAsNonRoot": True,
    "runAsUser": UID,
}
LIMITS = {"requests": {"cpu": "50m", "memory": "32Mi"}, "limits": {"cpu": "200m", "memory": "64Mi"}}


def wait_for(what: str, check: Callable[[], object], timeout: float = 90, interval: float = 0.5):
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})")


@pytest.fixture(scope="module")
def api(k8s_session) -> client.ApiClient:
    return config.new_client_from_config(config_file=str(k8s_session.cluster.kubeconfig))


@pytest.fixture(scope="module")
def core(api) -> client.CoreV1Api:
    return client.CoreV1Api(api)


@pytest.fixture(scope="module")
def apps(api) -> client.AppsV1Api:
    return client.AppsV1Api(api)


@pytest.fixture(scope="module")
def namespace(k8s_session, core: client.CoreV1Api) -> Iterator[str]:
    """A namespace that enforces the `restricted` Pod Security Standard: only hardened pods get in."""
    labels = {f"pod-security.kubernetes.io/{m}": "restricted" for m in ("enforce", "warn", "audit")}
    core.create_namespace({"metadata": {"name": NS, "labels": labels}})
    wait_for("the default ServiceAccount", lambda: core.list_namespaced_service_account(NS).items, 30)
    yield NS


@pytest.fixture(scope="module")
def echo(namespace: str, apps: client.AppsV1Api, core: client.CoreV1Api) -> str:
    """The hardened echo Deployment (2 replicas) and its ClusterIP Service, Ready."""
    labels = {"app": APP}
    apps.create_namespaced_deployment(namespace, {
        "metadata": {"name": APP, "labels": labels},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "automountServiceAccountToken": False,
                    "enableServiceLinks": False,
                    "terminationGracePeriodSeconds": 2,
                    "securityContext": HARDENED_POD,
                    "containers": [{
                        "name": "server",
                        "image": BASE_IMAGE,
                        "imagePullPolicy": "Never",
                        "command": ["python3", "-c", SERVER],
                        "ports": [{"name": "http", "containerPort": 8080}],
                        "securityContext": HARDENED_CONTAINER,
                        "resources": LIMITS,
                        "readinessProbe": {"httpGet": {"path": "/ready", "port": "http"}, "periodSeconds": 1},
                    }],
                },
            },
        },
    })
    core.create_namespaced_service(namespace, {
        "metadata": {"name": APP, "labels": labels},
        "spec": {"type": "ClusterIP", "selector": labels,
                 "ports": [{"name": "http", "port": 80, "targetPort": "http"}]},
    })
    wait_for("the echo Deployment to be available",
             lambda: (apps.read_namespaced_deployment_status(APP, namespace).status.available_replicas or 0) == 2)
    return APP


def run_client(core: client.CoreV1Api, namespace: str, urls: list[str], rounds: int = 1, pause: float = 0.0,
               timeout: float = 90) -> list[dict]:
    """Run the client in its own (hardened) pod; returns its answers. Fails on any error."""
    name = f"client-{uuid.uuid4().hex[:6]}"
    core.create_namespaced_pod(namespace, {
        "metadata": {"name": name, "labels": {"app": "client"}},
        "spec": {
            "restartPolicy": "Never",
            "automountServiceAccountToken": False,
            "enableServiceLinks": False,
            "securityContext": HARDENED_POD,
            "containers": [{
                "name": "client",
                "image": BASE_IMAGE,
                "imagePullPolicy": "Never",
                "command": ["python3", "-c", CLIENT, str(rounds), str(pause), *urls],
                "securityContext": HARDENED_CONTAINER,
                "resources": LIMITS,
            }],
        },
    })
    phase = wait_for(f"client pod {name} to finish",
                     lambda: core.read_namespaced_pod(name, namespace).status.phase in ("Succeeded", "Failed")
                     and core.read_namespaced_pod(name, namespace).status.phase, timeout)
    logs = core.read_namespaced_pod_log(name, namespace, container="client")
    assert phase == "Succeeded", f"client pod {name} {phase}:\n{logs}"
    core.delete_namespaced_pod(name, namespace, grace_period_seconds=0)
    return [json.loads(line) for line in logs.splitlines() if line.startswith("{")]


def test_node_is_ready(k8s_cluster: Cluster, core: client.CoreV1Api, api: client.ApiClient) -> None:
    node = core.read_node(k8s_cluster.node_name)
    ready = {c.type: c.status for c in node.status.conditions}
    assert ready["Ready"] == "True", ready
    assert node.status.node_info.kubelet_version == K8S_VERSION
    assert node.status.node_info.container_runtime_version.startswith("containerd://")
    assert [a.address for a in node.status.addresses if a.type == "InternalIP"] == [host.NODE_IP]
    assert client.VersionApi(api).get_code().git_version == K8S_VERSION
    # The base image was imported into the node (nothing is ever pulled).
    assert any(BASE_IMAGE in (img.names or []) for img in node.status.images), node.status.images
    # CoreDNS runs and the host resolves a cluster name through it, on the cluster's own address.
    assert dns_query(host.DNS_SERVICE_IP, "kubernetes.default.svc.cluster.local") == [host.KUBERNETES_SERVICE_IP]


def test_hardened_deployment_becomes_ready(echo: str, namespace: str, core: client.CoreV1Api,
                                           apps: client.AppsV1Api) -> None:
    dep = apps.read_namespaced_deployment(echo, namespace)
    assert dep.status.ready_replicas == 2
    pods = core.list_namespaced_pod(namespace, label_selector=f"app={echo}").items
    assert len(pods) == 2
    for pod in pods:
        assert pod.status.phase == "Running"
        assert pod.status.pod_ip.startswith("10.244.0.")
        c = pod.spec.containers[0]
        assert c.image_pull_policy == "Never"
        assert c.security_context.read_only_root_filesystem is True
        assert c.security_context.allow_privilege_escalation is False
        assert c.security_context.capabilities.drop == ["ALL"]
        assert pod.spec.security_context.run_as_user == UID
        assert pod.spec.security_context.seccomp_profile.type == "RuntimeDefault"
        assert c.resources.limits == {"cpu": "200m", "memory": "64Mi"}
        assert pod.status.qos_class == "Burstable"
    # The restricted namespace refuses a pod that is not hardened (the server's verdict).
    with pytest.raises(client.ApiException) as refused:
        core.create_namespaced_pod(namespace, {
            "metadata": {"name": "not-hardened"},
            "spec": {"containers": [{"name": "c", "image": BASE_IMAGE, "imagePullPolicy": "Never"}]},
        })
    assert refused.value.status == 403 and "restricted" in refused.value.body


def test_service_answers_by_dns_name_from_another_pod(echo: str, namespace: str, core: client.CoreV1Api) -> None:
    svc = core.read_namespaced_service(echo, namespace)
    assert svc.spec.type == "ClusterIP" and svc.spec.cluster_ip.startswith("10.96.0.")
    urls = [f"http://{echo}.{namespace}.svc.cluster.local/fqdn", f"http://{echo}/short"]
    answers = run_client(core, namespace, urls, rounds=3)
    assert len(answers) == 6 and all(a["status"] == 200 for a in answers)
    pods = {p.metadata.name for p in core.list_namespaced_pod(namespace, label_selector=f"app={echo}").items}
    for a in answers:
        body = a["body"]
        assert body["pod"] in pods
        # What the container itself sees: the securityContext is honoured by runc.
        assert (body["uid"], body["gid"]) == (UID, UID)
        assert body["cap_eff"] == "0000000000000000"
        assert body["no_new_privs"] == "1"
        assert body["seccomp"] == "2"  # filter mode: RuntimeDefault
        assert body["root_writable"] is False


def test_deleted_pod_is_replaced_and_service_keeps_answering(echo: str, namespace: str, core: client.CoreV1Api,
                                                             apps: client.AppsV1Api) -> None:
    before = sorted(p.metadata.name for p in core.list_namespaced_pod(namespace, label_selector=f"app={echo}").items)
    victim = before[0]
    core.delete_namespaced_pod(victim, namespace)
    # The Service answers throughout (the other replica serves while the victim goes away).
    answers = run_client(core, namespace, [f"http://{echo}.{namespace}.svc.cluster.local/"], rounds=10, pause=0.3)
    assert len(answers) == 10 and all(a["status"] == 200 for a in answers)

    def replaced() -> list[str] | None:
        pods = core.list_namespaced_pod(namespace, label_selector=f"app={echo}").items
        ready = [p.metadata.name for p in pods if p.metadata.deletion_timestamp is None and p.status.phase == "Running"
                 and all(cs.ready for cs in (p.status.container_statuses or []))]
        return ready if len(ready) == 2 and victim not in ready else None

    now = wait_for("a replacement pod", replaced, 60)
    assert set(now) != set(before)
    assert apps.read_namespaced_deployment_status(echo, namespace).status.available_replicas == 2
    answers = run_client(core, namespace, [f"http://{echo}/"], rounds=4)
    assert {a["body"]["pod"] for a in answers} <= set(now)


RESOLVE = r"""
import socket, sys
for name in sys.argv[1:]:
    try:
        print(name, sorted({a[4][0] for a in socket.getaddrinfo(name, 80, socket.AF_INET)}), flush=True)
    except socket.gaierror as e:
        print(name, "unresolved:", e.strerror, flush=True)
"""


def test_traffic_stays_inside(k8s_cluster: Cluster, echo: str, namespace: str, core: client.CoreV1Api) -> None:
    """The guards are in place, and names outside the cluster resolve nowhere (CoreDNS has no forwarder)."""
    table = host.sh("nft", "list", "table", *host.FIREWALL_TABLE)
    for rule in (f'iifname "{host.CNI_BRIDGE}" drop', f'oifname "{host.CNI_BRIDGE}" drop', "ip daddr"):
        assert rule in table, table
    proxy = host.sh("nft", "list", "set", "ip", "kube-proxy", "nodeport-ips")
    assert f"elements = {{ {host.NODE_IP} }}" in proxy, proxy  # NodePorts on the node IP only, never eth0
    route = host.sh("ip", "route", "get", host.DNS_SERVICE_IP)
    assert f"dev {host.NODE_BRIDGE}" in route, route  # host -> Service never picks the outside interface
    rcode, addrs = dns_lookup(host.DNS_SERVICE_IP, "example.com")
    assert (rcode, addrs) == (3, []), "CoreDNS must answer NXDOMAIN outside cluster.local"
    # From a pod: its resolver asks CoreDNS only; cluster names resolve, outside names do not.
    name = f"resolve-{uuid.uuid4().hex[:6]}"
    core.create_namespaced_pod(namespace, {
        "metadata": {"name": name},
        "spec": {
            "restartPolicy": "Never", "automountServiceAccountToken": False, "enableServiceLinks": False,
            "securityContext": HARDENED_POD,
            "containers": [{
                "name": "resolve", "image": BASE_IMAGE, "imagePullPolicy": "Never",
                "command": ["python3", "-c", RESOLVE, f"{echo}.{namespace}", "example.com", "pypi.org"],
                "securityContext": HARDENED_CONTAINER, "resources": LIMITS,
            }],
        },
    })
    wait_for("the resolver pod", lambda: core.read_namespaced_pod(name, namespace).status.phase == "Succeeded", 60)
    out = core.read_namespaced_pod_log(name, namespace)
    svc_ip = core.read_namespaced_service(echo, namespace).spec.cluster_ip
    assert f"{echo}.{namespace} ['{svc_ip}']" in out, out
    assert "example.com unresolved" in out and "pypi.org unresolved" in out, out
    resolv = core.read_namespaced_pod(name, namespace).spec.dns_policy
    assert resolv == "ClusterFirst"
    core.delete_namespaced_pod(name, namespace, grace_period_seconds=0)


def test_load_image_imports_an_oci_archive(k8s_cluster: Cluster, tmp_path: Path) -> None:
    from services.stack.cluster import images

    layer = images.files_layer(tmp_path / "layer.tar", {"/pause": layout.BIN_DIR / "pause"})
    archive = images.write_oci_archive(tmp_path / "probe.tar", "localhost/serving-patterns/probe:test", [layer],
                                       {"Entrypoint": ["/pause"]}, "test")
    assert k8s_cluster.load_image(archive) == ["localhost/serving-patterns/probe:test"]
    assert "localhost/serving-patterns/probe:test" in k8s_cluster.images()


def test_up_without_binaries_fails_with_a_clear_message(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Never a skip: the message says what to run. Nothing on the host is touched."""
    monkeypatch.setattr(layout, "BIN_DIR", tmp_path / "no-bin")
    cluster = Cluster(tmp_path / "run")
    with pytest.raises(ClusterError, match=r"not built .*make cluster-build"):
        cluster.up()
    assert not (tmp_path / "run" / "baseline.json").exists()


def test_teardown_restores_host(k8s_session) -> None:
    """Runs last (see fixtures.py): after `down`, the host equals the snapshot taken before `up`."""
    problems = k8s_session.stop()
    assert problems == []
    after = host.snapshot()
    assert host.diff(k8s_session.baseline, after) == {}
    assert not any(k8s_session.cluster._alive(n, p) for n, p in k8s_session.cluster._recorded_pids().items())
    assert k8s_session.cluster._shim_pids() == []
    assert not OWNER_FILE.exists()
