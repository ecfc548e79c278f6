"""Writes serving-patterns.json, the Grafana dashboard over the router_* and supervisor_* metrics.

    python services/supervisor/grafana/build.py        (rewrites serving-patterns.json beside it)

The JSON is the artefact (the Helm chart ships it as a ConfigMap, read with `.Files.Get`, never
through `tpl`: `{{variant}}` is Grafana's legend syntax, not Helm's); this script is how it is
kept readable and consistent. tests/unit/supervisor/test_grafana.py checks that the file is what
this script writes and that every expression names only metrics the two metrics modules define.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

OUT = Path(__file__).with_name("serving-patterns.json")
DS = {"type": "prometheus", "uid": "${datasource}"}
V = 'variant=~"$variant"'
R = 'rollout=~"$rollout"'
RI = "$__rate_interval"


def rate(metric: str, match: str = V, by: str = "variant", window: str = RI) -> str:
    return f"sum by ({by}) (rate({metric}{{{match}}}[{window}]))"


# Per variant: failed upstream attempts + answers with status >= 500, over attempts (answers + failed),
# as the supervisor counts them; `or 0 * answered` keeps variants that have no failure series yet.
ANSWERED = rate("router_requests_total")
FAILED = f'({rate("router_upstream_errors_total")} or 0 * {ANSWERED})'
V5XX = V + ',status=~"5.."'
ANSWERED_5XX = f'({rate("router_requests_total", V5XX)} or 0 * {ANSWERED})'
ERROR_RATE = f"({FAILED} + {ANSWERED_5XX}) / ({ANSWERED} + {FAILED})"
ACCURACY = (f'{rate("router_feedback_correct_total", window="5m")} / '
            f'{rate("router_feedback_labels_total", window="5m")}')
MEAN_REWARD = (f"sum by (variant) (delta(router_feedback_reward_sum{{{V}}}[5m])) / "
               f"sum by (variant) (increase(router_feedback_rewards_total{{{V}}}[5m]))")


def quantile(q: float, window: str = RI) -> str:
    return f"histogram_quantile({q}, sum by (variant, le) (rate(router_upstream_seconds_bucket{{{V}}}[{window}])))"


def target(expr: str, legend: str, ref: str = "A") -> dict[str, Any]:
    return {"datasource": DS, "expr": expr, "legendFormat": legend, "refId": ref}


class Layout:
    def __init__(self) -> None:
        self.panels: list[dict[str, Any]] = []
        self.y = 0
        self.x = 0
        self.row_h = 0
        self.next_id = 1

    def _place(self, w: int, h: int) -> dict[str, int]:
        if self.x + w > 24:
            self.x, self.y, self.row_h = 0, self.y + self.row_h, 0
        pos = {"x": self.x, "y": self.y, "w": w, "h": h}
        self.x += w
        self.row_h = max(self.row_h, h)
        return pos

    def _id(self) -> int:
        self.next_id += 1
        return self.next_id - 1

    def row(self, title: str, repeat: str | None = None) -> None:
        self.x, self.y, self.row_h = 0, self.y + self.row_h, 0
        panel: dict[str, Any] = {"type": "row", "id": self._id(), "title": title, "collapsed": False, "panels": [],
                                 "gridPos": self._place(24, 1)}
        if repeat:
            panel["repeat"] = repeat
        self.panels.append(panel)
        self.x, self.y, self.row_h = 0, self.y + 1, 0

    def panel(self, kind: str, title: str, targets: list[dict[str, Any]], *, unit: str = "short", w: int = 8,
              h: int = 8, description: str = "", **options: Any) -> None:
        for i, t in enumerate(targets):
            t["refId"] = chr(ord("A") + i)
        defaults: dict[str, Any] = {"unit": unit}
        if "min" in options:
            defaults["min"] = options.pop("min")
        if "max" in options:
            defaults["max"] = options.pop("max")
        self.panels.append({
            "type": kind, "id": self._id(), "title": title, "description": description, "datasource": DS,
            "gridPos": self._place(w, h), "targets": targets,
            "fieldConfig": {"defaults": defaults, "overrides": []},
            "options": options or ({"legend": {"displayMode": "table", "placement": "right", "calcs": ["lastNotNull"]},
                                    "tooltip": {"mode": "multi"}} if kind == "timeseries" else {}),
        })

    def text(self, title: str, content: str, w: int = 24, h: int = 3) -> None:
        self.panels.append({"type": "text", "id": self._id(), "title": title, "gridPos": self._place(w, h),
                            "options": {"mode": "markdown", "content": content}})


def variable(name: str, query: str, label: str, *, multi: bool = True) -> dict[str, Any]:
    return {"name": name, "label": label, "type": "query", "datasource": DS,
            "query": {"query": query, "refId": f"{name}-values"}, "definition": query, "refresh": 2,
            "multi": multi, "includeAll": True, "allValue": ".*",
            "current": {"selected": True, "text": ["All"], "value": ["$__all"]}, "sort": 1}


def build() -> dict[str, Any]:
    g = Layout()
    g.row("Rollout (supervisor)")
    g.panel("stat", "Candidate weight", [target(f"supervisor_candidate_weight{{{R}}}", "{{rollout}}")],
            unit="percent", w=6, h=5, min=0, max=100,
            description="The candidate's weight in force, as the supervisor last set or read it.")
    g.panel("stat", "Step index", [target(f"supervisor_step_index{{{R}}}", "{{rollout}}")], w=6, h=5,
            description="Index into the rollout spec's steps.")
    g.panel("stat", "Routing config version", [target("max(router_config_version)", "version")], w=6, h=5)
    g.panel("stat", "Decisions (range)",
            [target(f"sum by (action) (increase(supervisor_decisions_total{{{R}}}[$__range]))", "{{action}}")],
            w=6, h=5, description="Decisions recorded over the dashboard's time range, by action.")
    g.panel("timeseries", "Candidate weight over time", [target(f"supervisor_candidate_weight{{{R}}}", "{{rollout}}")],
            unit="percent", w=12, min=0, max=100)
    g.panel("timeseries", "Checks by outcome",
            [target(f"sum by (outcome) (increase(supervisor_checks_total{{{R}}}[{RI}]))", "{{outcome}}")], w=12)
    g.panel("timeseries", "Rule verdicts",
            [target(f"sum by (rule, verdict) (increase(supervisor_rule_verdicts_total{{{R}}}[{RI}]))",
                    "{{rule}} {{verdict}}")], w=12,
            description="Each rule's verdict at each check (pass | fail | inconclusive | blocked).")
    g.panel("timeseries", "Sequential tests: log Λ",
            [target(f"supervisor_sequential_log_lambda{{{R}}}", "{{test}}")], w=12,
            description="The rollback fires when log Λ reaches log(1/α) of the test (see the decision records).")

    g.row("Traffic and health per variant")
    g.panel("timeseries", "Request rate", [target(ANSWERED, "{{variant}}")], unit="reqps", w=8)
    g.panel("timeseries", "Error rate", [target(ERROR_RATE, "{{variant}}")], unit="percentunit", w=8, min=0,
            description="(failed upstream attempts + answers with status >= 500) / (answers + failed attempts)")
    g.panel("timeseries", "Upstream latency p50 / p99",
            [target(quantile(0.5), "{{variant}} p50"), target(quantile(0.99), "{{variant}} p99")], unit="s", w=8)
    g.panel("timeseries", "Failovers",
            [target(f"sum by (from_variant, to_variant, reason) (rate(router_failover_total[{RI}]))",
                    "{{from_variant}} -> {{to_variant}} ({{reason}})")], unit="reqps", w=8)
    g.panel("timeseries", "Ejected variants", [target(f"max by (variant) (router_variant_ejected{{{V}}})",
                                                      "{{variant}}")], w=8, min=0, max=1)
    g.panel("timeseries", "Traffic share by policy decision (bandit arm shares)",
            [target(f"{rate('router_decisions_total')} / ignoring (variant) group_left "
                    f"sum(rate(router_decisions_total[{RI}]))", "{{variant}}")], unit="percentunit", w=8, min=0,
            max=1, description="Share of the policy's choices per variant: canary weights, A/B split or bandit arms.")

    g.row("Model quality per variant (outcome feedback)")
    g.panel("timeseries", "Accuracy (5 m)", [target(ACCURACY, "{{variant}}")], unit="percentunit", w=8,
            description="router_feedback_correct_total / router_feedback_labels_total over 5 minutes.")
    g.panel("timeseries", "Mean reward (5 m)", [target(MEAN_REWARD, "{{variant}}")], w=8,
            description="delta() of the reward sum (rewards may be negative, so never rate()) over the count.")
    g.panel("timeseries", "Labelled feedback rate", [target(rate("router_feedback_labels_total"), "{{variant}}")],
            unit="reqps", w=8)
    g.panel("timeseries", "Shadow label agreement",
            [target(f'{rate("router_shadow_agreeing_rows_total", window="5m")} / '
                    f'{rate("router_shadow_compared_rows_total", window="5m")}', "{{variant}}")],
            unit="percentunit", w=8, max=1)
    g.panel("timeseries", "Shadow mean |Δp|",
            [target(f'{rate("router_shadow_abs_prob_diff_sum_total", window="5m")} / '
                    f'{rate("router_shadow_compared_rows_total", window="5m")}', "{{variant}}")], w=8)
    g.panel("timeseries", "Predicted labels",
            [target(rate("router_predicted_labels_total", by="variant, label"), "{{variant}} label {{label}}")],
            unit="reqps", w=8)
    g.panel("timeseries", "Input drift: largest PSI (pooled and per variant)",
            [target(f'max by (variant) (supervisor_input_psi{{{R},feature="overall"}})', "{{variant}}")], w=8,
            min=0, description="Live inputs (the router's input tap) against the candidate's training bins: the "
                               "largest per-feature PSI. variant=all pools every variant's rows (the input_drift "
                               "rule's figure). Warn 0.1, block 0.25 by default.")
    g.panel("timeseries", "Input drift PSI per feature (pooled)",
            [target(f'max by (feature) (supervisor_input_psi{{{R},variant="all",feature!="overall"}})',
                    "{{feature}}")], w=8, min=0)
    g.panel("timeseries", "Input drift KS per feature (pooled)",
            [target(f'max by (feature) (supervisor_input_ks{{{R},variant="all"}})', "{{feature}}")], w=8, min=0,
            max=1, description="Two-sample KS statistic of the live inputs against the holdout set.")

    g.row("Variant $variant", repeat="variant")
    one = 'variant=~"$variant"'
    g.panel("stat", "Requests / s", [target(f"sum(rate(router_requests_total{{{one}}}[{RI}]))", "req/s")],
            unit="reqps", w=6, h=5)
    g.panel("stat", "Error rate", [target(ERROR_RATE, "{{variant}}")], unit="percentunit", w=6, h=5)
    g.panel("stat", "p99 latency", [target(quantile(0.99), "{{variant}}")], unit="s", w=6, h=5)
    g.panel("stat", "Accuracy (5 m)", [target(ACCURACY, "{{variant}}")], unit="percentunit", w=6, h=5)

    return {
        "title": "serving-patterns: router and supervisor",
        "uid": "serving-patterns",
        "description": "Per-variant traffic, errors, latency and model quality from the router; the supervisor's "
                       "rollout (weights, steps, decisions, rule verdicts, sequential tests).",
        "tags": ["serving-patterns", "router", "supervisor"],
        "editable": True,
        "schemaVersion": 39,
        "version": 1,
        "refresh": "10s",
        "time": {"from": "now-1h", "to": "now"},
        "timezone": "browser",
        "graphTooltip": 1,
        "templating": {"list": [
            {"name": "datasource", "label": "Prometheus", "type": "datasource", "query": "prometheus",
             "current": {}, "hide": 0, "refresh": 1},
            variable("rollout", "label_values(supervisor_step_index, rollout)", "Rollout"),
            variable("variant", "label_values(router_requests_total, variant)", "Variant"),
        ]},
        "annotations": {"list": [{
            "name": "Supervisor actions", "datasource": DS, "enable": True, "iconColor": "orange",
            "expr": f'changes(supervisor_candidate_weight{{{R}}}[1m]) > 0',
            "titleFormat": "candidate weight changed", "step": "30s",
        }]},
        "panels": g.panels,
    }


def render() -> str:
    return json.dumps(build(), indent=2, ensure_ascii=False) + "\n"


if __name__ == "__main__":
    OUT.write_text(render())
    print(f"wrote {OUT}")
