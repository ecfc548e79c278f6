"""Settings of the supervisor service; environment variables are prefixed SUPERVISOR_.

What is rolled out, how fast and under which rules lives in the rollout spec (YAML,
`spec.py`); these are the process-level knobs: where the router is, how to authenticate, where
to keep state, where to publish decisions.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, field_validator, model_validator

from services.core.settings import DEFAULT_MODEL_REPOSITORY, ServiceSettings, settings_config

DECISIONS_TOPIC = "supervisor-decisions"


class SupervisorSettings(ServiceSettings):
    """The model supervisor: analyses a rollout every interval and acts on the router."""

    model_config = settings_config("SUPERVISOR_")

    port: int = 8090
    """HTTP port of the supervisor's own API (`/status`, `/decisions`, `/metrics`)."""
    router_url: str = "http://127.0.0.1:8080"
    """Base URL of the router: its `/metrics` is scraped and its `/admin/routing` written."""
    admin_token: SecretStr | None = None
    """Bearer token of the router's admin API (`PUT /admin/routing`). Without one (here or in
    admin_token_file) the supervisor can analyse but every action fails and is recorded so."""
    admin_token_file: Path | None = None
    """File holding the router's admin token (a mounted Secret); re-read before each write, so a
    rotated token applies at once. Used when admin_token is empty."""
    rollout_spec: Path
    """Path of the rollout spec (YAML; example patterns/canary/rollout.yaml). Required."""
    interval_s: float | None = Field(default=None, gt=0.0)
    """Seconds between checks; empty = the spec's `interval_s`. Set, it replaces the spec's value
    (and with it the default staleness, twice the interval)."""
    state_file: Path | None = Path(".run/supervisor-state.json")
    """JSON file with the rollout state and the recent decisions, rewritten atomically after every
    check; a restarted supervisor resumes from it. Empty turns persistence off."""
    max_decisions: int = Field(default=500, ge=1)
    """Decisions kept in memory, served by `GET /decisions` and persisted (the oldest drop out)."""
    request_timeout_s: float = Field(default=2.0, gt=0.0)
    """Timeout of each call to the router or to Prometheus; a router that does not answer in
    time makes the check inconclusive."""
    kafka_bootstrap_servers: str | None = None
    """Kafka bootstrap servers; when set, every decision is also produced (non-blocking) to
    `decisions_topic`, keyed by the rollout name."""
    decisions_topic: str = DECISIONS_TOPIC
    """Kafka topic of the decision records."""
    model_repository: Path = DEFAULT_MODEL_REPOSITORY
    """Model repository holding the candidate's model card (training bins per feature) and holdout
    set: the reference of the input drift watch (the router's input tap, `GET /admin/inputs`)."""
    actuator: Literal["router-api", "configmap"] = "router-api"
    """Where decisions are written. router-api: the router's `PUT /admin/routing` with If-Match.
    configmap: the router's routing ConfigMap through the Kubernetes API server (resourceVersion
    as If-Match; survives router restarts), then the same config pushed through the router's admin
    API so the replica behind the Service applies it at once (the others at the kubelet's sync)."""
    routing_configmap: str | None = None
    """configmap actuator: name of the router's routing ConfigMap. Required with it."""
    routing_configmap_namespace: str | None = None
    """configmap actuator: its namespace; empty = the pod's own namespace."""
    routing_configmap_key: str = "routing.yaml"
    """configmap actuator: the key holding the routing YAML."""
    kubeconfig: Path | None = None
    """configmap actuator: a kubeconfig file (outside a cluster); empty = the pod's ServiceAccount
    (in-cluster config)."""
    prometheus_url: str | None = None
    """Base URL of a Prometheus server scraping the router. When set, the router's series are
    read through its HTTP API (`/api/v1/query`, summed over router instances) instead of
    scraping the router's `/metrics`; the routing config is still read from the router."""

    @field_validator("admin_token", "admin_token_file", "state_file", "kafka_bootstrap_servers",
                     "prometheus_url", "interval_s", "routing_configmap",
                     "routing_configmap_namespace", "kubeconfig", mode="before")
    @classmethod
    def _empty_is_none(cls, value: Any) -> Any:
        return None if isinstance(value, str) and not value.strip() else value

    @model_validator(mode="after")
    def _configmap_named(self) -> SupervisorSettings:
        if self.actuator == "configmap" and not self.routing_configmap:
            raise ValueError("actuator 'configmap' needs routing_configmap (SUPERVISOR_ROUTING_CONFIGMAP), the name "
                             "of the router's routing ConfigMap")
        return self

    def token(self) -> str | None:
        """The admin token in force (the file is re-read on every call)."""
        if self.admin_token is not None and self.admin_token.get_secret_value().strip():
            return self.admin_token.get_secret_value().strip()
        if self.admin_token_file is not None:
            try:
                return self.admin_token_file.read_text().strip() or None
            except OSError:
                return None
        return None
