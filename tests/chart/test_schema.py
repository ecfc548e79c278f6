"""values.schema.json: generated from the code, and broken values refused with a message that says what.

The schema's `<component>.settings` blocks are the services' pydantic-settings fields minus the
ones the chart sets (services.stack.helm.CHART_MANAGED), and `routing.config` mirrors the router's
config models: `python -m services.stack.helm schema` rewrites the file, this test fails when the
committed file differs (a settings field added, renamed or removed in a service).
"""

from __future__ import annotations

import json

import pytest

from services.stack import helm as helm_tool
from tests.chart.helpers import CHART, HELMS, render, render_error


def test_the_committed_schema_is_what_the_generator_writes():
    committed = (CHART / "values.schema.json").read_text()
    assert committed == helm_tool.schema_text(), (
        "helm/serving-patterns/values.schema.json is stale (a service's settings or the router's config changed): "
        "run `python -m services.stack.helm schema` and review the diff")


def test_the_schema_is_draft_07_and_closed_at_every_object_level():
    schema = json.loads((CHART / "values.schema.json").read_text())
    assert schema["$schema"] == "http://json-schema.org/draft-07/schema#"
    open_objects = []

    def walk(node, path):
        if isinstance(node, dict):
            if node.get("type") == "object" and "properties" in node and node.get("additionalProperties") is not False:
                open_objects.append(path)
            for key, value in node.items():
                walk(value, f"{path}/{key}")
        elif isinstance(node, list):
            for i, value in enumerate(node):
                walk(value, f"{path}/{i}")

    walk(schema, "")
    # policy.params is closed per policy kind (allOf/if/then) and by propertyNames without a kind.
    assert open_objects == ["/properties/routing/properties/config/properties/policy/properties/params"], open_objects


@pytest.mark.parametrize("module", sorted(helm_tool.SERVICES))
def test_settings_blocks_hold_every_field_the_chart_does_not_set(module):
    cls = helm_tool.settings_class(module)
    fields = set(cls.model_fields)
    managed = set(helm_tool.CHART_MANAGED[module])
    assert managed <= fields, f"CHART_MANAGED names fields {cls.__name__} does not have: {sorted(managed - fields)}"
    assert set(helm_tool.settable_settings(module)) == fields - managed


def test_every_values_key_is_documented_with_a_comment():
    import yaml

    lines = (CHART / "values.yaml").read_text().splitlines()
    undocumented = []
    for i, line in enumerate(lines):
        stripped = line.strip()
        if not stripped or stripped.startswith("#") or stripped.startswith("- "):
            continue
        if ":" in stripped and not stripped.startswith("{"):
            above = lines[i - 1].strip() if i else ""
            if not above.startswith("#"):
                undocumented.append(f"line {i + 1}: {stripped}")
    assert not undocumented, "values.yaml keys without a comment above:\n" + "\n".join(undocumented)
    assert yaml.safe_load("\n".join(lines))["pattern"] == "embedded"


BROKEN = [
    # (pattern, --set values, what helm 3 says, what helm 4 says)
    ("embedded", ("typo=1",), "Additional property typo is not allowed", "additional properties 'typo' not allowed"),
    ("embedded", ("app.replica=2",), "Additional property replica is not allowed",
     "additional properties 'replica' not allowed"),
    ("canary", ("routing.config.policy.params.weights.candidate=150",),
     "weights.candidate: Must be less than or equal to 100", "maximum: got 150, want 100"),
    ("bandit", ("routing.provider=istio",), "need routing.provider=router", "need routing.provider=router"),
    ("ab-test", ("routing.provider=gateway-api",), "need routing.provider=router", "need routing.provider=router"),
    ("embedded", ("model.name=null",), "model: name is required", "missing property 'name'"),
    ("embedded", ("model.name=",), "model.name: String length must be greater than or equal to 1",
     "minLength: got 0, want 1"),
    ("canary", ("routing.config.policy.kind=bogus",), "must be one of the following", "value must be one of"),
    ("canary", ("routing.provider=linkerd",), "must be one of the following", "value must be one of"),
    ("embedded", ("app.settings.protocol=rest",), "Additional property protocol is not allowed",
     "additional properties 'protocol' not allowed"),
    ("embedded", ("app.settings.range_policy=maybe",), "must be one of the following", "value must be one of"),
    ("model-as-service", ("modelServer.settings.poll_interval_s=-1",), "Must be greater than or equal to 0",
     "minimum: got -1, want 0"),
    ("canary", ("routing.config.variants.Canary_2.model=breast-cancer",),
     "Property name of \"Canary_2\" does not match", "invalid propertyName 'Canary_2'"),
    ("embedded", ("image.tag=latest",), "image.tag: Must not validate the schema", "'not' failed"),
    ("embedded", ("app.resources.limits=null",), "resources: limits is required", "missing property 'limits'"),
    ("embedded", ("pattern=kserve",), "must be one of the following", "value must be one of"),
]


@pytest.mark.parametrize("major", HELMS)
@pytest.mark.parametrize("case", BROKEN, ids=lambda c: f"{c[0]}:{','.join(c[1])}")
def test_broken_values_are_refused_with_a_message(major, case):
    pattern, sets, says3, says4 = case
    err = render_error(pattern, *sets, helm=major)
    assert (says3 if major == 3 else says4) in err, err


TEMPLATE_REFUSALS = [
    ("canary", ("routing.config.policy.params.weights.stable=90",), "weights sum to 95; they must sum to 100"),
    ("model-as-data", ("kafka.enabled=false",), "needs Kafka: set kafka.bootstrapServers"),
    ("bandit", ("router.replicas=2",), "with router.replicas > 1 (or router.autoscaling) needs Kafka"),
    ("ab-test", ("router.replicas=2", "kafka.enabled=true", "routing.config.policy.params.count_by=assignments"),
     "needs routing.config.policy.params.count_by=outcomes"),
    ("canary", ("routing.config.policy.params.weights.third=0",), "names \"third\", which is not a variant"),
    ("shadow", ("router.persistence.enabled=true", "router.replicas=2"), "router.persistence.enabled needs"),
]


@pytest.mark.parametrize("case", TEMPLATE_REFUSALS, ids=lambda c: f"{c[0]}:{','.join(c[1])}")
def test_combinations_the_schema_cannot_express_fail_in_a_template(case):
    pattern, sets, says = case
    for major in HELMS:
        err = render_error(pattern, *sets, helm=major)
        assert says in err, err


def test_the_template_check_still_refuses_mesh_routing_of_stateful_patterns_without_the_schema():
    """`--skip-schema-validation` (helm 3.16+) skips the schema; the template's `fail` still says why."""
    from tests.chart.helpers import run_helm

    proc = run_helm(4, "template", "x", str(CHART), "--skip-schema-validation", "--set", "pattern=bandit",
                    "--set", "routing.provider=istio", check=False)
    assert proc.returncode != 0
    assert "pattern bandit needs routing.provider=router, not istio" in proc.stderr, proc.stderr


def test_valid_overrides_render():
    docs = render("canary", "routing.config.policy.params.weights.stable=80",
                  "routing.config.policy.params.weights.candidate=20", "modelServer.settings.batching=true",
                  "router.settings.config_poll_s=5")
    assert docs
