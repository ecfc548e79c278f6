"""Routing: the router's ConfigMap is the pattern's routing.yaml, and mesh routes follow the same config.

- files/routing/<pattern>.yaml in the chart is byte-identical to patterns/<pattern>/routing.yaml;
- the rendered routing.yaml passes the router's own validation (services.router.config.parse_config)
  and equals the pattern's file except the variant URLs, which name the chart's model-server Services;
- Gateway API / Istio weights and mirror percentages come from the same config;
- the READMEs' route sections are what the chart renders now.
"""

from __future__ import annotations

import pytest
import yaml

from services.router.config import parse_config
from services.stack.paths import REPO_ROOT
from tests.chart import readme_routes
from tests.chart.helpers import CHART, NAMESPACE, ROUTED, by_kind, named, render, render_error


def routing_yaml(pattern: str) -> str:
    return (REPO_ROOT / "patterns" / pattern / "routing.yaml").read_text()


def rendered_config(*sets: str, pattern: str):
    cm = named(render(pattern, *sets), "ConfigMap", "sp-serving-patterns-routing")
    return parse_config(cm["data"]["routing.yaml"], "rendered ConfigMap")


@pytest.mark.parametrize("pattern", ROUTED)
def test_the_chart_carries_the_patterns_routing_files_unchanged(pattern):
    copy = CHART / "files" / "routing" / f"{pattern}.yaml"
    assert copy.read_text() == routing_yaml(pattern), (
        f"{copy} differs from patterns/{pattern}/routing.yaml: copy the pattern's file into the chart")


@pytest.mark.parametrize("pattern", ROUTED)
def test_the_router_configmap_is_the_patterns_config_with_in_cluster_urls(pattern):
    config = rendered_config(pattern=pattern)
    original = parse_config(routing_yaml(pattern), pattern)
    assert list(config.variants) == list(original.variants), "variant order matters (A/B control, default fallback)"
    strip = {"variants": {v: {"url", "grpc"} for v in original.variants}}
    assert config.model_dump(exclude=strip) == original.model_dump(exclude=strip)
    docs = render(pattern)
    services = {s["metadata"]["name"]: s for s in by_kind(docs, "Service")}
    for name, variant in config.variants.items():
        svc = f"sp-serving-patterns-model-server-{name}"
        assert svc in services, f"variant {name}: no Service {svc}"
        ports = {p["name"]: p["port"] for p in services[svc]["spec"]["ports"]}
        host = f"{svc}.{NAMESPACE}.svc.cluster.local"
        assert variant.url == f"http://{host}:{ports['http']}"
        assert variant.grpc == f"{host}:{ports['grpc']}"
        server = named(docs, "Deployment", svc)
        env = {e["name"]: e["value"] for e in server["spec"]["template"]["spec"]["containers"][0]["env"]}
        assert env["MODEL_SERVER_VERSION_POLICY"] == f"specific:{variant.version}", "each server loads its version"


def test_routing_overrides_merge_into_the_config():
    config = rendered_config("routing.config.policy.params.weights.stable=80",
                             "routing.config.policy.params.weights.candidate=20",
                             "routing.config.variants.candidate.version=3", pattern="canary")
    assert config.policy.params["weights"] == {"stable": 80, "candidate": 20}
    assert config.variants["candidate"].version == 3
    assert config.policy.params["hash_salt"] == "breast-cancer-v2-rollout"  # untouched keys stay


def test_a_variant_added_by_values_gets_its_own_model_server():
    docs = render("bandit", "routing.config.variants.v3.model=breast-cancer", "routing.config.variants.v3.version=3")
    config = rendered_config("routing.config.variants.v3.model=breast-cancer",
                             "routing.config.variants.v3.version=3", pattern="bandit")
    assert list(config.variants) == ["v1", "v2", "v3"]
    named(docs, "Deployment", "sp-serving-patterns-model-server-v3")


def _mesh(pattern: str, provider: str, *sets: str):
    docs = render(pattern, f"routing.provider={provider}", *sets)
    assert not [d for d in by_kind(docs, "Deployment") if d["metadata"]["name"].endswith("-router")], \
        "no router with a mesh provider"
    assert not by_kind(docs, "ConfigMap")
    return docs


def _weights_gateway(route):
    main = route["spec"]["rules"][-1]
    return {b["name"].rsplit("-", 1)[-1]: b.get("weight") for b in main["backendRefs"]}, main


def test_canary_weights_reach_the_httproute_and_the_virtualservice():
    for sets, want in (((), {"stable": 95, "candidate": 5}),
                       (("routing.config.policy.params.weights.stable=70",
                         "routing.config.policy.params.weights.candidate=30"), {"stable": 70, "candidate": 30})):
        route = by_kind(_mesh("canary", "gateway-api", *sets), "HTTPRoute")[0]
        assert route["apiVersion"] == "gateway.networking.k8s.io/v1"
        weights, main = _weights_gateway(route)
        assert weights == want and "filters" not in main
        vs = by_kind(_mesh("canary", "istio", *sets), "VirtualService")[0]
        assert vs["apiVersion"] == "networking.istio.io/v1"
        main = vs["spec"]["http"][-1]
        assert {r["destination"]["subset"]: r["weight"] for r in main["route"]} == want
        assert "mirror" not in main


def test_canary_fractional_weights_become_percent():
    weights = 'routing.config.policy.params.weights={"stable": 0.9, "candidate": 0.1}'
    docs = render("canary", "routing.provider=istio", extra=("--set-json", weights))
    main = by_kind(docs, "VirtualService")[0]["spec"]["http"][-1]
    assert {r["destination"]["subset"]: r["weight"] for r in main["route"]} == {"stable": 90, "candidate": 10}


@pytest.mark.parametrize(("rate", "percent"), [(None, 100), (0.25, 25), (0.0, 0)])
def test_shadow_mirrors_follow_the_sample_rate(rate, percent):
    extra = ("--set-json", f"routing.config.shadow.sample_rate={rate}") if rate is not None else ()
    route = by_kind(render("shadow", "routing.provider=gateway-api", extra=extra), "HTTPRoute")[0]
    weights, main = _weights_gateway(route)
    assert weights == {"stable": 100}
    (mirror,) = main["filters"]
    assert mirror["type"] == "RequestMirror"
    assert mirror["requestMirror"]["backendRef"]["name"] == "sp-serving-patterns-model-server-candidate"
    assert mirror["requestMirror"]["percent"] == percent
    vs = by_kind(render("shadow", "routing.provider=istio", extra=extra), "VirtualService")[0]
    main = vs["spec"]["http"][-1]
    assert main["mirror"]["subset"] == "candidate" and main["mirrorPercentage"]["value"] == percent
    assert [r["destination"]["subset"] for r in main["route"]] == ["stable"]


def test_istio_subsets_select_each_variants_pods():
    docs = _mesh("canary", "istio")
    dr = by_kind(docs, "DestinationRule")[0]
    front = named(docs, "Service", "sp-serving-patterns-model")
    assert dr["spec"]["host"] == f"sp-serving-patterns-model.{NAMESPACE}.svc.cluster.local"
    for subset in dr["spec"]["subsets"]:
        pods = [d for d in by_kind(docs, "Deployment")
                if subset["labels"].items() <= d["spec"]["template"]["metadata"]["labels"].items()
                and front["spec"]["selector"].items() <= d["spec"]["template"]["metadata"]["labels"].items()]
        assert len(pods) == 1, subset


def test_gateway_api_parent_refs_and_hostnames_are_configurable():
    docs = render("canary", "routing.provider=gateway-api", "routing.gatewayApi.parentRefs[0].name=public",
                  "routing.gatewayApi.parentRefs[0].namespace=gateways",
                  "routing.gatewayApi.hostnames[0]=ml.example.com")
    route = by_kind(docs, "HTTPRoute")[0]
    assert route["spec"]["parentRefs"] == [{"name": "public", "namespace": "gateways"}]
    assert route["spec"]["hostnames"] == ["ml.example.com"]


@pytest.mark.parametrize("pattern", ("ab-test", "bandit"))
def test_stateful_patterns_cannot_use_a_mesh(pattern):
    for provider in ("gateway-api", "istio"):
        assert "need routing.provider=router" in render_error(pattern, f"routing.provider={provider}")


def test_the_readme_route_sections_are_current():
    stale = [p for p in readme_routes.PATTERNS if readme_routes.current(p) != readme_routes.section(p)]
    assert not stale, f"stale helm-routes sections in {stale}: run `python -m tests.chart.readme_routes`"


def test_the_readme_sections_hold_the_rendered_yaml():
    for pattern in readme_routes.PATTERNS:
        section = readme_routes.current(pattern)
        blocks = [b.split("```", 1)[0] for b in section.split("```yaml\n")[1:]]
        kinds = [d["kind"] for b in blocks for d in yaml.safe_load_all(b) if d]
        assert kinds == ["HTTPRoute", "DestinationRule", "VirtualService"], kinds
