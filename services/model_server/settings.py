"""Settings of the model server; environment variables are prefixed MODEL_SERVER_.

Server-wide defaults live here. A model can override its version policy, labels and batching
knobs in `<repository>/<model-name>/config.yaml` (see `services/model_server/config.py`).
"""

from __future__ import annotations

from pathlib import Path

from pydantic import NonNegativeFloat, PositiveInt, field_validator

from services.core.contract import RangePolicy
from services.core.lifecycle import DEFAULT_SKEW_TOLERANCE
from services.core.settings import DEFAULT_MODEL_REPOSITORY, GrpcServerSettings, ServiceSettings, settings_config
from services.model_server.config import ConfigError, VersionPolicy


class ModelServerSettings(ServiceSettings, GrpcServerSettings):
    """One process serving every model and version of a model repository over REST and gRPC."""

    model_config = settings_config("MODEL_SERVER_")

    port: int = 8501
    """REST port (KServe V2 and TF Serving REST). 8501 is TF Serving's REST port."""
    grpc_port: int = 8500
    """gRPC port (TF Serving PredictionService/ModelService, Open Inference Protocol GRPCInferenceService, health,
    reflection). 8500 as in TF Serving."""
    model_repository: Path = DEFAULT_MODEL_REPOSITORY
    """Model repository laid out <repo>/<model-name>/<version>/; every model in it is served."""
    poll_interval_s: NonNegativeFloat = 2.0
    """How often the repository is re-scanned for new or removed versions and config changes; 0 turns polling off."""
    version_policy: str = "latest:2"
    """Default version policy, like TF Serving's file-system policy: `latest:N`, `all`, or `specific:1,2`."""
    max_batch_size: PositiveInt = 256
    """Most rows accepted in one request; more gets 413 / RESOURCE_EXHAUSTED."""
    range_policy: RangePolicy = RangePolicy.OFF
    """Training-range check on inputs: reject (400), flag (served; counted) or off. Off: that is the app's job."""
    range_margin: float = 0.1
    """Margin added to each side of the training range, as a fraction of the range."""
    skew_tolerance: NonNegativeFloat = DEFAULT_SKEW_TOLERANCE
    """Integration check before a version serves: most absolute difference between the holdout accuracy measured
    through the server's own input path and the accuracy the card claims; beyond it the version is refused as skew."""
    intra_op_threads: int = 1
    """ONNX Runtime threads inside one operator, per loaded version."""
    inter_op_threads: int = 1
    """ONNX Runtime threads across operators, per loaded version."""
    batching: bool = False
    """Default for dynamic batching: coalesce concurrent requests into one ONNX Runtime call."""
    batch_max_rows: PositiveInt = 64
    """Dynamic batching: most rows in one ONNX Runtime call (a larger single request still runs, alone)."""
    batch_max_delay_ms: NonNegativeFloat = 0.0
    """Dynamic batching: longest the oldest queued request waits for the batch to fill. 0: no timer; a batch
    is whatever queued while the previous one ran, and a lone request runs at once."""
    batch_max_queue: PositiveInt = 512
    """Dynamic batching: most requests waiting per model version; more are shed (503 / RESOURCE_EXHAUSTED)."""
    batch_in_thread: bool = False
    """Dynamic batching: run each batch on one worker thread instead of inline on the loop (inline measured faster)."""
    retry_after_s: NonNegativeFloat = 1.0
    """Retry-After sent with a shed request."""
    grpc_max_message_bytes: int = 4_194_304
    """Largest gRPC message accepted or sent; larger requests get RESOURCE_EXHAUSTED."""

    @field_validator("version_policy")
    @classmethod
    def _policy_parses(cls, value: str) -> str:
        try:
            VersionPolicy.parse(value)
        except ConfigError as exc:
            raise ValueError(str(exc)) from exc
        return value
