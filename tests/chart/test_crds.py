"""HTTPRoute, VirtualService and DestinationRule against their CRDs' schemas (tests/chart/crds).

kubernetes-validate skips custom resources; these three are checked here against the
openAPIV3Schema of Gateway API v1.3.0 (standard channel) and Istio 1.28's CRDs, made strict like
an API server with strict field validation (helm 4): an unknown field is refused wherever the
schema lists properties and does not preserve unknown fields. CEL rules (x-kubernetes-validations)
are not evaluated. The ServiceMonitor's shape is checked field by field.
"""

from __future__ import annotations

import copy
import functools
import json
from pathlib import Path

import jsonschema
import pytest

from tests.chart.helpers import by_kind, render

CRDS = Path(__file__).parent / "crds"


def _strict(node):
    if isinstance(node, dict):
        node = {k: _strict(v) for k, v in node.items()}
        if "properties" in node and not node.get("x-kubernetes-preserve-unknown-fields"):
            node.setdefault("additionalProperties", False)
        return node
    if isinstance(node, list):
        return [_strict(v) for v in node]
    return node


@functools.cache
def validator(kind: str, api_version: str) -> jsonschema.Draft7Validator:
    group, version = api_version.split("/")
    data = json.loads((CRDS / f"{kind.lower()}-{group}-{version}.json").read_text())
    schema = _strict(copy.deepcopy(data["openAPIV3Schema"]))
    # The API server adds these to every CRD's schema (Istio's omit them).
    schema["properties"].update(apiVersion={"type": "string"}, kind={"type": "string"}, metadata={"type": "object"})
    return jsonschema.Draft7Validator(schema)


def problems(doc) -> list[str]:
    errors = validator(doc["kind"], doc["apiVersion"]).iter_errors(doc)
    return [f"{'.'.join(map(str, e.path))}: {e.message}" for e in errors]


NORTH_SOUTH = ("routing.gatewayApi.parentRefs[0].name=public", "routing.gatewayApi.hostnames[0]=ml.example",
               "routing.istio.gateways[0]=ingress/public", "routing.istio.hosts[0]=ml.example")
MESH_CASES = [(p, f"routing.provider={prov}", extra) for p in ("shadow", "canary") for prov in ("gateway-api", "istio")
              for extra in ((), NORTH_SOUTH)]
ROUTE_KINDS = ("HTTPRoute", "VirtualService", "DestinationRule")


@pytest.mark.parametrize("case", MESH_CASES, ids=lambda c: f"{c[0]}-{c[1]}-{len(c[2])}")
def test_mesh_routes_match_their_crds(case):
    pattern, provider, extra = case
    docs = [d for d in render(pattern, provider, *extra) if d["kind"] in ROUTE_KINDS]
    assert docs
    found = {d["kind"]: problems(d) for d in docs}
    assert not any(found.values()), found


def test_the_crd_check_refuses_a_wrong_field():
    route = copy.deepcopy(by_kind(render("shadow", "routing.provider=gateway-api"), "HTTPRoute")[0])
    route["spec"]["rules"][-1]["filters"][0]["requestMirror"]["percentage"] = 50
    assert any("percentage" in p for p in problems(route))
    vs = copy.deepcopy(by_kind(render("canary", "routing.provider=istio"), "VirtualService")[0])
    vs["spec"]["http"][-1]["route"][0]["weight"] = "five"
    assert any("weight" in p for p in problems(vs))


def test_service_monitor_shape():
    for sm in by_kind(render("canary", "serviceMonitor.enabled=true", "serviceMonitor.labels.release=prom"),
                      "ServiceMonitor"):
        assert sm["apiVersion"] == "monitoring.coreos.com/v1"
        assert sm["metadata"]["labels"]["release"] == "prom"
        assert set(sm["spec"]) == {"selector", "namespaceSelector", "endpoints"}
        (endpoint,) = sm["spec"]["endpoints"]
        assert set(endpoint) == {"port", "path", "interval", "scrapeTimeout"} and endpoint["path"] == "/metrics"
