"""Stream (batched) scoring: a consumer-group worker from `scoring-requests` to `scoring-results`.

    python -m services.kafka.scoring          (settings from SCORING_* environment variables)

| module | concern |
|---|---|
| `settings.py` | `ScoringSettings` (SCORING_*) |
| `batch.py` | a micro-batch of request records -> results and dead letters (no Kafka I/O) |
| `output.py` | result and dead-letter records: their JSON and where they are sent |
| `worker.py` | the consume / score / send / acknowledge / commit loop on its thread; rebalances |
| `app.py` | the process: its model (a repository version, or following the models topic), the worker, HTTP |
| `__main__.py` | `python -m services.kafka.scoring` |

Request record (key: the request id, recommended, so a request's partition is stable), schema 1:

    {"request_id": "r-000123", "instances": [[14.1, 20.3, ...]]}      rows in contract order, or
    {"request_id": "r-000124", "instances": [{"mean radius": 14.1, ...}]}   rows by feature name

Result record on `scoring-results`, key = the request id; `model_version` is the version that
computed it:

    {"schema": 1, "request_id": "r-000123", "model_name": "breast-cancer", "model_version": 2,
     "labels": [1], "probabilities": [[0.03, 0.97]],
     "source": {"partition": 3, "offset": 1234, "timestamp_ms": 1735689600123}}

Dead letters on `scoring-dlq`, key = the request id when one could be read, else the original key.
`code` is the error's code from the one error hierarchy (services/core/errors.py), `reason` its
message, `field` where the problem is:

    {"schema": 1, "code": "invalid_input" | "payload_too_large", "reason": "instances[0] has 3 values; ...",
     "field": "instances[0]" | "request_id" | "body" | ..., "request_id": "..." | null,
     "source": {"topic", "partition", "offset", "timestamp_ms"}, "key": "...", "value": "<original, UTF-8>"
     (or "value_base64" when the bytes are not UTF-8), "worker": "host:pid"}

How it scores: the worker polls up to `batch_max_size` records, waiting at most `batch_max_wait_ms`
after the first one arrived (a micro-batch). It decodes them, validates all their rows together
through the model's `InputContract` (`requests_to_array`: vectorised; each request held to the
contract as if it came alone, so one bad record goes to the DLQ and the others are scored), makes
ONE ONNX Runtime call for the batch, and sends one result per request without waiting. Then it
waits for the broker to acknowledge every result and dead letter of the batch (`acks=all`,
idempotent producer), and only then commits the batch's offsets. If the acknowledgement fails,
nothing is committed and the worker seeks back to the batch's first offsets and scores it again.

At-least-once, and how duplicates are recognised: a crash, a rebalance or a failed commit after
results were acknowledged makes a worker score those requests again, so a request can have
more than one result; none is ever lost. Every result carries the request id as its key and
in its body, plus the request's partition and offset (`source`): consumers of
`scoring-results` keep the first (or last) result per request id and ignore the rest
(idempotent consumer). The duplicate is identical in labels and probabilities as long as the
model version did not change in between; the version is in every result.

More workers with the same `group_id` share the topic's partitions (the topic is created with
`topic_partitions`, 4 by default): Kafka assigns each partition to one worker and moves them
when a worker joins or leaves. Before a partition is taken away, the worker finishes, flushes
and commits the micro-batch it is building (rebalance listener), so a rebalance by itself does
not cause duplicates.

The model goes through the one model lifecycle (services/core/lifecycle.py), including the
integration check: the version's holdout set is scored through this worker's own record path
(JSON request -> contract -> ONNX Runtime) and must reach the accuracy its card claims within
`skew_tolerance`. By default the worker serves `model_version` from the repository. With
`follow_models` it follows the compacted `models` topic like the streaming app
(services/kafka/follower.py) and hot-swaps each accepted version without a restart: a
micro-batch is scored by the version it leased, the old version is unloaded once no batch
holds it, and refusals go to `model-events`.

Threads: kafka-python's consumer blocks, so the scoring loop runs on its own thread (and the
models-topic subscriber on another); the lifecycle, the swap and HTTP run on the event loop.

HTTP on `port`: /healthz, /readyz (a model version serving and the group joined), /metrics.
"""
