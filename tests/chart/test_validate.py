"""Every rendered manifest, validated offline against Kubernetes OpenAPI schemas (kubernetes-validate, strict).

`kubernetes-validate --strict` rejects unknown fields and wrong types, with the schemas of each
Kubernetes version it bundles. It has no schemas for custom resources: HTTPRoute (Gateway API),
VirtualService and DestinationRule (Istio) and ServiceMonitor (Prometheus Operator) are skipped
by it (SchemaNotFoundError), and this test checks that those four kinds, and only those, are the
ones skipped (test_crds.py validates the first three against their CRDs' schemas). It also does
not catch what only an API server refuses (invalid names or ports; a removed API version is only
a warning): the real-cluster test (helm 4 server-side apply) will.
"""

from __future__ import annotations

import functools
import re
import subprocess
import sys
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml
from referencing import Registry, Resource

from tests.chart.helpers import all_renders, render, render_id, render_text


@functools.cache
def _validator(version: str, kind: str, api_version: str) -> jsonschema.Validator | None:
    """kubernetes_validate.validate's own schema lookup and validator, built once per (version, kind)
    instead of once per manifest (it re-reads the multi-megabyte definitions file every call)."""
    kv = kubernetes_validate.utils
    schema_version = [v for v in kv.all_versions() if kv.major_minor(v) <= kv.major_minor(version)][-1]
    schema_dir = f"v{schema_version}-local-strict"
    api = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", api_version)
    try:
        schema = kv.schema_contents(f"kubernetes-json-schema/{schema_dir}/{kind.lower()}-{api}.json", version)
    except FileNotFoundError:
        return None
    definitions = kv.schema_contents(f"kubernetes-json-schema/{schema_dir}/_definitions.json", version)
    registry = Resource.from_contents(definitions) @ (Resource.from_contents(schema) @ Registry())
    return jsonschema.validators.Draft202012Validator(schema, registry=registry)


def validate(doc: dict, version: str) -> None:
    """As kubernetes_validate.validate(doc, version, strict=True): SchemaNotFoundError or ValidationError."""
    validator = _validator(version, doc["kind"], doc["apiVersion"])
    if validator is None:
        raise kubernetes_validate.SchemaNotFoundError(doc["kind"], version, doc["apiVersion"])
    try:
        validator.validate(doc)
    except jsonschema.ValidationError as exc:
        raise kubernetes_validate.ValidationError(exc, version) from None


#: The chart's kubeVersion floor, a middle version, and the newest the package bundles.
K8S_VERSIONS = ("1.27.0", "1.30.0", f"{kubernetes_validate.utils.latest_version()}.0")
CRD_KINDS = {"HTTPRoute", "VirtualService", "DestinationRule", "ServiceMonitor"}


def test_the_newest_bundled_version_is_recent():
    assert kubernetes_validate.utils.latest_version() >= "1.33", kubernetes_validate.utils.all_versions()


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("case", all_renders(), ids=render_id)
def test_manifests_validate_strictly(version, case):
    pattern, sets = case
    skipped, problems = set(), []
    for doc in render(pattern, *sets):
        try:
            validate(doc, version)
        except kubernetes_validate.SchemaNotFoundError:
            skipped.add(doc["kind"])
        except kubernetes_validate.ValidationError as exc:
            where = ".".join(str(p) for p in exc.path)
            problems.append(f"{doc['kind']}/{doc['metadata']['name']}: {where}: {exc.message}")
    assert not problems, "\n".join(problems)
    assert skipped <= CRD_KINDS, f"kubernetes-validate {version} has no schema for {skipped - CRD_KINDS}"


def test_the_validator_refuses_an_unknown_field():
    """The check above can fail: a typo'd field in a rendered Deployment is refused."""
    doc = next(d for d in render("embedded") if d["kind"] == "Deployment")
    doc["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError, match="readinesProbe"):
        kubernetes_validate.validate(doc, "1.30.0", strict=True)
    with pytest.raises(kubernetes_validate.ValidationError, match="readinesProbe"):
        validate(doc, "1.30.0")


def test_the_cached_validator_agrees_with_the_library():
    for doc in render("canary", "serviceMonitor.enabled=true"):
        for version in ("1.30.0", K8S_VERSIONS[-1]):
            try:
                kubernetes_validate.validate(doc, version, strict=True)
                expected = "ok"
            except kubernetes_validate.SchemaNotFoundError:
                expected = "no schema"
            try:
                validate(doc, version)
                got = "ok"
            except kubernetes_validate.SchemaNotFoundError:
                got = "no schema"
            assert got == expected, (doc["kind"], version)


def test_the_command_line_tool_accepts_a_whole_render(tmp_path):
    """The same verdict from the `kubernetes-validate --strict` command line, on one file per render."""
    manifest = tmp_path / "canary.yaml"
    manifest.write_text(render_text("canary", "serviceMonitor.enabled=true", "networkPolicy.enabled=true"))
    assert len([d for d in yaml.safe_load_all(manifest.read_text()) if d]) > 10
    cli = [str(Path(sys.executable).with_name("kubernetes-validate"))]
    for version in ("1.30.0", K8S_VERSIONS[-1]):
        proc = subprocess.run([*cli, "--strict", "--quiet", "-k", version, str(manifest)],
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "ERROR" not in proc.stdout, proc.stdout
