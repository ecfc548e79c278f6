"""Kafka side of the serving patterns (kafka-python client, the project's real broker).

| module | concern |
|---|---|
| `topics.py` | topic names, how each is created (compacted `models`), the message-size limit |
| `messages.py` | the signed model message of the `models` topic; signing keys |
| `publisher.py` | `python -m services.kafka.publisher`: publish (or roll back to) a repository version |
| `subscriber.py` | follow one model's messages in a background thread; recover at start-up |
| `events.py` | `model-events` records: loaded / rejected / swapped / unchanged |
| `emitter.py` | fire-and-forget producer with a bounded buffer (never blocks its caller) |
| `scoring.py` | `python -m services.kafka.scoring`: the stream (batched) scoring worker |
| `metrics.py` | the Prometheus metrics of all of the above |

The local broker launcher and the Kafka helpers of the demo and tests are development tools
(`services/stack/kafka_broker.py`, `kafka_tools.py`, `demo_kafka.py`); the prediction-log sink sits
with the apps (`services/apps/prediction_log.py`). The consuming app's hot-swapping backend is
`services/apps/hotswap.py`, its entry point
`services/apps/streaming.py`. Patterns: `patterns/model-as-data`, `patterns/stream-scoring`.
"""
