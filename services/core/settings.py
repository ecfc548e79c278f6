"""Settings shared by the services; each service subclasses one of these with its own env prefix.

    class EmbeddedSettings(ModelSettings):
        model_config = settings_config("EMBEDDED_")

Every field carries a docstring (pydantic reads them as descriptions), and the Helm chart renders
the same names as environment variables.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.core.contract import RangePolicy

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_MODEL_REPOSITORY = REPO_ROOT / "models" / "repository"


def settings_config(prefix: str) -> SettingsConfigDict:
    return SettingsConfigDict(env_prefix=prefix, use_attribute_docstrings=True, extra="ignore")


class ServiceSettings(BaseSettings):
    # Read the field docstrings here too (each service's own config repeats it for its fields), so the
    # shared fields carry their descriptions into the chart's values.schema.json.
    model_config = SettingsConfigDict(use_attribute_docstrings=True, extra="ignore")

    host: str = "127.0.0.1"
    """Address to bind. 127.0.0.1 locally; 0.0.0.0 in a container."""
    port: int = 8080
    """HTTP port."""
    log_level: str = "INFO"
    """Python log level of the JSON logs."""
    max_body_bytes: int = 1_048_576
    """Largest request body accepted; larger bodies get 413."""
    shutdown_grace_s: float = 10.0
    """On SIGTERM: stop accepting, then wait this long for in-flight requests."""
    http_header_timeout_s: float = Field(default=10.0, gt=0.0)
    """A request's line and headers must arrive within this many seconds of the connection opening (or of
    the first byte after the previous response); slower or silent clients (slowloris, blank lines) are
    disconnected."""
    http_keep_alive_s: float = Field(default=5.0, gt=0.0)
    """An idle kept-alive HTTP connection is closed this many seconds after its last response. Keep it above
    the router's upstream_idle_timeout_s where a router calls this service."""
    http_max_header_bytes: int = Field(default=65_536, ge=1024)
    """Most bytes of request line and headers; more gets 431 and the connection closed."""
    http_max_connections: int = Field(default=1000, ge=1)
    """Most open HTTP connections per process. A connection over the limit gets 503 (Retry-After) on its
    first request and is closed; connections already open keep working."""


class GrpcServerSettings(BaseSettings):
    """Bounds on a gRPC server's connections, for the services that run one (model server, router)."""

    model_config = SettingsConfigDict(use_attribute_docstrings=True, extra="ignore")

    grpc_max_connections: int = Field(default=1000, ge=1)
    """Most open gRPC connections per process; more are closed as they arrive (the client sees UNAVAILABLE
    and retries), connections already open keep working."""
    grpc_max_concurrent_streams: int = Field(default=256, ge=1)
    """Most concurrent calls (HTTP/2 streams) on one gRPC connection; a client queues the rest."""
    grpc_max_connection_idle_s: float = Field(default=300.0, gt=0.0)
    """A gRPC connection with no call for this long is closed (GOAWAY); clients reconnect on their next call."""
    grpc_keepalive_s: float = Field(default=60.0, gt=0.0)
    """The server pings a connection after this long without traffic and closes it when the ping goes
    unanswered for grpc_keepalive_timeout_s (a peer that vanished without closing)."""
    grpc_keepalive_timeout_s: float = Field(default=20.0, gt=0.0)
    """How long a keepalive ping may go unanswered before the connection is closed."""

    def grpc_connection_options(self) -> list[tuple[str, int]]:
        """grpc.aio server options for the connection bounds above."""
        return [
            ("grpc.max_allowed_incoming_connections", self.grpc_max_connections),
            ("grpc.max_concurrent_streams", self.grpc_max_concurrent_streams),
            ("grpc.max_connection_idle_ms", round(self.grpc_max_connection_idle_s * 1000)),
            ("grpc.keepalive_time_ms", round(self.grpc_keepalive_s * 1000)),
            ("grpc.keepalive_timeout_ms", round(self.grpc_keepalive_timeout_s * 1000)),
        ]


class ModelSettings(ServiceSettings):
    model_repository: Path = DEFAULT_MODEL_REPOSITORY
    """Model repository laid out <repo>/<model-name>/<version>/."""
    model_name: str = "breast-cancer"
    """Model to serve."""
    model_version: int | None = None
    """Version to serve; empty means the newest version that passed its quality gate."""
    max_batch_size: int = 256
    """Most rows accepted in one request; more gets 413."""
    range_policy: RangePolicy = RangePolicy.FLAG
    """Values outside the training range (plus margin): reject (400), flag (serve and report) or off."""
    range_margin: float = 0.1
    """Margin added to each side of the training range, as a fraction of the range."""
    intra_op_threads: int = 1
    """ONNX Runtime threads inside one operator."""
    inter_op_threads: int = 1
    """ONNX Runtime threads across operators."""
