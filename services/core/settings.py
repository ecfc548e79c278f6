"""Settings shared by the services; each service subclasses one of these with its own env prefix.

    class EmbeddedSettings(ModelSettings):
        model_config = settings_config("EMBEDDED_")

Every field carries a docstring (pydantic reads them as descriptions), and the Helm chart renders
the same names as environment variables.
"""

from __future__ import annotations

from pathlib import Path

from pydantic_settings import BaseSettings, SettingsConfigDict

from services.core.contract import RangePolicy

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_MODEL_REPOSITORY = REPO_ROOT / "models" / "repository"


def settings_config(prefix: str) -> SettingsConfigDict:
    return SettingsConfigDict(env_prefix=prefix, use_attribute_docstrings=True, extra="ignore")


class ServiceSettings(BaseSettings):
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
