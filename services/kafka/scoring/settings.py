"""Settings of the stream-scoring worker (SCORING_*)."""

from __future__ import annotations

from pathlib import Path

from pydantic import NonNegativeFloat

from services.core.lifecycle import DEFAULT_SKEW_TOLERANCE
from services.core.settings import ModelSettings, settings_config
from services.kafka.topics import (
    MODEL_EVENTS,
    MODELS,
    SCORING_DLQ,
    SCORING_PARTITIONS,
    SCORING_REQUESTS,
    SCORING_RESULTS,
)


class ScoringSettings(ModelSettings):
    """Settings of the stream-scoring worker; environment variables are prefixed SCORING_.

    `max_batch_size` (inherited) is the most rows one request record may carry; more goes to the DLQ.
    `port` serves /healthz, /readyz and /metrics.
    """

    model_config = settings_config("SCORING_")

    port: int = 8090
    """HTTP port for /healthz, /readyz and /metrics."""
    model_version: int | None = None
    """Version to serve from the repository; empty means the newest that passed its gate. Ignored with
    follow_models: the version served is whichever was published last (and accepted)."""
    bootstrap_servers: str = "127.0.0.1:9092"
    """Kafka bootstrap servers, comma-separated host:port."""
    requests_topic: str = SCORING_REQUESTS
    """Topic the requests are read from."""
    results_topic: str = SCORING_RESULTS
    """Topic the results are written to, keyed by request id."""
    dlq_topic: str = SCORING_DLQ
    """Dead-letter topic for records that cannot be scored, with the reason."""
    group_id: str = "stream-scoring"
    """Consumer group; workers with the same group share the partitions."""
    topic_partitions: int = SCORING_PARTITIONS
    """Partitions of the three topics when this worker creates them (existing topics are left alone)."""
    batch_max_size: int = 2000
    """Most request records in one micro-batch, scored by one ONNX Runtime call."""
    batch_max_wait_ms: int = 20
    """Longest wait, after a micro-batch's first record arrived, for more records before scoring it."""
    max_record_bytes: int = 1_048_576
    """Request records larger than this go to the DLQ unread."""
    linger_ms: int = 5
    """Producer linger: how long results wait to fill a produce request."""
    producer_batch_bytes: int = 1_048_576
    """Producer batch size per partition."""
    session_timeout_ms: int = 10_000
    """Group session timeout: a worker silent this long (crashed) has its partitions moved to the others."""
    ack_timeout_s: float = 60.0
    """Longest wait for the broker to acknowledge a batch's results; past it the batch is scored again."""
    backoff_max_s: float = 5.0
    """Longest wait between retries while the broker is unreachable."""
    skew_tolerance: NonNegativeFloat = DEFAULT_SKEW_TOLERANCE
    """Integration check before a version serves: most absolute difference between the holdout accuracy the
    worker measures through its own record path and the accuracy the card claims; beyond it the version is
    refused as skew."""
    follow_models: bool = False
    """Follow the compacted models topic for model_name and hot-swap each accepted version without a restart, as
    the streaming app does. Off: serve model_version from model_repository for the life of the process."""
    models_topic: str = MODELS
    """With follow_models: the compacted topic the model messages arrive on."""
    model_events_topic: str = MODEL_EVENTS
    """With follow_models: topic for loaded / rejected / swapped / unchanged records."""
    signing_key_file: Path | None = None
    """With follow_models: file holding the HMAC-SHA256 key models are signed with. Empty: $MODEL_SIGNING_KEY,
    then $MODEL_SIGNING_KEY_FILE."""
