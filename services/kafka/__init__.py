"""Kafka side of the serving patterns (kafka-python client, the project's real broker).

| module | concern |
|---|---|
| `broker.py` | fetch, start and stop a real single-node Kafka broker (KRaft) |
| `topics.py` | topic names, how each is created (compacted `models`), size limits |
| `messages.py` | the signed model message of the `models` topic; signing keys |
| `publisher.py` | `python -m services.kafka.publisher`: publish (or roll back to) a repository version |
| `subscriber.py` | follow one model's messages in a background thread; recover at start-up |
| `events.py` | `model-events` records: loaded / rejected / swapped / unchanged |
| `emitter.py` | fire-and-forget producer with a bounded buffer (never blocks its caller) |
| `prediction_log.py` | `predictions` events, plus the wrappers that add them to any app |
| `scoring.py` | `python -m services.kafka.scoring`: the stream (batched) scoring worker |
| `metrics.py` | the Prometheus metrics of all of the above |
| `tools.py`, `demo.py` | helpers for the demo, benchmarks and tests |

The consuming app's hot-swapping backend is `services/apps/hotswap.py`, its entry point
`services/apps/streaming.py`. Patterns: `patterns/model-as-data`, `patterns/stream-scoring`.
"""
