"""Rollout specs: what the supervisor rolls out, how fast, and what must hold at every step.

Declared in YAML (example with every key commented: ``patterns/canary/rollout.yaml``)::

    name: breast-cancer-v2
    kind: canary                  # canary | shadow | ab-test
    stable: stable                # variant names of the routing config
    candidate: candidate
    candidate_version: 2
    steps: [5, 25, 50]            # the last step is always 100: appended when missing
    bake_s: 300
    interval_s: 60
    min_samples: 200
    failure_limit: 3
    on_inconclusive: hold
    rules:
      - metric: error_rate
        threshold: 0.01
      - metric: accuracy
        threshold: 0.02

Every model forbids unknown keys and carries a docstring per field (the JSON schema's
descriptions). :func:`parse_spec` validates YAML text or a mapping and raises
:class:`RolloutSpecError` whose message names each problem by its key path
(``rules[1].threshold: ...``).

**Steps.** Candidate weights in percent, strictly increasing, each in (0, 100]. The last step is
always exactly 100: when the list does not end with 100, 100 is appended. Reaching it is the
promotion — at 100 % the candidate becomes the stable — so a canary needs at least one step
below 100 (the comparison needs traffic on both variants). A shadow rollout mirrors first
(weight 0) and then walks the same steps as a canary; an A/B test keeps the router's fixed split
and has no steps.

**Rules.** Each rule names its ``metric`` and its ``threshold`` (what the threshold means is
rule-specific, see each class). ``during`` says in which modes (shadow, canary, ab-test) it is
evaluated; ``on_fail`` whether a failure counts towards ``failure_limit`` and rolls back
(``rollback``) or only blocks promotion (``block``, the default of input drift: shifted inputs
are not the candidate's fault). ``min_samples`` overrides the rollout's minimum for that rule.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Annotated, Any, ClassVar, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from services.core.errors import InvalidInput

Kind = Literal["canary", "shadow", "ab-test"]
Mode = Literal["shadow", "canary", "ab-test"]
SequentialMetric = Literal["error_rate", "misprediction_rate", "reward"]

MODES_OF_KIND: dict[str, tuple[str, ...]] = {
    "canary": ("canary",),
    "shadow": ("shadow", "canary"),
    "ab-test": ("ab-test",),
}


class RolloutSpecError(InvalidInput):
    """The rollout spec is invalid; the message names every problem with its key path."""

    code = "invalid_rollout"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


class _Rule(_Strict):
    """Fields every rule has."""

    DEFAULT_DURING: ClassVar[tuple[str, ...]] = ("shadow", "canary", "ab-test")

    name: str | None = None
    """Name in decision records; default the metric. Needed only to tell two rules on the
    same metric apart."""
    min_samples: int | None = Field(default=None, ge=1)
    """Samples each variant needs before this rule may pass or fail; default the rollout's
    ``min_samples``. What a sample is depends on the rule (requests, labels, rewards...)."""
    on_fail: Literal["rollback", "block"] = "rollback"
    """rollback: a failed check counts towards ``failure_limit``, then the candidate is rolled
    back. block: a failed check only holds the rollout (no promotion) until it passes."""
    during: tuple[Mode, ...] | None = None
    """Modes in which the rule is evaluated (shadow, canary, ab-test); default per rule."""

    @property
    def rule_name(self) -> str:
        return self.name or self.metric  # type: ignore[attr-defined]

    def applies(self, mode: str) -> bool:
        return mode in (self.during if self.during is not None else self.DEFAULT_DURING)


class ErrorRateRule(_Rule):
    """Candidate's error rate against the stable's (one-sided z-test against the tolerance)."""

    metric: Literal["error_rate"]
    """error_rate."""
    threshold: float = Field(default=0.01, ge=0.0, le=1.0)
    """Largest tolerated increase of the error rate over the stable's, absolute (0.01 = one
    percentage point). Fails when the increase is significantly above it at ``alpha``."""
    alpha: float = Field(default=0.01, gt=0.0, lt=1.0)
    """Significance level of the one-sided test; small, because the rule is re-checked every
    interval (the sequential tests are the ones with a guarantee under repeated looks)."""


class LatencyRule(_Rule):
    """Candidate's p99 latency relative to the stable's over the same window."""

    metric: Literal["latency_p99"]
    """latency_p99."""
    threshold: float = Field(default=1.25, ge=1.0)
    """Largest tolerated ratio candidate p99 / stable p99 (1.25 = 25 % slower)."""
    min_difference_s: float = Field(default=0.005, ge=0.0)
    """Differences smaller than this never fail, whatever the ratio: at sub-millisecond
    latencies a ratio is mostly bucket resolution and noise."""
    min_samples: int | None = Field(default=None, ge=100)
    """Requests per variant; at least 100 (below that a p99 is just the maximum)."""


class AccuracyRule(_Rule):
    """Candidate's accuracy from outcome feedback against the stable's (one-sided z-test
    against the tolerance)."""

    DEFAULT_DURING: ClassVar[tuple[str, ...]] = ("canary", "ab-test")

    metric: Literal["accuracy"]
    """accuracy."""
    threshold: float = Field(default=0.02, ge=0.0, le=1.0)
    """Largest tolerated drop of accuracy below the stable's, absolute (0.02 = two points).
    Fails when the drop is significantly above it at ``alpha``."""
    alpha: float = Field(default=0.01, gt=0.0, lt=1.0)
    """Significance level of the one-sided test."""


class RewardRule(_Rule):
    """Candidate's mean reward against the stable's (one-sided Welch t-test against the tolerance)."""

    DEFAULT_DURING: ClassVar[tuple[str, ...]] = ("canary", "ab-test")

    metric: Literal["reward"]
    """reward."""
    threshold: float = Field(ge=0.0, allow_inf_nan=False)
    """Largest tolerated drop of the mean reward below the stable's, in reward units (no
    default: only you know the scale of your rewards). Fails when the drop is significantly
    above it at ``alpha``."""
    alpha: float = Field(default=0.01, gt=0.0, lt=1.0)
    """Significance level of the one-sided test."""


class ShadowAgreementRule(_Rule):
    """Share of mirrored rows where the shadow predicts the primary's label."""

    DEFAULT_DURING: ClassVar[tuple[str, ...]] = ("shadow",)

    metric: Literal["shadow_agreement"]
    """shadow_agreement."""
    threshold: float = Field(default=0.95, ge=0.0, le=1.0)
    """Lowest acceptable agreement. Fails when agreement is below it and a one-sided binomial
    test says so at ``alpha``."""
    alpha: float = Field(default=0.01, gt=0.0, lt=1.0)
    """Significance level of the binomial test."""


class ShadowDpRule(_Rule):
    """Mean |p_shadow - p_primary| over the mirrored rows."""

    DEFAULT_DURING: ClassVar[tuple[str, ...]] = ("shadow",)

    metric: Literal["shadow_abs_dp"]
    """shadow_abs_dp."""
    threshold: float = Field(default=0.05, ge=0.0, le=1.0)
    """Largest acceptable mean absolute probability difference."""


class ABVerdictRule(_Rule):
    """The A/B verdict from the router's report, read with an always-valid interval."""

    DEFAULT_DURING: ClassVar[tuple[str, ...]] = ("ab-test",)

    metric: Literal["ab_verdict"]
    """ab_verdict."""
    threshold: float = Field(default=0.02, ge=0.0, le=1.0)
    """Non-inferiority margin: passes once the always-valid interval shows the candidate's
    conversion rate at most this far below the stable's; fails once it shows it lower."""
    alpha: float = Field(default=0.05, gt=0.0, lt=1.0)
    """Level of the always-valid interval."""
    tau: float = Field(default=0.02, gt=0.0, allow_inf_nan=False)
    """Mixing standard deviation of the interval (the effect size it is tuned for); the
    router's ``msprt_tau``."""


class InputDriftRule(_Rule):
    """Population stability index of live inputs against the training bins (the largest
    over features)."""

    metric: Literal["input_drift"]
    """input_drift."""
    threshold: float = Field(default=0.25, gt=0.0)
    """PSI at which promotion is blocked."""
    warn: float = Field(default=0.1, gt=0.0)
    """PSI at which the record carries a warning (the rule still passes)."""
    on_fail: Literal["rollback", "block"] = "block"
    """block by default: shifted inputs are not the candidate's fault, but nobody should
    promote into them unseen."""
    min_samples: int | None = Field(default=500, ge=1)
    """Live rows in the drift sample (PSI noise is about (bins - 1) / rows)."""

    @model_validator(mode="after")
    def _order(self) -> InputDriftRule:
        if self.warn > self.threshold:
            raise ValueError(f"warn ({self.warn}) is above threshold ({self.threshold})")
        return self


class LabelDriftRule(_Rule):
    """Candidate's predicted-label distribution against the stable's over the same window."""

    metric: Literal["label_drift"]
    """label_drift."""
    threshold: float = Field(default=0.25, gt=0.0)
    """Largest acceptable PSI between the two distributions. Fails when the PSI exceeds it and
    a chi-square test of the two label counts is significant at ``alpha``."""
    alpha: float = Field(default=0.01, gt=0.0, lt=1.0)
    """Significance level of the chi-square test."""


Rule = Annotated[
    ErrorRateRule
    | LatencyRule
    | AccuracyRule
    | RewardRule
    | ShadowAgreementRule
    | ShadowDpRule
    | ABVerdictRule
    | InputDriftRule
    | LabelDriftRule,
    Field(discriminator="metric"),
]
METRICS = (
    "error_rate",
    "latency_p99",
    "accuracy",
    "reward",
    "shadow_agreement",
    "shadow_abs_dp",
    "ab_verdict",
    "input_drift",
    "label_drift",
)


class SequentialSpec(_Strict):
    """The always-valid sequential tests (see ``sequential.py``)."""

    enabled: bool = True
    """Run them; without them only ``failure_limit`` failed checks roll back."""
    alpha: float = Field(default=0.01, gt=0.0, lt=1.0)
    """False-rollback budget of the whole rollout: the probability that an equally good
    candidate is ever rolled back by these tests. Split evenly over ``tests`` (Bonferroni).
    0.01: over 1000 simulated good canaries 2 were rolled back (16 at 0.05), while a poor
    model was still caught within the same two checks."""
    tests: tuple[SequentialMetric, ...] = ("error_rate", "misprediction_rate", "reward")
    """Streams tested: error_rate (requests), misprediction_rate (labelled feedback), reward.
    A stream without data simply gathers no evidence."""
    log_odds_sd: float = Field(default=1.0, gt=0.0, le=10.0)
    """Mixing spread on the log odds ratio of the proportion tests, above the mixture's start (an odds
    ratio of 2, the smallest effect worth catching: services/supervisor/sequential.py)."""
    reward_tau: float = Field(default=0.05, gt=0.0, allow_inf_nan=False)
    """Mixing standard deviation of the reward test, in reward units."""
    min_block: int = Field(default=30, ge=2)
    """Rewards per variant gathered before they enter the reward test as one block."""

    @field_validator("tests")
    @classmethod
    def _tests(cls, tests: tuple[str, ...]) -> tuple[str, ...]:
        if len(set(tests)) != len(tests):
            raise ValueError(f"each test at most once, got {list(tests)}")
        return tests

    def alpha_per_test(self) -> float:
        return self.alpha / max(1, len(self.tests))


class RolloutSpec(_Strict):
    """One rollout. See the module docstring for an example."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
    """Rollout name (decision records, logs, the dashboard): 1-63 letters, digits, '_.-'."""
    kind: Kind
    """canary: weighted steps; shadow: mirror first, then canary steps; ab-test: fixed split,
    guardrails and optionally a conclusion."""
    stable: str
    """The stable variant's name in the routing config."""
    candidate: str
    """The candidate variant's name in the routing config."""
    candidate_version: int | str
    """Model version the candidate serves. When the candidate reports another version, or this
    changes, the analysis restarts from the first step."""
    steps: tuple[float, ...] = (5.0, 25.0, 50.0, 100.0)
    """Candidate weights in percent, strictly increasing, in (0, 100]; 100 is appended when the
    last step is not 100. Not for ab-test."""
    bake_s: float = Field(default=300.0, ge=0.0, allow_inf_nan=False)
    """Seconds at each step before it may advance (every rule must also pass)."""
    interval_s: float = Field(default=60.0, gt=0.0, allow_inf_nan=False)
    """Seconds between checks: the cadence of the service loop."""
    min_samples: int = Field(default=200, ge=1)
    """Samples per variant before any rule may pass or fail (rules may override)."""
    failure_limit: int = Field(default=3, ge=1)
    """Failed checks (of rules with on_fail: rollback) that roll back; counted since the
    analysis (re)started. The sequential tests roll back on their own, at once."""
    rules: list[Rule] = Field(min_length=1)
    """What must hold; see the rule kinds in this module."""
    on_inconclusive: Literal["hold", "pause"] = "hold"
    """When a check is inconclusive (missing, stale or too little data): hold keeps the weights
    and checks again; pause also stops automatic progress until a human resumes. Rollbacks
    stay automatic either way."""
    max_inconclusive: int | None = Field(default=30, ge=1)
    """Consecutive inconclusive checks after which a holding rollout pauses and says so,
    instead of waiting silently forever; empty: hold indefinitely."""
    stale_after_s: float | None = Field(default=None, gt=0.0, allow_inf_nan=False)
    """Metrics observed longer ago than this are stale (inconclusive); default twice
    ``interval_s``."""
    conclude: bool = False
    """ab-test only: once the A/B verdict is significant, route everything to the winner."""
    sequential: SequentialSpec = Field(default_factory=SequentialSpec)
    """The always-valid sequential tests."""

    @field_validator("steps", mode="before")
    @classmethod
    def _steps_type(cls, steps: Any) -> Any:
        if isinstance(steps, (str, bytes)) or not isinstance(steps, (list, tuple)):
            raise ValueError("expected a list of weights in percent, e.g. [5, 25, 50, 100]")
        return steps

    @field_validator("steps")
    @classmethod
    def _steps(cls, steps: tuple[float, ...]) -> tuple[float, ...]:
        if not steps:
            raise ValueError("at least one step is required")
        bad = [s for s in steps if not (math.isfinite(s) and 0.0 < s <= 100.0)]
        if bad:
            raise ValueError(f"every step must be in (0, 100], got {bad}")
        if any(b <= a for a, b in zip(steps, steps[1:], strict=False)):
            raise ValueError(f"must increase strictly, got {list(steps)}")
        if steps[-1] != 100.0:
            steps = (*steps, 100.0)
        return steps

    @field_validator("stable", "candidate")
    @classmethod
    def _variant(cls, name: str) -> str:
        if not name or name.strip() != name:
            raise ValueError(f"expected a variant name, got {name!r}")
        return name

    @field_validator("candidate_version")
    @classmethod
    def _version(cls, version: int | str) -> int | str:
        if isinstance(version, bool):
            raise ValueError("expected a version number or label, got a boolean")
        if isinstance(version, int) and version < 1:
            raise ValueError(f"version numbers start at 1, got {version}")
        if isinstance(version, str) and not version.strip():
            raise ValueError("expected a version number or label, got an empty string")
        return version

    @model_validator(mode="after")
    def _cross_checks(self) -> RolloutSpec:
        if self.stable == self.candidate:
            raise ValueError(f"stable and candidate are the same variant {self.stable!r}")
        if self.kind == "ab-test":
            if "steps" in self.model_fields_set:
                raise ValueError("steps: an A/B test keeps the router's split fixed; remove steps")
        else:
            if self.conclude:
                raise ValueError(f"conclude: only for kind ab-test, not {self.kind}")
            if len(self.steps) < 2:
                raise ValueError(
                    "steps: at least one step below 100 is needed; at 100 the stable gets no traffic "
                    "and there is nothing to compare the candidate with"
                )
        if self.stale_after_s is not None and self.stale_after_s < self.interval_s:
            raise ValueError(
                f"stale_after_s ({self.stale_after_s}) is below interval_s ({self.interval_s}): "
                "every check would be stale"
            )
        names = [r.rule_name for r in self.rules]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"rules: {repeated} appear more than once; give each a distinct name")
        for mode in MODES_OF_KIND[self.kind]:
            if not any(r.applies(mode) for r in self.rules):
                raise ValueError(
                    f"rules: none is evaluated in {mode} mode, so a {self.kind} rollout could never pass "
                    f"its {mode} phase; add one or set its 'during'"
                )
        return self

    @property
    def staleness_s(self) -> float:
        """Age past which metrics are stale."""
        return self.stale_after_s if self.stale_after_s is not None else 2.0 * self.interval_s

    def rules_for(self, mode: str) -> list[Any]:
        return [r for r in self.rules if r.applies(mode)]


def parse_spec(source: str | bytes | Mapping[str, Any], origin: str = "rollout") -> RolloutSpec:
    """Validate YAML text (JSON is YAML too) or a parsed mapping; raise RolloutSpecError."""
    if isinstance(source, (str, bytes)):
        try:
            raw = yaml.safe_load(source)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
            problem = getattr(exc, "problem", None) or str(exc)
            raise RolloutSpecError(f"{origin}: not valid YAML: {problem}{where}", field="rollout") from None
    else:
        raw = source
    if not isinstance(raw, Mapping):
        kind = "empty" if raw is None else type(raw).__name__
        raise RolloutSpecError(f"{origin}: expected a mapping at the top level, got {kind}", field="rollout")
    try:
        return RolloutSpec.model_validate(raw)
    except ValidationError as exc:
        errors = exc.errors()
        problems = [_describe(err) for err in errors]
        raise RolloutSpecError(
            f"{origin}: " + "; ".join(problems), field=_field(errors[0], problems[0]), problems=problems
        ) from None


def _field(err: Mapping[str, Any], problem: str) -> str:
    """The key path of a problem; cross-field checks name their key at the start of the message."""
    path = _path(err["loc"])
    if path:
        return path
    head = problem.split(":", 1)[0].split(" ", 1)[0]
    return head if head in RolloutSpec.model_fields else "rollout"


def _path(loc: tuple[Any, ...]) -> str:
    """``('rules', 1, 'accuracy', 'threshold')`` -> ``rules[1].threshold`` (the union tag dropped)."""
    parts: list[str] = []
    previous_index = False
    for part in loc:
        if isinstance(part, int):
            parts[-1:] = [f"{parts[-1]}[{part}]"] if parts else [f"[{part}]"]
            previous_index = True
            continue
        if previous_index and part in METRICS and parts and parts[-1].startswith("rules["):
            previous_index = False
            continue
        previous_index = False
        parts.append(str(part))
    return ".".join(parts)


def _describe(err: Mapping[str, Any]) -> str:
    where = _path(err["loc"])
    kind = err["type"]
    if kind == "extra_forbidden":
        return f"{where}: unknown key"
    if kind == "missing":
        return f"{where}: required"
    if kind == "union_tag_invalid":
        tag = err.get("ctx", {}).get("tag")
        return f"{where}.metric: unknown metric {tag!r}; expected one of {list(METRICS)}"
    if kind == "union_tag_not_found":
        return f"{where}.metric: required (one of {list(METRICS)})"
    msg = str(err["msg"])
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    return f"{where}: {msg}" if where else msg
