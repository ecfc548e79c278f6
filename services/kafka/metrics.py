"""Prometheus metrics of the Kafka-side components: the model lifecycle of services that follow
the `models` topic (the streaming app, the scoring worker), the models-topic subscriber, stream
scoring and the background emitters (prediction log, model events).

Module-level objects, registered once per process in prometheus_client's default registry, so
whichever service imports them exposes them on its /metrics. Counters end in `_total`, durations
are `_seconds` histograms; models are labelled `model_name` / `model_version`.

The lifecycle metrics say what happened to a model, not which transport brought it:
`model_swaps_total`, `model_rejections_total{reason}`, `model_load_seconds`,
`model_publish_to_swap_seconds`, `model_messages_total{outcome}`, `model_served_version`,
`model_served_info`. Reasons are the refusal codes of services/core/lifecycle.py and
services/kafka/messages.py. Kafka client health keeps the `kafka_` prefix.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

# Model loads take milliseconds to seconds; publish-to-swap adds the consumer's poll interval.
SWAP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)

# -- model lifecycle of a service following the models topic -----------------------------------

MODEL_MESSAGES = Counter(
    "model_messages_total",
    "Model messages for this service's model read from the models topic, by outcome "
    "(swapped, unchanged, rejected).",
    ["model_name", "model_version", "outcome"],
)
MODEL_REJECTIONS = Counter(
    "model_rejections_total",
    "Model versions refused, by reason (malformed, signature, checksum, name, contract, load, holdout, skew); "
    "the version served before keeps serving.",
    ["model_name", "model_version", "reason"],
)
MODEL_SWAPS = Counter(
    "model_swaps_total", "Model versions swapped into service (the new version is labelled).",
    ["model_name", "model_version"],
)
MODEL_LOAD_SECONDS = Histogram(
    "model_load_seconds",
    "Time from reading a model message to the new version being ready (verify, load, integration check, "
    "warm up).",
    ["model_name", "model_version"],
    buckets=SWAP_BUCKETS,
)
MODEL_PUBLISH_TO_SWAP_SECONDS = Histogram(
    "model_publish_to_swap_seconds",
    "Time from the model message's Kafka timestamp to the new version serving (live messages only).",
    ["model_name", "model_version"],
    buckets=SWAP_BUCKETS,
)
MODEL_SERVED = Gauge(
    "model_served_info", "1 for the model version this service serves right now, 0 for versions it served before.",
    ["model_name", "model_version"],
)
MODEL_SERVED_VERSION = Gauge(
    "model_served_version", "Version number this service serves right now (0 before the first model).",
    ["model_name"],
)

# -- the models-topic subscriber ------------------------------------------------------------------

SUBSCRIBER_ERRORS = Counter(
    "kafka_subscriber_errors_total",
    "Errors of the models-topic subscriber (broker unreachable, timeouts); it retries with backoff.",
    ["model_name"],
)
SUBSCRIBER_RECOVERED = Gauge(
    "kafka_subscriber_recovered",
    "1 once the subscriber has read the models topic up to its end offsets at start-up.",
    ["model_name"],
)

# -- background emitters (prediction log, model events) ----------------------------------------

EMITTER_SENT = Counter(
    "kafka_emitter_sent_total", "Records the broker acknowledged, per emitter.", ["emitter"]
)
EMITTER_DROPPED = Counter(
    "kafka_emitter_dropped_total",
    "Records dropped so that callers never wait: buffer_full (the broker is slow or absent), "
    "send_failed (the broker refused or delivery timed out), encode_failed.",
    ["emitter", "reason"],
)
EMITTER_RETRIED = Counter(
    "kafka_emitter_retried_total",
    "Records put back into the emitter's buffer after a send the broker did not acknowledge in time "
    "(absent or slow), to be sent again; they count against the buffer, so drops start only when it is full.",
    ["emitter"],
)
EMITTER_BUFFERED = Gauge(
    "kafka_emitter_buffered", "Records waiting in the emitter's bounded buffer.", ["emitter"]
)

# -- stream scoring worker -----------------------------------------------------------------------

SCORING_RECORDS = Counter(
    "kafka_scoring_records_total",
    "Request records handled, by outcome (scored, dlq).",
    ["model_name", "model_version", "outcome"],
)
SCORING_ROWS = Counter(
    "kafka_scoring_rows_total", "Rows scored.", ["model_name", "model_version"]
)
SCORING_DLQ = Counter(
    "kafka_scoring_dlq_total", "Records sent to the dead-letter topic, by reason code.", ["model_name", "code"]
)
SCORING_BATCH_ROWS = Histogram(
    "kafka_scoring_batch_rows",
    "Rows per ONNX Runtime call.",
    ["model_name", "model_version"],
    buckets=(1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000),
)
SCORING_BATCH_SECONDS = Histogram(
    "kafka_scoring_batch_seconds",
    "Time to score one micro-batch: decode, validate, predict, encode and send (before the ack wait).",
    ["model_name", "model_version"],
    buckets=BATCH_BUCKETS,
)
SCORING_COMMIT_SECONDS = Histogram(
    "kafka_scoring_ack_commit_seconds",
    "Time waiting for the broker to acknowledge a batch's results plus the offset commit.",
    ["model_name", "model_version"],
    buckets=BATCH_BUCKETS,
)
SCORING_ERRORS = Counter(
    "kafka_scoring_errors_total",
    "Worker errors by kind (delivery: results not acknowledged, the batch is re-read; commit: offset "
    "commit failed, the batch may be redelivered; broker: other client errors).",
    ["model_name", "kind"],
)
