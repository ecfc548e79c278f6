"""Settings of the router; environment variables are prefixed ROUTER_.

Process-level knobs live here; everything about *where* traffic goes (variants, policy, fallback,
stickiness, shadow queue, outlier ejection, feedback TTL) lives in the routing config YAML
(`services/router/config.py`), which can change at run time.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field, SecretStr, field_validator

from services.core.settings import ServiceSettings, settings_config

SERVER_NAME = "serving-patterns-router"
"""What the router calls itself in server metadata (REST GET /v2, OIP ServerMetadata)."""
SERVER_VERSION = "0.1.0"


class RouterSettings(ServiceSettings):
    """The router: one KServe V2 front door routing each request to a model variant."""

    model_config = settings_config("ROUTER_")

    routing_config: Path
    """Path of the routing config (YAML). Required. Re-read when its modification time changes."""
    grpc_port: int = Field(default=0, ge=0, le=65535)
    """Port of the gRPC Predict pass-through (TF Serving API); 0 turns it off. Variants need a
    `grpc: host:port` in the routing config to be reachable over gRPC."""
    grpc_max_message_bytes: int = Field(default=4_194_304, ge=1024)
    """Largest gRPC message accepted or forwarded."""
    config_poll_s: float = Field(default=1.0, ge=0.0)
    """How often the routing config file's mtime is checked; 0 turns file reloading off."""
    admin_token: SecretStr | None = None
    """Bearer token of the admin API (`/admin/*`). No default: without a token (here or in
    admin_token_file) the admin API answers 403 'disabled'."""
    admin_token_file: Path | None = None
    """File holding the admin bearer token (a mounted Secret); used when admin_token is empty."""
    admin_writes_config: bool = True
    """Write a config accepted by `PUT /admin/routing` back to the routing config file (atomic
    rename), so file and router agree. A read-only file (a ConfigMap) is left alone and the
    config is kept in the state file instead."""
    state_file: Path | None = Path(".run/router-state.json")
    """JSON file holding policy state (bandit statistics, A/B counts), pending rewards and the
    config version, so a restart loses nothing. Empty turns persistence off."""
    state_save_interval_s: float = Field(default=5.0, gt=0.0)
    """How often the state file is rewritten when something changed (and always at shutdown)."""
    connect_timeout_s: float = Field(default=0.5, gt=0.0)
    """Timeout to open a TCP connection to a variant (within the variant's own timeout_s)."""
    upstream_max_idle: int = Field(default=64, ge=1)
    """Idle keep-alive connections kept per upstream address."""
    upstream_idle_timeout_s: float = Field(default=4.0, gt=0.0)
    """Idle connections older than this are closed rather than reused (below uvicorn's 5 s
    keep-alive timeout, so the router never writes to a connection the server is closing)."""

    @field_validator("state_file", "admin_token_file", "admin_token", mode="before")
    @classmethod
    def _empty_is_none(cls, value: Any) -> Any:
        return None if isinstance(value, str) and not value.strip() else value
