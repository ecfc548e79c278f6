"""The Grafana dashboard (services/supervisor/grafana/serving-patterns.json) names only real metrics.

Every panel's PromQL may only reference series that `services/router/metrics.py` and
`services/supervisor/metrics.py` define (with the suffixes Prometheus gives each type), every
expression parses (promtool, as a recording rule with the dashboard variables filled in), and
the file is exactly what `grafana/build.py` writes.
"""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.metrics import MetricWrapperBase

from services.router import metrics as router_metrics
from services.stack import promtool
from services.stack.paths import REPO_ROOT
from services.supervisor import metrics as supervisor_metrics

GRAFANA_DIR = REPO_ROOT / "services" / "supervisor" / "grafana"
DASHBOARD = GRAFANA_DIR / "serving-patterns.json"
SUFFIXES = {"counter": ("_total", "_created"), "gauge": ("",), "histogram": ("_bucket", "_count", "_sum", "_created"),
            "summary": ("_count", "_sum", "_created")}
PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless",
                "offset", "inf", "nan"}
VARIABLES = {"$__rate_interval": "1m", "$__range": "1h", "$__interval": "1m", "$variant": "stable",
             "$rollout": "r"}


def known_series() -> set[str]:
    names = set()
    for module in (router_metrics, supervisor_metrics):
        for obj in vars(module).values():
            if isinstance(obj, MetricWrapperBase):
                names.update(obj._name + suffix for suffix in SUFFIXES[obj._type])
    return names


def panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for panel in dashboard["panels"]:
        out.append(panel)
        out.extend(panel.get("panels", []))  # a collapsed row keeps its panels inside
    return out


def expressions(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    found = [(p["title"], t["expr"]) for p in panels(dashboard) for t in p.get("targets", [])]
    found += [(f"annotation {a['name']}", a["expr"]) for a in dashboard["annotations"]["list"] if "expr" in a]
    found += [(f"variable {v['name']}", v["query"]["query"]) for v in dashboard["templating"]["list"]
              if isinstance(v.get("query"), dict)]
    return found


def metric_names(expr: str) -> set[str]:
    """The series names a PromQL expression selects (functions, keywords and label names left out)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # string literals
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)  # ranges
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", text)  # label lists
    text = re.sub(r"\blabel_values\s*\(\s*([a-zA-Z_:][a-zA-Z0-9_:]*)\s*,[^)]*\)", r"\1", text)  # variable queries
    names = set()
    for m in re.finditer(r"(?<![\w.$])([a-zA-Z_:][a-zA-Z0-9_:]*)\b(\s*\()?", text):
        word, call = m.group(1), m.group(2)
        if call or word.lower() in PROMQL_WORDS:
            continue
        names.add(word)
    return names


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def test_metric_names_are_extracted_as_promql_reads_them() -> None:
    expr = ('sum by (variant) (rate(router_requests_total{variant=~"$variant",status=~"5.."}[5m])) / ignoring '
            '(variant) group_left sum(rate(router_decisions_total[$__rate_interval])) or 0 * up')
    assert metric_names(expr) == {"router_requests_total", "router_decisions_total", "up"}
    assert metric_names("histogram_quantile(0.99, sum by (le) (rate(a_bucket[1m])))") == {"a_bucket"}
    assert metric_names("label_values(router_requests_total, variant)") == {"router_requests_total"}


def test_every_expression_references_only_metrics_the_modules_define(dashboard) -> None:
    known = known_series()
    exprs = expressions(dashboard)
    assert len(exprs) >= 20
    used: set[str] = set()
    for title, expr in exprs:
        names = metric_names(expr)
        assert names, f"{title}: no metric in {expr!r}"
        unknown = names - known
        assert not unknown, f"{title}: {sorted(unknown)} are not router_* / supervisor_* metrics: {expr}"
        used |= names
    # The panels the dashboard promises: per-variant traffic, errors, latency, accuracy; the rollout.
    for name in ("router_requests_total", "router_upstream_errors_total", "router_upstream_seconds_bucket",
                 "router_feedback_correct_total", "router_feedback_labels_total", "router_shadow_agreeing_rows_total",
                 "supervisor_candidate_weight", "supervisor_decisions_total", "supervisor_rule_verdicts_total",
                 "supervisor_sequential_log_lambda"):
        assert name in used, name


def test_panels_are_well_formed(dashboard) -> None:
    ids = [p["id"] for p in panels(dashboard)]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for p in panels(dashboard):
        pos = p["gridPos"]
        assert 0 <= pos["x"] and pos["x"] + pos["w"] <= 24, p["title"]
        if p["type"] in ("timeseries", "stat"):
            assert p["targets"] and p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
            assert len({t["refId"] for t in p["targets"]}) == len(p["targets"]), p["title"]
    accuracy = [e for t, e in expressions(dashboard) if t.startswith("Accuracy")]
    assert accuracy and all("router_feedback_correct_total" in e and "/" in e and "router_feedback_labels_total" in e
                            for e in accuracy)
    latency = [e for t, e in expressions(dashboard) if "latency" in t.lower()]
    assert latency and all(e.startswith("histogram_quantile(") for e in latency)
    for title, expr in expressions(dashboard):
        if expr.startswith("label_values("):
            continue
        for counter in ("router_requests_total", "router_upstream_errors_total", "router_feedback_labels_total"):
            if counter in expr:
                assert re.search(rf"(rate|increase)\({counter}\{{", expr), f"{title}: {counter} outside rate()"
    assert "rate(router_feedback_reward_sum" not in json.dumps(dashboard), "reward sums may decrease: delta()"


def test_expressions_parse_with_promtool(dashboard, tmp_path: Path) -> None:
    binary = promtool.path()
    if binary is None:
        pytest.fail("promtool is not built: run `make promtool` (make test builds it)")
    rules = []
    for i, (_, expr) in enumerate(expressions(dashboard)):
        if expr.startswith("label_values("):
            continue  # Grafana's variable query syntax, not PromQL
        for var, value in VARIABLES.items():
            expr = expr.replace(var, value)
        rules.append({"record": f"dashboard:expr_{i}", "expr": expr})
    path = tmp_path / "rules.json"  # YAML is a superset of JSON
    path.write_text(json.dumps({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = subprocess.run([str(binary), "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_file_is_what_build_py_writes() -> None:
    spec = importlib.util.spec_from_file_location("grafana_build", GRAFANA_DIR / "build.py")
    assert spec is not None and spec.loader is not None
    build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build)
    assert DASHBOARD.read_text() == build.render(), "run `python services/supervisor/grafana/build.py`"
