"""`make loadtest`'s command against a pattern installed on the real cluster (issue 12, part 3).

The bandit pattern is installed with helm 4 (one router); `python -m loadtests.run` runs headless
Locust from the host for ~10 s against the router Service's ClusterIP (kube-proxy programs it on
the node, so the host reaches it without a port-forward) with rewards fed back: every request is
answered and checked against the holdout labels, every reward is accepted, the answering variants
are the pattern's, and the timeline polled the router's bandit state through the same Service.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from services.stack.paths import REPO_ROOT
from tests.cluster import test_chart_on_cluster as chart
from tests.cluster.chart_support import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(1800)]  # image build + cluster start + an install

# the chart tests' fixtures: images in the node, API clients, helm, deploy-into-a-namespace
built_images, chart_cluster, kube, core, apps, helm, deploy = (
    chart.built_images, chart.chart_cluster, chart.kube, chart.core, chart.apps, chart.helm, chart.deploy)


def _ready(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def test_make_loadtest_against_the_bandit_on_the_cluster(deploy, core, tmp_path: Path) -> None:
    rel = deploy("bandit")
    svc = core.read_namespaced_service(rel.resource("router"), rel.namespace)
    host = f"http://{svc.spec.cluster_ip}:8080"
    wait_for(f"{host} ready from the node", lambda: _ready(f"{host}/v2/health/ready"), 120)

    proc = subprocess.run([sys.executable, "-m", "loadtests.run", "--pattern", "bandit", "--host", host,
                           "--users", "4", "--duration", "10s", "--processes", "1", "--ceiling-s", "0",
                           "--out", str(tmp_path)], cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    [out] = list(tmp_path.iterdir())
    summary = json.loads((out / "summary.json").read_text())
    assert summary["target"] == host and summary["stack_started_here"] is False
    assert summary["requests"] > 0 and summary["failures"] == 0, summary
    feedback = summary["quality"]["feedback"]
    assert feedback == {"sent": summary["requests"], "refused": 0}, feedback
    assert summary["quality"]["rows_checked"] == summary["requests"]
    assert summary["quality"]["accuracy"] > 0.8, summary["quality"]
    assert set(summary["quality"]["variants"]) <= {"v1", "v2"}, summary["quality"]["variants"]
    timeline = json.loads((out / "timeline.json").read_text())
    pulls = [sum(a["pulls"] for a in p["policy"]["arms"].values()) for p in timeline if "policy" in p]
    assert pulls and pulls[-1] > 0, timeline[-3:]
    assert "bandit via router" in proc.stdout and "0 failed" in proc.stdout, proc.stdout[-2000:]
