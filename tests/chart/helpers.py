"""Helpers of the offline chart tests: render helm/serving-patterns with helm 3 / helm 4, pick manifests apart.

The helm binaries come from `python -m services.stack.helm fetch` (`make test` runs it through
`make helm-fetch`); without them every test here fails and says so (it is never a skip).
Renders are cached per session: each (helm, values) combination runs `helm template` once.
"""

from __future__ import annotations

import functools
import subprocess
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
import yaml

from services.stack import helm as helm_tool
from services.stack.paths import REPO_ROOT

CHART = helm_tool.CHART_DIR
PATTERNS = helm_tool.PATTERNS
ROUTED = ("shadow", "canary", "ab-test", "bandit")
MESH_PROVIDERS = ("gateway-api", "istio")
HELMS = (3, 4)
RELEASE = "sp"
NAMESPACE = "serving"


def pattern_values(pattern: str) -> Path:
    return REPO_ROOT / "patterns" / pattern / "values.yaml"


def helm_binary(major: int) -> Path:
    binary = helm_tool.path(major)
    if binary is None:
        pytest.fail(f"helm {major} is not fetched: run `python -m services.stack.helm fetch` "
                    "(`make test` does it through `make helm-fetch`)")
    return binary


def run_helm(major: int, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(helm_binary(major)), *args], capture_output=True, text=True, timeout=120,
                          cwd=REPO_ROOT)
    if check and proc.returncode != 0:
        pytest.fail(f"helm {major} {' '.join(args)} failed:\n{proc.stderr or proc.stdout}")
    return proc


def _template_args(pattern: str, sets: tuple[str, ...], extra: tuple[str, ...]) -> list[str]:
    args = ["template", RELEASE, str(CHART), "--namespace", NAMESPACE, "-f", str(pattern_values(pattern))]
    for s in sets:
        args += ["--set", s]
    return [*args, *extra]


@functools.cache
def _render(major: int, pattern: str, sets: tuple[str, ...], extra: tuple[str, ...]) -> tuple[str, str, int]:
    proc = run_helm(major, *_template_args(pattern, sets, extra), check=False)
    return proc.stdout, proc.stderr, proc.returncode


def render_text(pattern: str, *sets: str, helm: int = 4, extra: Iterable[str] = ()) -> str:
    out, err, rc = _render(helm, pattern, tuple(sets), tuple(extra))
    if rc != 0:
        pytest.fail(f"helm {helm} template {pattern} {' '.join(sets)} failed:\n{err}")
    return out


def render(pattern: str, *sets: str, helm: int = 4, extra: Iterable[str] = ()) -> list[dict[str, Any]]:
    """The rendered manifests of a pattern's values file (+ --set overrides), parsed."""
    return [d for d in yaml.safe_load_all(render_text(pattern, *sets, helm=helm, extra=extra)) if d]


def render_error(pattern: str, *sets: str, helm: int = 4) -> str:
    """helm template must fail; its error output."""
    out, err, rc = _render(helm, pattern, tuple(sets), ())
    assert rc != 0, f"helm {helm} template {pattern} {' '.join(sets)} should have failed; it rendered:\n{out[:2000]}"
    return err


#: Patterns that run locally only (`make up`), each with the reason.
NOT_IN_CHART = {"online-learning": "its trainer needs scikit-learn, which the serving image leaves out "
                                   "(patterns/online-learning/README.md, Kubernetes)"}


#: Value combinations whose renders are validated and policy-checked, beyond the plain pattern files:
#: every optional object the chart can render, and the mesh providers.
EXTRA_RENDERS: list[tuple[str, tuple[str, ...]]] = [
    *[(p, (f"routing.provider={prov}",)) for p in ("shadow", "canary") for prov in MESH_PROVIDERS],
    ("canary", ("serviceMonitor.enabled=true", "networkPolicy.enabled=true", "router.autoscaling.enabled=true",
                "modelServer.autoscaling.enabled=true")),
    ("bandit", ("router.persistence.enabled=true", "networkPolicy.enabled=true", "serviceMonitor.enabled=true")),
    ("model-as-data", ("kafka.persistence.enabled=true", "networkPolicy.enabled=true", "app.autoscaling.enabled=true",
                       "serviceMonitor.enabled=true")),
    ("stream-scoring", ("scoring.settings.follow_models=true", "scoring.autoscaling.enabled=true",
                        "networkPolicy.enabled=true")),
    ("model-as-data", ("kafka.enabled=false", "kafka.bootstrapServers=kafka-0.kafka.data:9092")),
    ("model-as-service", ("app.settings.protocol=rest", "serviceMonitor.enabled=true",
                          "networkPolicy.enabled=true",
                          "networkPolicy.entryPointFrom[0].namespaceSelector.matchLabels.team=web")),
    ("embedded", ("image.repository=registry.example/sp/serving-patterns", "image.tag=0.1.0-rc1",
                  "image.pullPolicy=Never", "imagePullSecrets[0]=regcred")),
]


def all_renders() -> list[tuple[str, tuple[str, ...]]]:
    return [(p, ()) for p in PATTERNS] + EXTRA_RENDERS


def render_id(case: tuple[str, tuple[str, ...]]) -> str:
    pattern, sets = case
    return pattern + ("[" + ",".join(sets) + "]" if sets else "")


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def named(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert found, f"no {kind} {name}; rendered: {[(d['kind'], d['metadata']['name']) for d in docs]}"
    return found[0]


def pod_spec(doc: dict[str, Any]) -> dict[str, Any] | None:
    if doc["kind"] in ("Deployment", "StatefulSet", "Job"):
        return doc["spec"]["template"]["spec"]
    if doc["kind"] == "Pod":
        return doc["spec"]
    return None


def is_test_pod(doc: dict[str, Any]) -> bool:
    return doc["kind"] == "Pod" and doc["metadata"].get("annotations", {}).get("helm.sh/hook") == "test"


def containers(docs: list[dict[str, Any]]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(owning manifest, container) for every container and init container rendered."""
    out = []
    for d in docs:
        spec = pod_spec(d)
        if spec is not None:
            out += [(d, c) for c in spec.get("initContainers", []) + spec["containers"]]
    return out


def module_of(container: dict[str, Any]) -> str | None:
    """The serving-patterns entry point a container runs (python3 -m <module>), if any."""
    cmd = container.get("command", [])
    if len(cmd) >= 3 and cmd[0] == "python3" and cmd[1] == "-m":
        return cmd[2]
    return None
