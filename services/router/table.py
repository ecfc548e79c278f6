"""The route table: everything one config version needs at request time, never mutated.

A config change builds a new `RouteTable` and swaps one reference (`Dispatcher.table`), so
requests in flight finish on the table they started with and no request sees half a config.
Per variant it holds the connection pool, request paths and metric children, resolved once so
the hot path does attribute loads, not look-ups.
"""

from __future__ import annotations

import time
from typing import Any

from services.core.errors import NotFound
from services.router import metrics
from services.router.config import RoutingConfig, VariantConfig
from services.router.metrics import VariantMetrics
from services.router.policies import RoutingPolicy
from services.router.upstream import Pool, Pools


class Variant:
    """One variant at run time: config, connection pool, request paths, metric children."""

    __slots__ = ("name", "cfg", "pool", "grpc", "model", "version", "infer_path", "timeout_s", "metrics",
                 "model_version", "model_prefix", "_base")

    def __init__(self, name: str, cfg: VariantConfig, pool: Pool, policy_kind: str) -> None:
        self.name = name
        self.cfg = cfg
        self.pool = pool
        self.grpc = cfg.grpc
        """host:port of the variant's gRPC port, or None (REST only)."""
        self.model = cfg.model
        self.version = cfg.version
        base = f"/v2/models/{cfg.model}"
        if cfg.version is not None:
            base += f"/versions/{cfg.version}"
        self._base = base
        self.infer_path = f"{base}/infer".encode()
        self.timeout_s = cfg.timeout_s
        self.metrics = VariantMetrics(name, policy_kind)
        self.model_version = f"{cfg.model}:{cfg.version if cfg.version is not None else 'default'}".encode()
        """`model:version` as configured; an answer naming its version refines it (`model_prefix`)."""
        self.model_prefix = f"{cfg.model}:".encode()

    def metadata_path(self, tail: str) -> bytes:
        return (self._base + tail).encode()


class RouteTable:
    """One config version, ready for requests."""

    def __init__(self, config: RoutingConfig, *, version: int, source: str, text: str, policy: RoutingPolicy,
                 epoch: int, variants: dict[str, Variant]) -> None:
        self.config = config
        self.version = version
        self.hash = config.content_hash()
        self.source = source
        self.text = text
        self.loaded_at = time.time()
        self.policy = policy
        self.kind = policy.kind
        self.epoch = epoch
        """Policy generation: feedback for a decision of an earlier generation is refused."""
        self.variants = variants
        self.fallback = variants[config.fallback_variant]
        self.learns = policy.takes_feedback
        self.shadows = tuple(variants[name] for name in policy.mirrors)
        self.sticky = config.sticky.header
        self.sticky_header = self.sticky.encode() if self.sticky else None
        self.body_parameter = config.sticky.body_parameter
        self.override = config.override_header
        self.override_header = self.override.encode() if self.override else None
        self.public_model = config.model
        self.by_version: dict[str, str] = {}
        for name, v in variants.items():
            if v.version is not None:
                self.by_version.setdefault(str(v.version), name)
        self.unrouted = VariantMetrics("", self.kind)
        """Requests no variant answered (refused before routing, or every attempt failed)."""
        self.request_seconds = metrics.REQUEST_SECONDS.labels(self.kind)
        self.failure_reward = config.feedback.failure_reward

    def metadata_variant(self, model: str, version: str | None) -> Variant:
        """The variant that answers metadata and readiness of `model` / `version` (default: the
        fallback); NotFound when this router does not route that model or version."""
        if self.public_model is not None and model != self.public_model:
            raise NotFound(f"model {model!r} is not routed here; this router serves {self.public_model!r}",
                           field="model")
        if not version:
            return self.fallback
        name = self.by_version.get(version)
        if name is None:
            raise NotFound(f"version {version!r} is not routed here; routed versions: {sorted(self.by_version)}",
                           field="model_version")
        return self.variants[name]

    def describe(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "hash": self.hash,
            "source": self.source,
            "loaded_at": self.loaded_at,
            "config": self.config.canonical(),
        }


def build_table(config: RoutingConfig, *, version: int, source: str, text: str, policy: RoutingPolicy, epoch: int,
                pools: Pools) -> RouteTable:
    variants = {name: Variant(name, cfg, pools.get(cfg.url), policy.kind) for name, cfg in config.variants.items()}
    return RouteTable(config, version=version, source=source, text=text, policy=policy, epoch=epoch,
                      variants=variants)
