"""Prometheus metrics of the supervisor (exposed at its /metrics).

    supervisor_decisions_total{rollout, action, verdict}       counter  decisions recorded, by action taken
                                                                        (hold when a write was refused)
    supervisor_candidate_weight{rollout}                       gauge    candidate weight (percent) in force
                                                                        as the supervisor last set or read it
    supervisor_checks_total{rollout, outcome}                  counter  checks, by outcome: evaluated |
                                                                        router_unavailable | conflict |
                                                                        apply_failed | baseline
    supervisor_rule_verdicts_total{rollout, rule, verdict}     counter  each rule's verdict at each check
    supervisor_sequential_log_lambda{rollout, test}            gauge    log of each sequential test's statistic
    supervisor_step_index{rollout}                             gauge    index into the spec's steps
    supervisor_input_psi{rollout, variant, feature}            gauge    population stability index of the live
                                                                        inputs (router input tap) against the
                                                                        candidate's training bins; variant "all"
                                                                        = every variant's rows pooled; feature
                                                                        "overall" = the largest over features
    supervisor_input_ks{rollout, variant, feature}             gauge    two-sample KS statistic against the holdout
    supervisor_input_rows{rollout, variant}                    gauge    live rows in the drift sample
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge

DECISIONS = Counter("supervisor_decisions", "Decisions recorded.", ["rollout", "action", "verdict"])
CANDIDATE_WEIGHT = Gauge("supervisor_candidate_weight", "Candidate weight in percent in force.", ["rollout"])
CHECKS = Counter("supervisor_checks", "Checks run, by outcome.", ["rollout", "outcome"])
RULE_VERDICTS = Counter("supervisor_rule_verdicts", "Rule verdicts.", ["rollout", "rule", "verdict"])
SEQUENTIAL = Gauge("supervisor_sequential_log_lambda", "log Lambda of each sequential test.", ["rollout", "test"])
INPUT_PSI = Gauge("supervisor_input_psi", "Input PSI against the training bins.", ["rollout", "variant", "feature"])
INPUT_KS = Gauge("supervisor_input_ks", "Input KS statistic against the holdout.", ["rollout", "variant", "feature"])
INPUT_ROWS = Gauge("supervisor_input_rows", "Live rows in the drift sample.", ["rollout", "variant"])
STEP_INDEX = Gauge("supervisor_step_index", "Index into the rollout's steps.", ["rollout"])
