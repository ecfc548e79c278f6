"""Settings of the router; environment variables are prefixed ROUTER_.

Process-level knobs live here; everything about *where* traffic goes (variants, policy, fallback,
stickiness, shadow queue, outlier ejection, feedback TTL) lives in the routing config YAML
(`services/router/config.py`), which can change at run time.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field, SecretStr, ValidationInfo, field_validator

from services.core.settings import GrpcServerSettings, ServiceSettings, settings_config

SERVER_NAME = "serving-patterns-router"
"""What the router calls itself in server metadata (REST GET /v2, OIP ServerMetadata)."""
SERVER_VERSION = "0.1.0"


class RouterSettings(ServiceSettings, GrpcServerSettings):
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
    admin_max_body_bytes: int = Field(default=65_536, ge=1024)
    """Largest routing config `PUT /admin/routing` accepts (413 above it); a real one is a few kB."""
    admin_writes_config: bool = True
    """Write a config accepted by `PUT /admin/routing` back to the routing config file (atomic
    rename), so file and router agree. A read-only file (a ConfigMap) is left alone and the
    config is kept in the state file instead."""
    input_tap_rows: int = Field(default=0, ge=0, le=100_000)
    """Requests whose inputs are kept per variant for drift checks (`GET /admin/inputs`, read by
    the supervisor's input_drift rule); a ring, bounded in memory. 0 turns the tap off."""
    input_tap_sample_rate: float = Field(default=1.0, gt=0.0, le=1.0)
    """Share of answered requests offered to the input tap."""
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

    token_key: SecretStr | None = None
    """Key signing the request ids handed to clients (feedback tokens), shared by every replica so
    any replica verifies any replica's ids. Hex or text of at least 16 bytes; several keys, one per
    line: the first signs, all verify (rotation). Without it (or token_key_file) each process makes
    a random key: its ids verify only on itself, until it restarts."""
    token_key_file: Path | None = None
    """File holding the token key(s) (a mounted Secret); used when token_key is empty."""
    feedback_token: SecretStr | None = None
    """When set, `POST /feedback` needs `Authorization: Bearer <this token>` (or the admin token):
    only trusted callers (the application's backend) may teach the policy. Empty: open, as the
    signed request ids already stop guessed or altered ids."""
    feedback_token_file: Path | None = None
    """File holding the feedback bearer token; used when feedback_token is empty."""
    kafka_bootstrap_servers: str = ""
    """Kafka bootstrap servers (host:port,...). When set, accepted feedback goes to the feedback
    topic and is acknowledged once the broker has it; every replica applies every event from the
    topic. Empty: feedback is applied in this process only (one replica)."""
    feedback_topic: str = "feedback"
    """Topic of the feedback events (created with feedback_topic_partitions if missing)."""
    feedback_topic_partitions: int = Field(default=3, ge=1)
    """Partitions the feedback topic is created with (events are keyed by request id)."""
    feedback_ack_timeout_s: float = Field(default=10.0, gt=0.0)
    """How long `POST /feedback` waits for the broker's acknowledgement before answering 503
    (the reward then may or may not be on the topic: resending it is safe, duplicates are skipped)."""
    feedback_apply_wait_s: float = Field(default=2.0, ge=0.0)
    """After the broker's ack, how long the feedback call waits for this replica to read the event
    back and apply it (200); past it the answer is 202 (acknowledged, applied shortly)."""
    replica_id: str = ""
    """Name of this replica in feedback events and logs; empty: host name and process id."""
    kafka_backoff_max_s: float = Field(default=5.0, gt=0.0)
    """Longest wait between reconnects of the feedback consumer and producer."""
    labels_topic: str | None = Field(default=None, pattern=r"^[A-Za-z0-9._\-]{1,249}$")
    """Topic the true labels of accepted label feedback are written to (services/kafka/labels.py,
    `source: "router"`), keyed by the request id the router forwarded upstream (what the apps'
    prediction log recorded), for the online trainer's join. Needs kafka_bootstrap_servers.
    Empty: off."""

    @field_validator("state_file", "admin_token_file", "admin_token", "token_key", "token_key_file",
                     "feedback_token", "feedback_token_file", "labels_topic", mode="before")
    @classmethod
    def _empty_is_none(cls, value: Any) -> Any:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("labels_topic")
    @classmethod
    def _labels_need_kafka(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is not None and not info.data.get("kafka_bootstrap_servers"):
            raise ValueError(f"the labels topic {value!r} needs ROUTER_KAFKA_BOOTSTRAP_SERVERS (the broker to "
                             "write it to); set it, or leave ROUTER_LABELS_TOPIC empty")
        return value
