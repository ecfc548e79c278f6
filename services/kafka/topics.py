"""Topic names, how each topic is created, and the client settings that go with them.

| topic              | partitions | cleanup | key          | value                                         |
|--------------------|-----------:|---------|--------------|-----------------------------------------------|
| `models`           | 1          | compact | model name   | signed model message (`messages.py`)          |
| `model-events`     | 1          | delete  | model name   | JSON: loaded / rejected / swapped (`events.py`) |
| `scoring-requests` | 4          | delete  | request id   | JSON request (`scoring.py`)                   |
| `scoring-results`  | 4          | delete  | request id   | JSON result                                   |
| `scoring-dlq`      | 4          | delete  | request id   | JSON: the refused record and the reason       |
| `predictions`      | 4          | delete  | request id   | JSON prediction event (`prediction_log.py`)   |
| `labels`           | 4          | delete  | request id   | JSON label for an answered request (`labels.py`) |
| `labels-dlq`       | 1          | delete  | request id   | JSON: a label the trainer could not use, and why |
| `trainer-state`    | 1          | compact | model name   | JSON: the online trainer's committed offsets and lineage |
| `trainer-events`   | 1          | delete  | model name   | JSON: each online candidate and its gate verdict |

Every name is configurable (each service's settings), so tests give each test its own topics.
Topics are created on first use with the configuration above (a topic that already exists is
left as it is). The `models` topic must be compacted: a consumer that reads it from the start
then finds the latest message per model name, however old the topic is.

Size limits: a model travels as **one** message (no chunking). The broker accepts up to
`MAX_MESSAGE_BYTES` (16 MiB, `message.max.bytes`); the `models` topic sets `max.message.bytes`
to the same, the publisher's producer `max_request_size`, and the model consumer's
`max_partition_fetch_bytes` / `fetch_max_bytes` are raised to match.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from kafka import KafkaAdminClient
from kafka.errors import TopicAlreadyExistsError

log = logging.getLogger(__name__)

MODELS = "models"
MODEL_EVENTS = "model-events"
SCORING_REQUESTS = "scoring-requests"
SCORING_RESULTS = "scoring-results"
SCORING_DLQ = "scoring-dlq"
PREDICTIONS = "predictions"
LABELS = "labels"
LABELS_DLQ = "labels-dlq"
TRAINER_STATE = "trainer-state"
TRAINER_EVENTS = "trainer-events"

# Model files travel as single messages, so brokers and topics must accept far more than Kafka's
# 1 MiB default; the local broker (services/stack/kafka_broker.py) is started with this limit.
MAX_MESSAGE_BYTES = 16 * 1024 * 1024
# Where clients look for an existing cluster when no bootstrap servers are given.
ENV_BOOTSTRAP = "KAFKA_BOOTSTRAP_SERVERS"

SCORING_PARTITIONS = 4
# A fetch response carries a record batch plus its framing; leave room above the largest message.
MODEL_FETCH_BYTES = MAX_MESSAGE_BYTES + 1024 * 1024


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int = 1
    configs: dict[str, str] = field(default_factory=dict)


def models_topic(name: str = MODELS) -> TopicSpec:
    return TopicSpec(name, 1, {"cleanup.policy": "compact", "max.message.bytes": str(MAX_MESSAGE_BYTES)})


def compacted_topic(name: str) -> TopicSpec:
    return TopicSpec(name, 1, {"cleanup.policy": "compact"})


def plain_topic(name: str, partitions: int = 1) -> TopicSpec:
    return TopicSpec(name, partitions, {"cleanup.policy": "delete"})


def ensure_topics(bootstrap_servers: str, specs: list[TopicSpec], timeout_s: float = 30.0) -> list[str]:
    """Create the topics that do not exist yet; returns the names created. Raises on broker errors.

    The replication factor is the cluster's default (`default.replication.factor`): 1 on the
    project's single-node broker, whatever the operators chose on a real cluster.
    """
    admin = KafkaAdminClient(
        bootstrap_servers=bootstrap_servers,
        client_id="serving-patterns-admin",
        request_timeout_ms=int(timeout_s * 1000),
        bootstrap_timeout_ms=int(timeout_s * 1000),
    )
    try:
        existing = set(admin.list_topics())
        wanted = {s.name: s for s in specs if s.name not in existing}
        created: list[str] = []
        for spec in wanted.values():
            try:
                admin.create_topics(
                    {spec.name: {"num_partitions": spec.partitions, "replication_factor": -1, "configs": spec.configs}},
                    wait_for_metadata=True,
                )
                created.append(spec.name)
                log.info("topic created", extra={"topic": spec.name, "partitions": spec.partitions, **spec.configs})
            except TopicAlreadyExistsError:
                pass  # someone else created it in the meantime
        return created
    finally:
        admin.close()
