"""Kafka side of the serving patterns (kafka-python client, the project's real broker).

| module | concern |
|---|---|
| `topics.py` | topic names, how each is created (compacted `models`), the message-size limit |
| `messages.py` | the signed model message of the `models` topic (model, card, holdout set); signing keys |
| `publisher.py` | `python -m services.kafka.publisher`: publish (or roll back to) a repository version |
| `subscriber.py` | read one model's messages on a background thread; hand each to the event loop |
| `follower.py` | serve the latest accepted version of one model: verify, lifecycle, swap, record refusals |
| `events.py` | `model-events` records: loaded / rejected / swapped / unchanged |
| `emitter.py` | fire-and-forget producer with a bounded buffer (never blocks its caller; retries while it has room) |
| `labels.py` | the `labels` topic's record (request id -> true labels), checked by the apps and the trainer |
| `scoring/` | `python -m services.kafka.scoring`: the stream (batched) scoring worker (its modules: its docstring) |
| `metrics.py` | the Prometheus metrics of all of the above |

The local broker launcher and the Kafka helpers of the demo and tests are development tools
(`services/stack/kafka_broker.py`, `kafka_tools.py`, `demo_kafka.py`); the prediction-log sink sits
with the apps (`services/apps/prediction_log.py`). The consuming app's hot-swapping backend is
`services/apps/hotswap.py` (a thin layer over `follower.py`), its entry point
`services/apps/streaming.py`. Patterns: `patterns/model-as-data`, `patterns/stream-scoring`,
`patterns/online-learning` (with the trainer, `services/trainer`).
"""
