"""Helpers of the chart-on-a-real-cluster tests (test_chart_on_cluster.py): images, helm 4, CRDs, client pods.

Nothing here starts anything outside the session's cluster: helm and kubectl talk to its API
server (10.245.0.1), client pods talk to the cluster's Services, the CRDs come from the Go
module cache (`go mod download`, outside the repository).
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from services.stack import helm as helm_tool
from services.stack.cluster import Cluster, images
from services.stack.paths import REPO_ROOT

CHART = helm_tool.CHART_DIR
CLUSTER_VALUES = Path(__file__).parent / "values-cluster.yaml"
UID = 10001
GID = 10001
MODEL = "breast-cancer"

# Go modules holding the CRDs of the mesh routing providers; the same versions whose schemas
# tests/chart/crds vendors (Gateway API's go line is one Go 1.26 accepts).
GATEWAY_API_MODULE = ("sigs.k8s.io/gateway-api", "v1.3.0", "config/crd/standard")
ISTIO_API_MODULE = ("istio.io/api", "v1.28.0", "kubernetes/customresourcedefinitions.gen.yaml")


def wait_for(what: str, check: Callable[[], Any], timeout: float = 120, interval: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})")


# --- helm 4 --------------------------------------------------------------------------------------------


@dataclass
class Helm:
    """helm 4 (server-side apply, strict field validation) against the session's cluster."""

    cluster: Cluster

    @property
    def binary(self) -> Path:
        binary = helm_tool.path(4)
        if binary is None:
            pytest.fail("helm 4 is not fetched: run `python -m services.stack.helm fetch` (`make test` does it)",
                        pytrace=False)
        return binary

    def run(self, *args: str, check: bool = True, timeout: float = 420) -> subprocess.CompletedProcess:
        env = {**os.environ, "KUBECONFIG": str(self.cluster.kubeconfig)}
        proc = subprocess.run([str(self.binary), *args], capture_output=True, text=True, env=env, timeout=timeout,
                              cwd=REPO_ROOT)
        if check and proc.returncode != 0:
            raise AssertionError(f"helm {' '.join(args)} failed (exit {proc.returncode}):\n{proc.stderr}{proc.stdout}")
        return proc

    @staticmethod
    def values_args(pattern: str, sets: tuple[str, ...] = (), set_json: tuple[str, ...] = ()) -> list[str]:
        args = ["-f", str(REPO_ROOT / "patterns" / pattern / "values.yaml"), "-f", str(CLUSTER_VALUES)]
        for s in sets:
            args += ["--set", s]
        for s in set_json:
            args += ["--set-json", s]
        return args

    def install(self, release: str, namespace: str, pattern: str, *sets: str, set_json: tuple[str, ...] = ()) -> str:
        return self.run("install", release, str(CHART), "--namespace", namespace, "--wait", "--timeout", "5m",
                        *self.values_args(pattern, sets, set_json)).stdout

    def upgrade(self, release: str, namespace: str, pattern: str, *sets: str, set_json: tuple[str, ...] = ()) -> str:
        return self.run("upgrade", release, str(CHART), "--namespace", namespace, "--wait", "--timeout", "5m",
                        *self.values_args(pattern, sets, set_json)).stdout

    def test(self, release: str, namespace: str) -> subprocess.CompletedProcess:
        return self.run("test", release, "--namespace", namespace, "--logs", "--timeout", "5m", check=False)

    def template(self, release: str, namespace: str, pattern: str, *sets: str, skip_tests: bool = True) -> str:
        extra = ["--skip-tests"] if skip_tests else []
        return self.run("template", release, str(CHART), "--namespace", namespace, *extra,
                        *self.values_args(pattern, sets)).stdout

    def manifests(self, release: str, namespace: str) -> list[dict]:
        out = self.run("get", "manifest", release, "--namespace", namespace).stdout
        return [d for d in yaml.safe_load_all(out) if d]


# --- images ----------------------------------------------------------------------------------------------


def build_images(log: Callable[[str], None]) -> dict[str, Path]:
    """The project image (Dockerfile, buildah) and the Kafka stand-in; each rebuilt only when its inputs changed."""
    from services.stack.cluster import kafka_image

    t0 = time.monotonic()
    app = images.build_app_image(log)
    kafka = kafka_image.build(log)
    log(f"images ready in {time.monotonic() - t0:.1f}s")
    return {images.app_image(): app, kafka_image.KAFKA_IMAGE: kafka}


# --- CRDs from Go modules -----------------------------------------------------------------------------


def go_module_dir(module: str, version: str) -> Path:
    """`go mod download -json module@version` (Go module proxy into the module cache, outside the repo)."""
    go = shutil.which("go") or "/usr/local/go/bin/go"
    proc = subprocess.run([go, "mod", "download", "-json", f"{module}@{version}"], capture_output=True, text=True,
                          timeout=600, cwd="/tmp", env={**os.environ, "GOFLAGS": "-mod=mod"})
    try:
        info = json.loads(proc.stdout)
    except json.JSONDecodeError:
        raise AssertionError(f"go mod download {module}@{version} failed:\n{proc.stderr}{proc.stdout}") from None
    directory = Path(info.get("Dir", ""))
    if not directory.is_dir():  # e.g. a go line newer than the toolchain: the error is in the JSON
        raise AssertionError(f"go mod download {module}@{version}: no module directory ({info.get('Error')})")
    return directory


def crd_files() -> list[Path]:
    files = []
    for module, version, rel in (GATEWAY_API_MODULE, ISTIO_API_MODULE):
        target = go_module_dir(module, version) / rel
        files += sorted(target.glob("*.yaml")) if target.is_dir() else [target]
    return files


# --- the model's request ------------------------------------------------------------------------------


def holdout_row(model: str = MODEL) -> tuple[str, list[float]]:
    """The input name and the first holdout row of the model's newest version (as the helm test pod does)."""
    repo = REPO_ROOT / "models" / "repository" / model
    newest = max(int(p.name) for p in repo.iterdir() if p.name.isdigit())
    card = json.loads((repo / str(newest) / "model-card.json").read_text())
    with open(repo / str(newest) / "holdout.csv", newline="") as f:
        reader = csv.reader(f)
        header, first = next(reader), next(reader)
    values = dict(zip(header, first, strict=True))
    return card["input"]["name"], [float(values[n]) for n in card["input"]["feature_names"]]


def v2_body(model: str = MODEL) -> dict:
    name, row = holdout_row(model)
    return {"inputs": [{"name": name, "shape": [1, len(row)], "datatype": "FP32", "data": row}]}


def app_body(model: str = MODEL) -> dict:
    return {"instances": [holdout_row(model)[1]]}


# --- client pods -------------------------------------------------------------------------------------

# POSTs `body` to `url` for each user, `rounds` times; one JSON line per answer (errors included).
# First a warm-up: one request retried until it is answered (a Service whose pods just became
# Ready may not be programmed into kube-proxy's rules yet: `helm install --wait` waits for pods,
# not for the data path); the warm-up is reported but not counted.
CLIENT = r"""
import json, sys, time, urllib.error, urllib.request
spec = json.loads(sys.argv[1])
data = json.dumps(spec["body"]).encode()

def ask(user, r):
    req = urllib.request.Request(spec["url"], data=data, method="POST",
                                 headers={"content-type": "application/json", "x-user-id": user})
    rec = {"round": r, "user": user, "t": time.time()}
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            body = json.loads(resp.read())
            rec.update(status=resp.status, variant=resp.headers.get("x-variant"), version=body.get("model_version"))
    except urllib.error.HTTPError as e:
        rec.update(status=e.code, error=e.read()[:300].decode(errors="replace"))
    except Exception as e:
        rec.update(status=0, error=f"{type(e).__name__}: {e}")
    rec["s"] = round(time.time() - rec["t"], 3)
    return rec

deadline, tries = time.time() + spec["warmup_s"], []
while True:
    rec = ask("warm-up", -1)
    tries.append(rec)
    if rec["status"] == 200 or time.time() > deadline:
        break
    time.sleep(0.5)
print(json.dumps({"warmup": tries}), flush=True)
if tries[-1]["status"] != 200:
    sys.exit(2)
for r in range(spec["rounds"]):
    for user in spec["users"]:
        print(json.dumps(ask(user, r)), flush=True)
    time.sleep(spec["pause"])
print(json.dumps({"done": True}), flush=True)
"""


def hardened_pod_spec(name: str, command: list[str]) -> dict:
    """A pod in the project image with the chart's hardening (admitted by the `restricted` PSS)."""
    return {
        "metadata": {"name": name, "labels": {"app.kubernetes.io/name": "sp-test-client"}},
        "spec": {
            "restartPolicy": "Never",
            "automountServiceAccountToken": False,
            "enableServiceLinks": False,
            "terminationGracePeriodSeconds": 1,
            "securityContext": {"runAsNonRoot": True, "runAsUser": UID, "runAsGroup": GID,
                                "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{
                "name": "client",
                "image": images.app_image(),
                "imagePullPolicy": "Never",
                "command": command,
                "securityContext": {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                    "capabilities": {"drop": ["ALL"]}, "runAsNonRoot": True},
                "resources": {"requests": {"cpu": "10m", "memory": "64Mi"},
                              "limits": {"cpu": "500m", "memory": "256Mi"}},
            }],
        },
    }


@dataclass
class ClientPod:
    """A client pod sending requests from inside the cluster; `answers()` once it has finished."""

    core: client.CoreV1Api
    namespace: str
    name: str = field(default_factory=lambda: f"client-{uuid.uuid4().hex[:6]}")

    def start(self, url: str, body: dict, users: list[str], rounds: int = 1, pause: float = 0.0,
              warmup_s: float = 60.0) -> ClientPod:
        spec = json.dumps({"url": url, "body": body, "users": users, "rounds": rounds, "pause": pause,
                           "warmup_s": warmup_s})
        self.core.create_namespaced_pod(self.namespace, hardened_pod_spec(self.name, ["python3", "-c", CLIENT, spec]))
        return self

    def phase(self) -> str:
        return self.core.read_namespaced_pod(self.name, self.namespace).status.phase

    def lines(self) -> list[dict]:
        try:
            logs = self.core.read_namespaced_pod_log(self.name, self.namespace, container="client")
        except client.ApiException:
            return []
        return [json.loads(ln) for ln in (logs or "").splitlines() if ln.startswith("{")]

    def wait_answers(self, count: int, timeout: float = 120) -> list[dict]:
        return wait_for(f"{count} answers from {self.name}",
                        lambda: (lines := self.lines()) and len([x for x in lines if "status" in x]) >= count
                        and lines, timeout)

    def answers(self, timeout: float = 180) -> list[dict]:
        phase = wait_for(f"client pod {self.name} to finish",
                         lambda: (p := self.phase()) in ("Succeeded", "Failed") and p, timeout)
        lines = self.lines()
        assert phase == "Succeeded" and lines and lines[-1] == {"done": True}, f"client {self.name} {phase}: {lines}"
        self.core.delete_namespaced_pod(self.name, self.namespace, grace_period_seconds=0)
        return [x for x in lines[:-1] if "status" in x]


def ask(core: client.CoreV1Api, namespace: str, url: str, body: dict, users: list[str], rounds: int = 1,
        pause: float = 0.0) -> list[dict]:
    return ClientPod(core, namespace).start(url, body, users, rounds, pause).answers()


# --- what is running -----------------------------------------------------------------------------------


def workloads(manifests: list[dict]) -> Iterator[dict]:
    for doc in manifests:
        if doc["kind"] in ("Deployment", "StatefulSet", "Job"):
            yield doc


def selector(labels: dict[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items()))


def live_pods(core: client.CoreV1Api, namespace: str, labels: dict[str, str]) -> list[client.V1Pod]:
    pods = core.list_namespaced_pod(namespace, label_selector=selector(labels)).items
    return [p for p in pods if p.metadata.deletion_timestamp is None]


# What a container sees of its own hardening: ids, capabilities, no_new_privs, seccomp, a read-only root.
PROBE = ('grep -E "^(Uid|Gid|CapEff|NoNewPrivs|Seccomp):" /proc/1/status; '
         'if touch /.sp-probe 2>/dev/null; then echo "root: writable"; else echo "root: read-only"; fi; '
         'if touch /tmp/.sp-probe 2>/dev/null; then echo "tmp: writable"; fi')


def runtime_view(cluster: Cluster, namespace: str, pod: str, container: str) -> dict[str, str]:
    proc = cluster.kubectl("exec", "-n", namespace, pod, "-c", container, "--", "sh", "-c", PROBE, timeout=60)
    view = {}
    for line in proc.stdout.splitlines():
        key, _, value = line.partition(":")
        view[key.strip()] = " ".join(value.split())
    return view
