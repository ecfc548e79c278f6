"""helm lint and helm template of every pattern's values file, with helm 3 and helm 4."""

from __future__ import annotations

import pytest

from services.stack.paths import REPO_ROOT
from tests.chart.helpers import (
    CHART,
    EXTRA_RENDERS,
    HELMS,
    NOT_IN_CHART,
    PATTERNS,
    all_renders,
    pattern_values,
    render,
    render_id,
    run_helm,
)


def test_every_pattern_has_a_values_file_and_the_chart_knows_every_pattern():
    folders = sorted(p.name for p in (REPO_ROOT / "patterns").iterdir()
                     if (p / "README.md").exists() and p.name not in NOT_IN_CHART)
    assert sorted(PATTERNS) == folders, "patterns/ and the chart's pattern list (services.stack.helm.PATTERNS) differ"
    for pattern in PATTERNS:
        assert pattern_values(pattern).is_file(), f"patterns/{pattern}/values.yaml is missing"


@pytest.mark.parametrize("major", HELMS)
@pytest.mark.parametrize("pattern", PATTERNS)
def test_helm_lint_strict(major, pattern):
    proc = run_helm(major, "lint", "--strict", str(CHART), "-f", str(pattern_values(pattern)), check=False)
    assert proc.returncode == 0, f"helm {major} lint {pattern}:\n{proc.stdout}\n{proc.stderr}"
    assert "[ERROR]" not in proc.stdout and "[WARNING]" not in proc.stdout, proc.stdout


@pytest.mark.parametrize("major", HELMS)
@pytest.mark.parametrize("case", all_renders(), ids=render_id)
def test_helm_template_renders(major, case):
    pattern, sets = case
    docs = render(pattern, *sets, helm=major)
    kinds = {d["kind"] for d in docs}
    assert {"Service", "ServiceAccount"} <= kinds
    assert kinds & {"Deployment", "StatefulSet"}
    for d in docs:
        assert d["metadata"]["name"], d
        assert d["metadata"]["labels"]["app.kubernetes.io/instance"] == "sp", d["metadata"]


def _comparable(docs):
    """The manifests without what is random per render (generated secrets)."""
    out = []
    for d in docs:
        if d["kind"] == "Secret":
            d = {**d, "data": sorted(d["data"])}
        out.append(d)
    return sorted(out, key=lambda d: (d["kind"], d["metadata"]["name"]))


@pytest.mark.parametrize("case", all_renders(), ids=render_id)
def test_helm_3_and_helm_4_render_the_same_manifests(case):
    pattern, sets = case
    assert _comparable(render(pattern, *sets, helm=3)) == _comparable(render(pattern, *sets, helm=4))


def test_extra_renders_cover_every_optional_kind():
    kinds = {d["kind"] for pattern, sets in EXTRA_RENDERS for d in render(pattern, *sets)}
    wanted = {"HTTPRoute", "VirtualService", "DestinationRule", "ServiceMonitor", "NetworkPolicy",
              "HorizontalPodAutoscaler", "PersistentVolumeClaim", "StatefulSet", "Job", "Secret", "ConfigMap"}
    assert wanted <= kinds, f"not rendered by any case: {wanted - kinds}"


def _publisher_command(*sets: str) -> list[str]:
    (job,) = [d for d in render("model-as-data", *sets) if d["kind"] == "Job"]
    return job["spec"]["template"]["spec"]["containers"][0]["command"]


def test_publisher_rolls_back_only_when_asked():
    """The apps refuse an older version unless its release is a signed rollback (--rollback)."""
    assert "--rollback" not in _publisher_command("model.version=1")
    command = _publisher_command("model.version=1", "publisher.rollback=true")
    assert "--rollback" in command and command[command.index("--version") + 1] == "1"
