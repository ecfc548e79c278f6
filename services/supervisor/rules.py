"""Rules: candidate against stable over the same window, each with a verdict and its evidence.

Every rule returns a :class:`RuleResult` — both variants' values and sample sizes, the
threshold, the test statistic and p-value where there is a test, the verdict and a one-sentence
reason — from :func:`evaluate_rule`.

Verdicts: ``pass``, ``fail``, ``inconclusive``. Inconclusive is the answer whenever the data
cannot support a decision either way, and it is never a pass:

- a window is missing, stale (observed longer than ``stale_after_s`` ago), marked as broken
  (a counter reset), or the two variants' windows do not cover the same span;
- a metric is missing or was NaN (``None`` in :mod:`.windows`; NaN is never read as 0);
- either variant had no traffic in the window (no traffic is never healthy);
- either variant has fewer samples than the rule's minimum (requests, labels, rewards...);
- the estimate is past the threshold but not yet significant: more data will tell.

What each rule measures (``threshold`` is the rule's tolerance, see ``spec.py``):

================  ==============================================  ===============================
rule              candidate vs stable                             test (statistic, p-value)
================  ==============================================  ===============================
error_rate        errors / requests, increase                     one-sided z-test against the margin
latency_p99       p99 latency, ratio (plus an absolute slack)     none: the ratio
accuracy          correct / labelled feedback, drop               one-sided z-test against the margin
reward            mean reward, drop                               one-sided Welch t-test, margin
shadow_agreement  share of rows with the stable's label           one-sided binomial test
shadow_abs_dp     mean |p_shadow - p_primary|                     none: the mean
ab_verdict        conversion rate, always-valid interval          mixture SPRT interval
input_drift       live inputs vs training bins (largest PSI)      none: the PSI
label_drift       predicted-label distribution, PSI               chi-square test of the counts
================  ==============================================  ===============================

Error rate, accuracy and reward test the *tolerance*, not zero: the null hypothesis is "the
candidate is worse by at most ``threshold``" (an increase of the error rate, a drop of accuracy
or reward), and the rule fails only when the data reject it at ``alpha`` — the candidate is
significantly worse than the tolerance, not merely worse. It passes when the estimate is within
the tolerance; in between (past the threshold, not yet significantly) it is inconclusive and
waits for more data. Testing against zero instead would fail an equally good candidate on the
chance excess of any repeated look (measured: about 1 good canary in 100 rolled back); against
the margin that takes a chance excess of a whole tolerance. The proportion rules use the
unpooled Wald z statistic ``(d - threshold) / sqrt(p_c(1-p_c)/n_c + p_s(1-p_s)/n_s)``, sound at
the minimum sample sizes the rules insist on; the statistic reported is that z (or Welch's t),
the observed difference is in ``details``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from scipy import stats

from .drift import DriftReport, label_psi
from .sequential import proportion_confidence_sequence
from .spec import (
    ABVerdictRule,
    AccuracyRule,
    ErrorRateRule,
    InputDriftRule,
    LabelDriftRule,
    LatencyRule,
    RewardRule,
    ShadowAgreementRule,
    ShadowDpRule,
)
from .windows import VariantWindow

Verdict = Literal["pass", "fail", "inconclusive"]
PASS: Verdict = "pass"
FAIL: Verdict = "fail"
INCONCLUSIVE: Verdict = "inconclusive"

#: Windows of the two variants count as the same span when their starts and ends differ by at
#: most this many seconds, or 2 % of the window, whichever is larger (separate scrapes of the
#: router and a model server are never exactly simultaneous).
SAME_WINDOW_TOLERANCE_S = 1.0
SAME_WINDOW_TOLERANCE_FRACTION = 0.02


@dataclass(frozen=True)
class RuleResult:
    """One rule's verdict with its evidence (an entry of every decision record)."""

    rule: str
    """The rule's name (its metric unless named)."""
    metric: str
    verdict: Verdict
    reason: str
    """One sentence: why this verdict, with the numbers."""
    threshold: float
    on_fail: str
    """rollback | block: what a failure does."""
    stable_value: float | None = None
    candidate_value: float | None = None
    stable_n: int | None = None
    """Samples behind stable_value (requests, labels, rewards, rows...)."""
    candidate_n: int | None = None
    statistic: float | None = None
    p_value: float | None = None
    warning: str | None = None
    """Set when the rule passes but something deserves a look (input drift above warn)."""
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {k: json_safe(getattr(self, k)) for k in self.__dataclass_fields__}


@dataclass(frozen=True)
class RuleContext:
    """What every rule needs besides the data."""

    now: float
    """Time of the check (unix seconds): the staleness clock."""
    stale_after_s: float
    min_samples: int
    """The rollout's minimum samples per variant (a rule may ask for more)."""


@dataclass(frozen=True)
class Evidence:
    """All the data of one check: both variants' windows and the side reports."""

    stable: VariantWindow | None
    candidate: VariantWindow | None
    ab_report: Mapping[str, Any] | None = None
    """The router's A/B report (``GET /experiments/{name}``), as the A/B policy's ``report()``."""
    ab_observed_at: float | None = None
    """When the A/B report was read."""
    drift: DriftReport | None = None


def json_safe(value: Any) -> Any:
    """JSON has no NaN or Infinity: non-finite numbers are written as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def _fmt(value: float | None, digits: int = 4) -> str:
    return "n/a" if value is None else f"{value:.{digits}g}"


class _Builder:
    """Fills the common fields of a rule's results."""

    def __init__(self, rule: Any) -> None:
        self.rule = rule

    def result(self, verdict: Verdict, reason: str, **values: Any) -> RuleResult:
        return RuleResult(
            rule=self.rule.rule_name,
            metric=self.rule.metric,
            verdict=verdict,
            reason=reason,
            threshold=float(self.rule.threshold),
            on_fail=self.rule.on_fail,
            **values,
        )

    def inconclusive(self, reason: str, **values: Any) -> RuleResult:
        return self.result(INCONCLUSIVE, reason, **values)


def _window_problem(ev: Evidence, ctx: RuleContext) -> str | None:
    """Why the windows cannot be compared at all, or None."""
    for role, window in (("stable", ev.stable), ("candidate", ev.candidate)):
        if window is None:
            return f"no metrics window for the {role}"
        if window.problem:
            return f"{role} window unusable: {window.problem}"
        age = ctx.now - window.observed_at
        if age > ctx.stale_after_s:
            return f"{role} metrics are stale: observed {age:.0f} s ago (stale after {ctx.stale_after_s:.0f} s)"
    assert ev.stable is not None and ev.candidate is not None
    span = max(ev.stable.duration_s, ev.candidate.duration_s)
    tolerance = max(SAME_WINDOW_TOLERANCE_S, SAME_WINDOW_TOLERANCE_FRACTION * span)
    if abs(ev.stable.start - ev.candidate.start) > tolerance or abs(ev.stable.end - ev.candidate.end) > tolerance:
        return (
            f"the variants' windows differ ([{ev.stable.start:.0f}, {ev.stable.end:.0f}] vs "
            f"[{ev.candidate.start:.0f}, {ev.candidate.end:.0f}]): not a comparison over the same window"
        )
    return None


def _traffic_problem(ev: Evidence) -> str | None:
    assert ev.stable is not None and ev.candidate is not None
    for role, window in (("stable", ev.stable), ("candidate", ev.candidate)):
        if window.requests is None or window.errors is None:
            return f"request or error counts missing for the {role}"
    idle = [role for role, w in (("stable", ev.stable), ("candidate", ev.candidate)) if w.requests == 0]
    if idle:
        return f"no traffic on the {' and the '.join(idle)} in the window: no traffic is never healthy"
    return None


def _shortfall(what: str, samples: dict[str, int], need: int, window: VariantWindow | None) -> str | None:
    """'candidate has 40 of 200 labels needed; ~320 s more at the current rate', or None."""
    short = {role: n for role, n in samples.items() if n < need}
    if not short:
        return None
    role, have = min(short.items(), key=lambda kv: kv[1])
    text = f"too few {what}: the {role} has {have} of the {need} needed"
    if window is not None and window.duration_s > 0:
        rate = have / window.duration_s
        text += f"; about {(need - have) / rate:.0f} s more at the current rate" if rate > 0 else "; none arrived yet"
    return text


def _min_samples(rule: Any, ctx: RuleContext) -> int:
    return rule.min_samples if rule.min_samples is not None else ctx.min_samples


def _excess_test(bad_c: int, n_c: int, bad_s: int, n_s: int, margin: float) -> tuple[float | None, float]:
    """(z, p) of H0: rate_c - rate_s <= margin against 'more than margin' (one-sided Wald test)."""
    rate_c, rate_s = bad_c / n_c, bad_s / n_s
    excess = rate_c - rate_s - margin
    variance = rate_c * (1 - rate_c) / n_c + rate_s * (1 - rate_s) / n_s
    if variance == 0.0:
        # All-or-nothing on both sides: the difference is known exactly.
        return None, 0.0 if excess > 0 else 1.0
    z = excess / math.sqrt(variance)
    return z, float(stats.norm.sf(z))


def _rate_verdict(excess: float, threshold: float, p_value: float, alpha: float) -> Verdict:
    if excess <= threshold:
        return PASS
    return FAIL if p_value < alpha else INCONCLUSIVE


def error_rate(rule: ErrorRateRule, ev: Evidence, ctx: RuleContext) -> RuleResult:
    b = _Builder(rule)
    problem = _window_problem(ev, ctx) or _traffic_problem(ev)
    if problem:
        return b.inconclusive(problem)
    s, c = ev.stable, ev.candidate
    assert s is not None and c is not None and s.requests and c.requests
    values: dict[str, Any] = {
        "stable_value": s.error_rate,
        "candidate_value": c.error_rate,
        "stable_n": s.requests,
        "candidate_n": c.requests,
    }
    short = _shortfall("requests", {"stable": s.requests, "candidate": c.requests}, _min_samples(rule, ctx), c)
    if short:
        return b.inconclusive(short, **values)
    excess = c.error_rate - s.error_rate  # type: ignore[operator]
    z, p = _excess_test(c.errors, c.requests, s.errors, s.requests, rule.threshold)  # type: ignore[arg-type]
    verdict = _rate_verdict(excess, rule.threshold, p, rule.alpha)
    rates = f"error rate {_fmt(c.error_rate)} (n={c.requests}) vs stable {_fmt(s.error_rate)} (n={s.requests})"
    reason = {
        PASS: f"{rates}: increase {excess:+.4f} within {rule.threshold:g}",
        FAIL: f"{rates}: increase {excess:+.4f} significantly above {rule.threshold:g} (p={p:.2g} < {rule.alpha:g})",
        INCONCLUSIVE: f"{rates}: increase {excess:+.4f} exceeds {rule.threshold:g} but not significantly yet "
        f"(p={p:.2g})",
    }[verdict]
    return b.result(verdict, reason, statistic=z, p_value=p, details={"difference": excess}, **values)


def latency_p99(rule: LatencyRule, ev: Evidence, ctx: RuleContext) -> RuleResult:
    b = _Builder(rule)
    problem = _window_problem(ev, ctx) or _traffic_problem(ev)
    if problem:
        return b.inconclusive(problem)
    s, c = ev.stable, ev.candidate
    assert s is not None and c is not None
    values: dict[str, Any] = {
        "stable_value": s.p99_s,
        "candidate_value": c.p99_s,
        "stable_n": s.requests,
        "candidate_n": c.requests,
    }
    need = max(_min_samples(rule, ctx), 100)
    short = _shortfall("requests", {"stable": s.requests or 0, "candidate": c.requests or 0}, need, c)
    if short:
        return b.inconclusive(short, **values)
    missing = [role for role, w in (("stable", s), ("candidate", c)) if w.p99_s is None]
    if missing:
        return b.inconclusive(f"p99 latency missing (or NaN) for the {' and the '.join(missing)}", **values)
    ps, pc = s.p99_s, c.p99_s
    assert ps is not None and pc is not None
    ratio = pc / ps if ps > 0 else (1.0 if pc == 0 else math.inf)
    slower = pc - ps
    text = f"p99 {pc * 1000:.1f} ms vs stable {ps * 1000:.1f} ms (x{ratio:.2f})"
    if ratio > rule.threshold and slower > rule.min_difference_s:
        return b.result(FAIL, f"{text}: over x{rule.threshold:g} and {slower * 1000:.1f} ms slower",
                        statistic=ratio, **values)
    if ratio > rule.threshold:
        why = (
            f"over x{rule.threshold:g} but only {slower * 1000:.2f} ms slower "
            f"(tolerated below {rule.min_difference_s * 1000:g} ms)"
        )
    else:
        why = f"within x{rule.threshold:g}"
    return b.result(PASS, f"{text}: {why}", statistic=ratio, **values)


def accuracy(rule: AccuracyRule, ev: Evidence, ctx: RuleContext) -> RuleResult:
    b = _Builder(rule)
    problem = _window_problem(ev, ctx) or _traffic_problem(ev)
    if problem:
        return b.inconclusive(problem)
    s, c = ev.stable, ev.candidate
    assert s is not None and c is not None
    missing = [role for role, w in (("stable", s), ("candidate", c)) if w.feedback is None]
    if missing:
        # Accumulated windows keep a group only where both variants reported it, so "missing for
        # both" may mean "missing for one in every interval".
        return b.inconclusive(f"no outcome feedback (labels) from both variants over the window "
                              f"(missing for the {' and the '.join(missing)})")
    fs, fc = s.feedback, c.feedback
    assert fs is not None and fc is not None
    values: dict[str, Any] = {
        "stable_value": fs.accuracy,
        "candidate_value": fc.accuracy,
        "stable_n": fs.labelled,
        "candidate_n": fc.labelled,
    }
    short = _shortfall("labelled outcomes", {"stable": fs.labelled, "candidate": fc.labelled},
                       _min_samples(rule, ctx), c)
    if short:
        return b.inconclusive(short, **values)
    drop = fs.accuracy - fc.accuracy  # type: ignore[operator]
    z, p = _excess_test(fc.labelled - fc.correct, fc.labelled, fs.labelled - fs.correct, fs.labelled, rule.threshold)
    verdict = _rate_verdict(drop, rule.threshold, p, rule.alpha)
    text = f"accuracy {_fmt(fc.accuracy)} (n={fc.labelled}) vs stable {_fmt(fs.accuracy)} (n={fs.labelled})"
    reason = {
        PASS: f"{text}: drop {drop:+.4f} within {rule.threshold:g}",
        FAIL: f"{text}: drop {drop:+.4f} significantly above {rule.threshold:g} (p={p:.2g} < {rule.alpha:g})",
        INCONCLUSIVE: f"{text}: drop {drop:+.4f} exceeds {rule.threshold:g} but not significantly yet (p={p:.2g})",
    }[verdict]
    return b.result(verdict, reason, statistic=z, p_value=p, details={"drop": drop}, **values)


def reward(rule: RewardRule, ev: Evidence, ctx: RuleContext) -> RuleResult:
    b = _Builder(rule)
    problem = _window_problem(ev, ctx) or _traffic_problem(ev)
    if problem:
        return b.inconclusive(problem)
    s, c = ev.stable, ev.candidate
    assert s is not None and c is not None
    missing = [role for role, w in (("stable", s), ("candidate", c)) if w.rewards is None]
    if missing:
        return b.inconclusive(f"no rewards from both variants over the window "
                              f"(missing for the {' and the '.join(missing)})")
    rs, rc = s.rewards, c.rewards
    assert rs is not None and rc is not None
    values: dict[str, Any] = {
        "stable_value": rs.mean,
        "candidate_value": rc.mean,
        "stable_n": rs.count,
        "candidate_n": rc.count,
    }
    short = _shortfall("rewards", {"stable": rs.count, "candidate": rc.count}, max(2, _min_samples(rule, ctx)), c)
    if short:
        return b.inconclusive(short, **values)
    drop = rs.mean - rc.mean  # type: ignore[operator]
    vs, vc = rs.variance or 0.0, rc.variance or 0.0
    if vs == 0.0 and vc == 0.0:
        # Constant rewards on both sides: the difference is exact, there is nothing to test.
        t, p = None, 0.0 if drop > rule.threshold else 1.0
    else:
        # Shifting the candidate's mean up by the margin tests H0: drop <= threshold.
        test = stats.ttest_ind_from_stats(
            rc.mean + rule.threshold, math.sqrt(vc), rc.count, rs.mean, math.sqrt(vs), rs.count,
            equal_var=False, alternative="less",
        )
        t, p = float(test.statistic), float(test.pvalue)
    verdict = _rate_verdict(drop, rule.threshold, p, rule.alpha)
    text = f"mean reward {_fmt(rc.mean)} (n={rc.count}) vs stable {_fmt(rs.mean)} (n={rs.count})"
    reason = {
        PASS: f"{text}: drop {drop:+.4g} within {rule.threshold:g}",
        FAIL: f"{text}: drop {drop:+.4g} significantly above {rule.threshold:g} (Welch p={p:.2g} < {rule.alpha:g})",
        INCONCLUSIVE: f"{text}: drop {drop:+.4g} exceeds {rule.threshold:g} but not significantly yet (p={p:.2g})",
    }[verdict]
    return b.result(verdict, reason, statistic=t, p_value=p, details={"drop": drop}, **values)


def _shadow_data(rule: Any, ev: Evidence, ctx: RuleContext) -> tuple[Any, RuleResult | None]:
    b = _Builder(rule)
    problem = _window_problem(ev, ctx) or _traffic_problem(ev)
    if problem:
        return None, b.inconclusive(problem)
    c = ev.candidate
    assert c is not None
    if c.shadow is None:
        return None, b.inconclusive("no shadow comparisons reported for the candidate")
    short = _shortfall("compared rows", {"candidate": c.shadow.compared}, _min_samples(rule, ctx), c)
    if short:
        return None, b.inconclusive(short, candidate_n=c.shadow.compared, stable_n=c.shadow.compared)
    return c.shadow, None


def shadow_agreement(rule: ShadowAgreementRule, ev: Evidence, ctx: RuleContext) -> RuleResult:
    shadow, early = _shadow_data(rule, ev, ctx)
    if early:
        return early
    b = _Builder(rule)
    agreement = shadow.agreement
    p = float(stats.binomtest(shadow.agreeing, shadow.compared, rule.threshold, alternative="less").pvalue)
    values: dict[str, Any] = {
        "candidate_value": agreement,
        "stable_n": shadow.compared,
        "candidate_n": shadow.compared,
        "statistic": agreement,
        "p_value": p,
        "details": {"compared_with": "the stable's labels on the same rows"},
    }
    text = f"agreement with the stable {agreement:.4f} over {shadow.compared} rows"
    if agreement >= rule.threshold:
        return b.result(PASS, f"{text}: at least {rule.threshold:g}", **values)
    if p < rule.alpha:
        return b.result(FAIL, f"{text}: below {rule.threshold:g} (binomial p={p:.2g} < {rule.alpha:g})", **values)
    return b.result(INCONCLUSIVE, f"{text}: below {rule.threshold:g} but not significantly (p={p:.2g})", **values)


def shadow_abs_dp(rule: ShadowDpRule, ev: Evidence, ctx: RuleContext) -> RuleResult:
    shadow, early = _shadow_data(rule, ev, ctx)
    if early:
        return early
    b = _Builder(rule)
    mean = shadow.mean_abs_dp
    values: dict[str, Any] = {
        "candidate_value": mean,
        "stable_n": shadow.compared,
        "candidate_n": shadow.compared,
        "statistic": mean,
    }
    text = f"mean |dp| against the stable {mean:.4f} over {shadow.compared} rows"
    if mean <= rule.threshold:
        return b.result(PASS, f"{text}: within {rule.threshold:g}", **values)
    return b.result(FAIL, f"{text}: above {rule.threshold:g}", **values)


def _arm(report: Mapping[str, Any], name: str) -> tuple[int, int] | None:
    arms = report.get("arms")
    arm = arms.get(name) if isinstance(arms, Mapping) else None
    if not isinstance(arm, Mapping):
        return None
    n, conversions = arm.get("n"), arm.get("conversions")
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in (n, conversions)):
        return None
    if conversions > n:  # type: ignore[operator]
        return None
    return n, conversions  # type: ignore[return-value]


def ab_verdict(rule: ABVerdictRule, ev: Evidence, ctx: RuleContext, stable: str, candidate: str) -> RuleResult:
    """The router's A/B report read with an always-valid interval for candidate - stable."""
    b = _Builder(rule)
    report = ev.ab_report
    if report is None:
        return b.inconclusive("no A/B report")
    if ev.ab_observed_at is None:
        return b.inconclusive("the A/B report has no observation time; its freshness is unknown")
    age = ctx.now - ev.ab_observed_at
    if age > ctx.stale_after_s:
        return b.inconclusive(f"the A/B report is stale: read {age:.0f} s ago (stale after {ctx.stale_after_s:.0f} s)")
    arm_s, arm_c = _arm(report, stable), _arm(report, candidate)
    if arm_s is None or arm_c is None:
        names = sorted(report.get("arms", {})) if isinstance(report.get("arms"), Mapping) else []
        return b.inconclusive(f"the A/B report has no usable arms {stable!r} and {candidate!r} (arms: {names})")
    (n_s, x_s), (n_c, x_c) = arm_s, arm_c
    values: dict[str, Any] = {
        "stable_value": x_s / n_s if n_s else None,
        "candidate_value": x_c / n_c if n_c else None,
        "stable_n": n_s,
        "candidate_n": n_c,
    }
    if n_s == 0 or n_c == 0:
        idle = " and the ".join(r for r, n in (("stable", n_s), ("candidate", n_c)) if n == 0)
        return b.inconclusive(f"no A/B samples for the {idle}: no traffic is never healthy", **values)
    short = _shortfall("A/B samples", {"stable": n_s, "candidate": n_c}, _min_samples(rule, ctx), None)
    if short:
        return b.inconclusive(short, **values)
    cs = proportion_confidence_sequence(x_s, n_s, x_c, n_c, tau=rule.tau, alpha=rule.alpha)
    if cs is None:
        return b.inconclusive("both arms have the same all-or-nothing outcome: nothing to compare yet", **values)
    text = (
        f"conversion {_fmt(values['candidate_value'])} (n={n_c}) vs stable {_fmt(values['stable_value'])} "
        f"(n={n_s}); always-valid {1 - rule.alpha:.0%} interval for the difference [{cs.low:+.4f}, {cs.high:+.4f}]"
    )
    details = {"interval": [cs.low, cs.high], "router_verdict": report.get("verdict"), "winner": None}
    common = {"statistic": cs.difference, "p_value": cs.p_value, **values}
    if cs.high < 0:
        details["winner"] = stable
        return b.result(FAIL, f"{text}: the candidate converts significantly worse", details=details, **common)
    if cs.low > 0:
        details["winner"] = candidate
        return b.result(PASS, f"{text}: the candidate converts significantly better", details=details, **common)
    if cs.low >= -rule.threshold:
        return b.result(PASS, f"{text}: at worst {rule.threshold:g} below the stable (non-inferior)",
                        details=details, **common)
    return b.result(INCONCLUSIVE, f"{text}: not yet shown within {rule.threshold:g} of the stable",
                    details=details, **common)


def input_drift(rule: InputDriftRule, ev: Evidence, ctx: RuleContext) -> RuleResult:
    b = _Builder(rule)
    report = ev.drift
    if report is None:
        return b.inconclusive("no input drift report (live input sample) available")
    age = ctx.now - report.observed_at
    if age > ctx.stale_after_s:
        return b.inconclusive(f"the drift report is stale: sampled {age:.0f} s ago (stale after "
                              f"{ctx.stale_after_s:.0f} s)")
    values: dict[str, Any] = {"candidate_value": report.overall_psi, "candidate_n": report.rows}
    short = _shortfall("live input rows", {"live sample": report.rows}, _min_samples(rule, ctx), None)
    if short:
        return b.inconclusive(short, **values)
    worst = sorted(report.features, key=lambda f: f.psi, reverse=True)[:5]
    details = {
        "feature": report.overall_feature,
        "mean_psi": report.mean_psi,
        "top_features": {f.name: f.psi for f in worst},
        "skipped": list(report.skipped),
    }
    text = f"largest input PSI {report.overall_psi:.3f} ({report.overall_feature!r}) over {report.rows} rows"
    if report.overall_psi >= rule.threshold:
        return b.result(FAIL, f"{text}: at or above {rule.threshold:g}", statistic=report.overall_psi,
                        details=details, **values)
    warning = None
    if report.overall_psi >= rule.warn:
        warning = (
            f"input PSI {report.overall_psi:.3f} on {report.overall_feature!r} is above the warn level {rule.warn:g}"
        )
    return b.result(PASS, f"{text}: below {rule.threshold:g}", statistic=report.overall_psi, warning=warning,
                    details=details, **values)


def label_drift(rule: LabelDriftRule, ev: Evidence, ctx: RuleContext) -> RuleResult:
    b = _Builder(rule)
    problem = _window_problem(ev, ctx) or _traffic_problem(ev)
    if problem:
        return b.inconclusive(problem)
    s, c = ev.stable, ev.candidate
    assert s is not None and c is not None
    missing = [role for role, w in (("stable", s), ("candidate", c)) if w.predicted_labels is None]
    if missing:
        return b.inconclusive(f"predicted-label counts missing for the {' and the '.join(missing)}")
    ls, lc = s.predicted_labels, c.predicted_labels
    assert ls is not None and lc is not None
    ns, nc = sum(ls.values()), sum(lc.values())
    values: dict[str, Any] = {"stable_n": ns, "candidate_n": nc}
    short = _shortfall("predictions", {"stable": ns, "candidate": nc}, _min_samples(rule, ctx), c)
    if short:
        return b.inconclusive(short, **values)
    value = label_psi(lc, ls)
    labels = [k for k in sorted(set(ls) | set(lc)) if ls.get(k, 0) + lc.get(k, 0) > 0]
    if len(labels) < 2:
        p = 1.0  # one label on both sides: identical distributions
    else:
        table = [[lc.get(k, 0) for k in labels], [ls.get(k, 0) for k in labels]]
        p = float(stats.chi2_contingency(table).pvalue)
    details = {
        "candidate_shares": {k: lc.get(k, 0) / nc for k in labels},
        "stable_shares": {k: ls.get(k, 0) / ns for k in labels},
    }
    common = {"statistic": value, "p_value": p, "candidate_value": value, "details": details, **values}
    text = f"predicted-label PSI against the stable {value:.3f} (n={nc} vs {ns})"
    if value <= rule.threshold:
        return b.result(PASS, f"{text}: within {rule.threshold:g}", **common)
    if p < rule.alpha:
        return b.result(FAIL, f"{text}: above {rule.threshold:g} (chi-square p={p:.2g} < {rule.alpha:g})", **common)
    return b.result(INCONCLUSIVE, f"{text}: above {rule.threshold:g} but not significant yet (p={p:.2g})", **common)


def evaluate_rule(rule: Any, ev: Evidence, ctx: RuleContext, *, stable: str, candidate: str) -> RuleResult:
    """Evaluate one rule of a spec. ``stable``/``candidate`` name the variants (A/B report arms)."""
    if isinstance(rule, ErrorRateRule):
        return error_rate(rule, ev, ctx)
    if isinstance(rule, LatencyRule):
        return latency_p99(rule, ev, ctx)
    if isinstance(rule, AccuracyRule):
        return accuracy(rule, ev, ctx)
    if isinstance(rule, RewardRule):
        return reward(rule, ev, ctx)
    if isinstance(rule, ShadowAgreementRule):
        return shadow_agreement(rule, ev, ctx)
    if isinstance(rule, ShadowDpRule):
        return shadow_abs_dp(rule, ev, ctx)
    if isinstance(rule, ABVerdictRule):
        return ab_verdict(rule, ev, ctx, stable, candidate)
    if isinstance(rule, InputDriftRule):
        return input_drift(rule, ev, ctx)
    if isinstance(rule, LabelDriftRule):
        return label_drift(rule, ev, ctx)
    raise TypeError(f"no evaluation for rule {type(rule).__name__}")
