"""The routing config: what the router routes where, validated as a whole before it is used.

    name: breast-cancer-canary          # route / experiment name (GET /experiments/{name})
    model: breast-cancer                # model name clients call; omit to accept any
    variants:                           # name -> model server endpoint + model + version
      stable:    {url: "http://127.0.0.1:8501", model: breast-cancer, version: 1, timeout_s: 1.0}
      candidate: {url: "http://127.0.0.1:8502", model: breast-cancer, version: 2}
    policy:
      kind: canary                      # shadow | canary | ab | epsilon_greedy | ucb1 | thompson
      params: {weights: {stable: 90, candidate: 10}}
    fallback: stable                    # retried once when the chosen variant fails or is ejected
    sticky: {header: x-user-id, body_parameter: user_id}
    override_header: x-variant
    outlier_detection: {consecutive_failures: 5, base_ejection_s: 10, max_ejection_s: 300}
    shadow: {queue_size: 1000, workers: 4, timeout_s: 2.0}
    feedback: {ttl_s: 3600, max_pending: 100000, failure_reward: 0.0}

Every model forbids unknown keys. `parse_config` turns YAML text (or a mapping) into a validated
`RoutingConfig` or raises `RoutingConfigError` whose message names each problem by its path
(`policy.params: invalid params for policy 'canary': weights: no weight for variants ['b']`).
The policy parameters are checked by building the policy itself, so the config and the policy
can never disagree about what is valid.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import orjson
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from services.core.errors import InvalidInput
from services.router.policies import POLICIES, PolicyConfigError, build_policy

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
_HEADER = re.compile(r"^[a-z0-9!#$%&'*+.^_`|~-]+$")
_RESERVED_HEADERS = {"content-type", "content-length", "host", "x-request-id", "authorization", "transfer-encoding"}
#: Weight sets must add up to one of these (percent or fractions); see `_check_sum`.
_WEIGHT_TOTALS = (100.0, 1.0)


class RoutingConfigError(InvalidInput):
    """The routing config is invalid; the message names every problem with its path."""

    code = "invalid_config"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


class VariantConfig(_Strict):
    """One variant: a model server endpoint plus the model and version it serves."""

    url: str
    """Base URL of the model server's REST port, e.g. http://127.0.0.1:8501 (http or https)."""
    model: str
    """Model name on that server; the request path is rewritten to it."""
    version: int | str | None = None
    """Model version (number or a server-side label such as 'stable'); empty means the server's
    default (the newest version that passed its gate)."""
    timeout_s: float = Field(default=1.0, gt=0.0, le=300.0)
    """Whole-request timeout towards this variant; past it the request fails over."""
    grpc: str | None = None
    """host:port of the same model server's gRPC port (TF Serving API), for the router's gRPC
    Predict pass-through (ROUTER_GRPC_PORT); empty: this variant is REST only."""

    @field_validator("grpc")
    @classmethod
    def _grpc(cls, address: str | None) -> str | None:
        if address is None or address == "":
            return None
        host, sep, port = address.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"expected host:port, got {address!r}")
        return address

    @field_validator("url")
    @classmethod
    def _url(cls, url: str) -> str:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"expected http://host:port or https://host:port, got {url!r}")
        if parts.query or parts.fragment:
            raise ValueError(f"must not carry a query or fragment: {url!r}")
        try:
            parts.port  # noqa: B018  (raises on a bad port)
        except ValueError as exc:
            raise ValueError(f"bad port in {url!r}: {exc}") from None
        return url.rstrip("/")

    @field_validator("model")
    @classmethod
    def _model(cls, model: str) -> str:
        if not model or "/" in model or model.strip() != model:
            raise ValueError(f"expected a model name without '/' or spaces, got {model!r}")
        return model

    @field_validator("version")
    @classmethod
    def _version(cls, version: int | str | None) -> int | str | None:
        if isinstance(version, bool):
            raise ValueError("expected a version number or label, got a boolean")
        if isinstance(version, int) and version < 1:
            raise ValueError(f"version numbers start at 1, got {version}")
        if isinstance(version, str) and not _NAME.match(version):
            raise ValueError(f"expected a version number or label of letters, digits, '_.-', got {version!r}")
        return version


class PolicyConfig(_Strict):
    """The routing policy and its parameters (see services/router/policies/README.md)."""

    kind: str
    """shadow | canary | ab | epsilon_greedy | ucb1 | thompson."""
    params: dict[str, Any] = Field(default_factory=dict)
    """The policy's parameters, validated by the policy's own parameter model."""

    @field_validator("kind")
    @classmethod
    def _kind(cls, kind: str) -> str:
        if kind not in POLICIES:
            raise ValueError(f"unknown policy kind {kind!r}; expected one of {sorted(POLICIES)}")
        return kind


class StickyConfig(_Strict):
    """Where the stickiness key of a request comes from (header first, then the body)."""

    header: str | None = "x-user-id"
    """Request header carrying the key (user or session id); empty to ignore headers."""
    body_parameter: str | None = None
    """Key inside the KServe V2 request's top-level `parameters` object, e.g. user_id. Reading it
    costs one JSON parse of the request body per request; prefer the header."""

    @field_validator("header")
    @classmethod
    def _header(cls, header: str | None) -> str | None:
        return _header_name(header)


class OutlierDetectionConfig(_Strict):
    """Consecutive-failure outlier ejection, as in Envoy."""

    enabled: bool = True
    """Eject variants that keep failing."""
    consecutive_failures: int = Field(default=5, ge=1)
    """Failures in a row (connect error, timeout, 5xx) that eject a variant."""
    base_ejection_s: float = Field(default=10.0, gt=0.0)
    """Cool-down of a first ejection; the n-th ejection in a row lasts n times as long."""
    max_ejection_s: float = Field(default=300.0, gt=0.0)
    """Longest cool-down."""

    @model_validator(mode="after")
    def _order(self) -> OutlierDetectionConfig:
        if self.max_ejection_s < self.base_ejection_s:
            raise ValueError(
                f"max_ejection_s ({self.max_ejection_s}) is below base_ejection_s ({self.base_ejection_s})"
            )
        return self


class ShadowConfig(_Strict):
    """The mirror of the shadow policy: a bounded queue drained by worker tasks."""

    queue_size: int = Field(default=1000, ge=1, le=1_000_000)
    """Mirrors waiting to be sent; when full, new mirrors are dropped and counted."""
    workers: int = Field(default=4, ge=1, le=256)
    """Concurrent mirror requests."""
    timeout_s: float | None = Field(default=None, gt=0.0, le=300.0)
    """Timeout of a mirrored request; empty means the shadow variant's own timeout_s."""
    sample_rate: float = Field(default=1.0, ge=0.0, le=1.0)
    """Fraction of requests mirrored (1 = every request)."""


class FeedbackConfig(_Strict):
    """Outcome feedback (a label, a reward, or both) under every policy: A/B and bandits learn from it, every
    policy counts it into the per-variant quality metrics."""

    ttl_s: float = Field(default=3600.0, gt=0.0)
    """How long after its decision a request id accepts feedback; later feedback gets 410."""
    max_pending: int = Field(default=100_000, ge=1)
    """Decisions awaiting feedback kept at most; past it the oldest expire early (410)."""
    failure_reward: float | None = 0.0
    """Bandits: reward recorded for the chosen variant when it fails (the request then fails
    over and takes no client feedback). Empty: failures teach the bandit nothing."""

    @field_validator("failure_reward")
    @classmethod
    def _finite(cls, value: float | None) -> float | None:
        if value is not None and not math.isfinite(value):
            raise ValueError("must be a finite number")
        return value


class RoutingConfig(_Strict):
    """A whole routing config. See the module docstring for an example."""

    name: str
    """Route / experiment name, used by GET /experiments/{name} and in logs."""
    model: str | None = None
    """Model name clients use in /v2/models/{model}/infer; empty accepts any name. The path is
    rewritten to each variant's own model and version."""
    variants: dict[str, VariantConfig]
    """Variant name -> endpoint. Names: letters, digits, '_.-' (they appear in headers and metrics)."""
    policy: PolicyConfig
    """Which variant serves each request."""
    fallback: str | None = None
    """Variant retried once when the chosen one fails or is ejected; default the first variant."""
    sticky: StickyConfig = Field(default_factory=StickyConfig)
    """Source of the stickiness key (canary, A/B)."""
    override_header: str | None = "x-variant"
    """Request header that forces a variant (testing, QA); empty disables overrides."""
    outlier_detection: OutlierDetectionConfig = Field(default_factory=OutlierDetectionConfig)
    """Ejection of failing variants."""
    shadow: ShadowConfig = Field(default_factory=ShadowConfig)
    """Mirror queue of the shadow policy (ignored by other policies)."""
    feedback: FeedbackConfig = Field(default_factory=FeedbackConfig)
    """Feedback of the A/B and bandit policies."""

    @field_validator("name")
    @classmethod
    def _name(cls, name: str) -> str:
        if not _NAME.match(name):
            raise ValueError(f"expected 1-63 letters, digits or '_.-', got {name!r}")
        return name

    @field_validator("variants")
    @classmethod
    def _variants(cls, variants: dict[str, VariantConfig]) -> dict[str, VariantConfig]:
        if not variants:
            raise ValueError("at least one variant is required")
        bad = [name for name in variants if not isinstance(name, str) or not _NAME.match(name)]
        if bad:
            raise ValueError(f"variant names must be 1-63 letters, digits or '_.-'; bad: {bad}")
        return variants

    @field_validator("override_header")
    @classmethod
    def _override_header(cls, header: str | None) -> str | None:
        return _header_name(header)

    @model_validator(mode="after")
    def _cross_checks(self) -> RoutingConfig:
        names = list(self.variants)
        if self.fallback is not None and self.fallback not in self.variants:
            raise ValueError(f"fallback: unknown variant {self.fallback!r}; variants are {names}")
        params = self.policy.params
        for field in ("weights", "split"):
            if isinstance(params.get(field), Mapping):
                _check_sum(params[field], f"policy.params.{field}")
        try:
            build_policy(self.policy.kind, names, params)
        except PolicyConfigError as exc:
            raise ValueError(f"policy: {exc}") from None
        if self.sticky.header and self.sticky.header == self.override_header:
            raise ValueError(f"sticky.header and override_header are both {self.override_header!r}")
        return self

    @property
    def fallback_variant(self) -> str:
        return self.fallback if self.fallback is not None else next(iter(self.variants))

    def canonical(self) -> dict[str, Any]:
        """JSON form with defaults filled in (what GET /admin/routing returns)."""
        return self.model_dump(mode="json")

    def content_hash(self) -> str:
        """sha256 of the canonical JSON: comments and formatting do not change it, order does
        (the first variant is the default fallback and the A/B control)."""
        return hashlib.sha256(orjson.dumps(self.canonical())).hexdigest()[:16]


def _header_name(header: str | None) -> str | None:
    if header is None or header == "":
        return None
    lowered = header.strip().lower()
    if not _HEADER.match(lowered):
        raise ValueError(f"not a valid HTTP header name: {header!r}")
    if lowered in _RESERVED_HEADERS:
        raise ValueError(f"{header!r} is reserved; pick another header")
    return lowered


def _check_sum(weights: Mapping[str, Any], where: str) -> None:
    """Weights must add up to 100 (percent) or 1 (fractions).

    The policies themselves normalise any positive weights, but a config whose weights add up
    to 110 or 0.9 is almost always a typo (a weight changed, its partner forgotten), so the
    router refuses it rather than guess which number was meant.
    """
    values = list(weights.values())
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values):
        return  # the policy's own validation names the bad value
    total = float(sum(values))
    if not any(math.isclose(total, t, rel_tol=1e-9, abs_tol=1e-9) for t in _WEIGHT_TOTALS):
        raise ValueError(f"{where}: weights sum to {total:g}; they must sum to 100 (percent) or 1 (fractions)")


MAX_YAML_DEPTH = 32
"""Deepest nesting of mappings and sequences in a routing config (a real one nests about 5 deep)."""
MAX_YAML_NODES = 100_000
"""Most nodes a routing config may expand to, aliases counted as the nodes they repeat."""


def _check_yaml_shape(source: str | bytes, origin: str) -> None:
    """Refuse YAML nested deeper than MAX_YAML_DEPTH or expanding (through aliases) past MAX_YAML_NODES,
    before it is built: PyYAML builds nodes recursively (RecursionError on ~1000 levels) and aliases
    repeat whole subtrees without copying them (a few hundred bytes can stand for billions of nodes,
    which validation would then walk). The event stream read here is not recursive."""
    sizes: dict[str, int] = {}  # anchor -> nodes it stands for
    stack: list[list[Any]] = [[0, None]]  # per open collection: [nodes inside, its anchor]
    for event in yaml.parse(source, Loader=yaml.SafeLoader):
        if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
            stack.append([0, event.anchor])
            if len(stack) - 1 > MAX_YAML_DEPTH:
                raise RoutingConfigError(f"{origin}: nested deeper than {MAX_YAML_DEPTH} levels; a routing config "
                                         f"nests about 5", field="config")
            continue
        if isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
            inner, anchor = stack.pop()
            size = inner + 1
        elif isinstance(event, yaml.ScalarEvent):
            size, anchor = 1, event.anchor
        elif isinstance(event, yaml.AliasEvent):
            size, anchor = sizes.get(event.anchor, 1), None
        else:
            continue
        if anchor is not None:
            sizes[anchor] = size
        stack[-1][0] += size
        if stack[-1][0] > MAX_YAML_NODES:
            raise RoutingConfigError(f"{origin}: expands to more than {MAX_YAML_NODES} nodes (aliases counted as "
                                     f"what they repeat)", field="config")


def parse_config(source: str | bytes | Mapping[str, Any], origin: str = "config") -> RoutingConfig:
    """Validate YAML text (JSON is YAML too) or a parsed mapping; raise RoutingConfigError."""
    if isinstance(source, (str, bytes)):
        try:
            _check_yaml_shape(source, origin)
            raw = yaml.safe_load(source)
        except yaml.YAMLError as exc:
            raise RoutingConfigError(f"{origin}: not valid YAML: {_yaml_problem(exc)}", field="config") from None
        except RecursionError:  # a backstop: _check_yaml_shape bounds the depth first
            raise RoutingConfigError(f"{origin}: nested too deeply", field="config") from None
    else:
        raw = source
    if not isinstance(raw, Mapping):
        kind = "empty" if raw is None else type(raw).__name__
        raise RoutingConfigError(f"{origin}: expected a mapping at the top level, got {kind}", field="config")
    try:
        return RoutingConfig.model_validate(raw)
    except ValidationError as exc:
        problems = [_describe(err) for err in exc.errors()]
        first_loc = ".".join(str(p) for p in exc.errors()[0]["loc"]) or "config"
        raise RoutingConfigError(f"{origin}: " + "; ".join(problems), field=first_loc, problems=problems) from None


def _describe(err: Mapping[str, Any]) -> str:
    where = ".".join(str(p) for p in err["loc"])
    if err["type"] == "extra_forbidden":
        return f"{where}: unknown key"
    if err["type"] == "missing":
        return f"{where}: required"
    msg = str(err["msg"])
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    return f"{where}: {msg}" if where else msg


def _yaml_problem(exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc)
    if mark is not None:
        return f"{problem} (line {mark.line + 1}, column {mark.column + 1})"
    return problem
