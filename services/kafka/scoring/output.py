"""Result and dead-letter records: their JSON (schema 1, see the package docstring) and where they go.

`send` hands every record of a scored micro-batch to the producer without waiting; the worker
then waits for all acknowledgements before it commits the batch's offsets.
"""

from __future__ import annotations

import base64
from typing import Any

import orjson
from kafka import KafkaProducer

from services.kafka import metrics
from services.kafka.scoring.batch import DeadLetter, Result, Scored

SCHEMA = 1


def result_value(result: Result, scored: Scored) -> bytes:
    r = result.record
    return orjson.dumps(
        {"schema": SCHEMA, "request_id": result.request_id, "model_name": scored.model_name,
         "model_version": scored.model_version, "labels": result.labels, "probabilities": result.probabilities,
         "source": {"partition": r.partition, "offset": r.offset, "timestamp_ms": r.timestamp}},
    )


def dead_letter_value(dead: DeadLetter, worker: str, max_record_bytes: int) -> bytes:
    r, exc = dead.record, dead.error
    letter: dict[str, Any] = {
        "schema": SCHEMA, "code": exc.code, "reason": exc.message, "field": exc.field, "request_id": dead.request_id,
        "source": {"topic": r.topic, "partition": r.partition, "offset": r.offset, "timestamp_ms": r.timestamp},
        "key": r.key.decode(errors="replace") if r.key else None,
        "worker": worker,
    }
    value = r.value or b""
    if len(value) <= max_record_bytes:
        try:
            letter["value"] = value.decode()
        except UnicodeDecodeError:
            letter["value_base64"] = base64.b64encode(value).decode()
    else:
        letter["value_truncated"] = True
    return orjson.dumps(letter)


class Output:
    """Where a worker's results and dead letters go."""

    def __init__(self, producer: KafkaProducer, *, results_topic: str, dlq_topic: str, worker: str,
                 max_record_bytes: int) -> None:
        self.producer = producer
        self.results_topic = results_topic
        self.dlq_topic = dlq_topic
        self.worker = worker
        self.max_record_bytes = max_record_bytes
        self.result_partitions = len(producer.partitions_for(results_topic))

    def send(self, scored: Scored) -> list[Any]:
        """Send every result and dead letter of a micro-batch; returns the send futures."""
        futures = []
        send, dlq, name = self.producer.send, self.dlq_topic, scored.model_name
        for dead in scored.dead:
            metrics.SCORING_DLQ.labels(name, dead.error.code).inc()
            key = dead.request_id.encode() if dead.request_id else dead.record.key
            futures.append(send(dlq, key=key, value=dead_letter_value(dead, self.worker, self.max_record_bytes)))
        topic, n_parts = self.results_topic, self.result_partitions
        for result in scored.results:
            partition = result.record.partition
            # Co-partitioned: the result goes to the request's partition number, so every result of a
            # request id (duplicates too) lands in one partition, and no key hashing per record.
            futures.append(send(topic, key=result.request_id.encode(), value=result_value(result, scored),
                                partition=partition if partition < n_parts else None))
        return futures
