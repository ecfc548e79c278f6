"""The model-as-data pattern: the consuming application, with models arriving as Kafka events.

    python -m services.apps.streaming          (settings from STREAMING_* environment variables)

Same HTTP API as the embedded app (services/apps/api.py). The model is not packaged with the
app: a background subscriber follows the compacted `models` topic; each message is verified
(signature, checksums), then runs the model lifecycle (contract, load, the integration check of
its holdout set through the app's input path against `STREAMING_SKEW_TOLERANCE`, warm up) and
is swapped in atomically while the previous version keeps serving (services/kafka/follower.py,
services/apps/hotswap.py). At start-up the app reads the topic to its end and serves the latest
accepted version; /readyz answers 503 until then.

Every response names the version that computed it (`model_version`, `x-model-version`);
/metrics shows `model_served_version` and the swap/rejection counters (`model_swaps_total`,
`model_rejections_total{reason}`). Decisions are written to `model-events`; with
`STREAMING_PREDICTION_LOG=true` every answer also goes to the `predictions` topic. See
patterns/model-as-data/README.md.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from pydantic import NonNegativeFloat
from starlette.routing import Route

from services.apps.api import build_app
from services.apps.backend import ContractCache, PredictionSink
from services.apps.feedback import FeedbackLog
from services.apps.hotswap import HotSwapBackend, version_builder
from services.apps.prediction_log import PredictionLog
from services.apps.v2 import v2_routes
from services.core.errors import ServingError
from services.core.http import serve
from services.core.lifecycle import DEFAULT_SKEW_TOLERANCE, Lifecycle
from services.core.logging import configure_logging
from services.core.runtime import RuntimeOptions
from services.core.settings import ModelSettings, settings_config
from services.kafka import messages
from services.kafka.follower import follow_models_topic, reference_card
from services.kafka.topics import LABELS, MODEL_EVENTS, MODELS, PREDICTIONS, SCORING_PARTITIONS

log = logging.getLogger(__name__)
APP_NAME = "streaming"


class StreamingSettings(ModelSettings):
    """Settings of the streaming (model-as-data) app; environment variables are prefixed STREAMING_.

    `model_name` is the record key followed on the models topic.
    """

    model_config = settings_config("STREAMING_")

    model_version: int | None = None
    """Ignored here: the version served is whichever was published last (and accepted)."""
    bootstrap_servers: str = "127.0.0.1:9092"
    """Kafka bootstrap servers, comma-separated host:port."""
    models_topic: str = MODELS
    """Compacted topic the model messages arrive on (created compacted if missing)."""
    model_events_topic: str = MODEL_EVENTS
    """Topic for loaded / rejected / swapped / unchanged records."""
    signing_key_file: Path | None = None
    """File holding the HMAC-SHA256 key models are signed with (a mounted Secret). Empty: $MODEL_SIGNING_KEY,
    then $MODEL_SIGNING_KEY_FILE."""
    contract_card: Path | None = None
    """model-card.json defining the input contract this app sends (feature names and order, dtype, classes).
    Empty: the newest gate-passing card of model_name in model_repository; if there is none, only compatibility
    with the version being served is checked."""
    skew_tolerance: NonNegativeFloat = DEFAULT_SKEW_TOLERANCE
    """Integration check before a swap: most absolute difference between the holdout accuracy the app measures
    through its own input path and the accuracy the card claims; beyond it the version is refused as skew."""
    backoff_max_s: float = 5.0
    """Longest wait between reconnect attempts while the broker is unreachable."""
    prediction_log: bool = False
    """Emit every answered prediction to the predictions topic (asynchronous; drops counted, never blocks)."""
    predictions_topic: str = PREDICTIONS
    """Topic of the prediction log."""
    prediction_log_bootstrap_servers: str = ""
    """Kafka cluster for the prediction log, if not the one the models come from (empty: bootstrap_servers)."""
    prediction_log_buffer: int = 10_000
    """Prediction events buffered while the broker is slow or absent; beyond that they are dropped and counted."""
    prediction_log_inputs: bool = False
    """Include the input rows in prediction events (else only their sha256)."""
    events_buffer: int = 1_000
    """model-events records buffered while the broker is slow or absent."""
    feedback: bool = False
    """Serve POST /feedback: labels of answered requests go to labels_topic, for the online trainer
    (services/apps/feedback.py). Pair it with prediction_log and prediction_log_inputs."""
    labels_topic: str = LABELS
    """Topic POST /feedback writes labels to (keyed by request id)."""
    v2_api: bool = False
    """Also answer KServe V2 REST (POST /v2/models/{model}/infer, /v2/health/ready), so the router can route to
    this app (the online-learning pattern: services/apps/v2.py)."""
    accept_demo_material: bool = False
    """Take versions whose card says they failed the quality gate as exempt demo material (rollback demos).
    Off: such a version is refused (`gate`); a version that failed its gate otherwise is refused always."""


def create_app(settings: StreamingSettings) -> Any:
    follower = follow_models_topic(
        app=APP_NAME, bootstrap_servers=settings.bootstrap_servers, models_topic=settings.models_topic,
        model_events_topic=settings.model_events_topic, model_name=settings.model_name,
        signing_key_file=settings.signing_key_file, backoff_max_s=settings.backoff_max_s,
        lifecycle=Lifecycle(RuntimeOptions(settings.intra_op_threads, settings.inter_op_threads),
                            skew_tolerance=settings.skew_tolerance),
        build=version_builder(settings.max_batch_size),
        reference=reference_card(settings.model_repository, settings.model_name, settings.contract_card),
        events_buffer=settings.events_buffer, accept_demo_material=settings.accept_demo_material)
    backend = HotSwapBackend(follower)
    sinks: tuple[PredictionSink, ...] = ()
    log_servers = settings.prediction_log_bootstrap_servers or settings.bootstrap_servers
    if settings.prediction_log:
        sinks = (PredictionLog(log_servers, settings.predictions_topic, app=APP_NAME,
                               buffer_size=settings.prediction_log_buffer,
                               include_inputs=settings.prediction_log_inputs, topic_partitions=SCORING_PARTITIONS),)
    extra_routes: tuple[Route, ...] = ()
    if settings.feedback:
        feedback = FeedbackLog(log_servers, settings.labels_topic, source=APP_NAME,
                               buffer_size=settings.prediction_log_buffer)
        sinks = (*sinks, feedback)
        extra_routes = (feedback.route(backend),)
    if settings.v2_api:
        contracts = ContractCache(max_batch_size=settings.max_batch_size, range_policy=settings.range_policy,
                                  range_margin=settings.range_margin)
        extra_routes = (*extra_routes, *v2_routes(backend, app_name=APP_NAME, contracts=contracts,
                                                  max_body_bytes=settings.max_body_bytes, sinks=sinks))
    app: Any = build_app(
        backend,
        app_name=APP_NAME,
        max_body_bytes=settings.max_body_bytes,
        max_batch_size=settings.max_batch_size,
        range_policy=settings.range_policy,
        range_margin=settings.range_margin,
        sinks=sinks,
        extra_routes=extra_routes,
    )
    app.state.backend = backend
    return app


def quiet_kafka_client(level: str) -> None:
    """kafka-python logs every connection at INFO; keep its warnings and errors only."""
    logging.getLogger("kafka").setLevel(max(logging.WARNING, logging.getLevelName(level.upper())))


def main() -> None:
    settings = StreamingSettings()
    configure_logging(APP_NAME, settings.log_level)
    quiet_kafka_client(settings.log_level)
    try:
        app = create_app(settings)
    except (messages.SigningKeyError, ServingError) as exc:
        log.error("cannot start", extra={"error": getattr(exc, "message", str(exc))})
        raise SystemExit(2) from exc
    serve(app, settings)


if __name__ == "__main__":
    main()
