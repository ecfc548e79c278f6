"""The scoring loop, on its own thread (kafka-python's consumer blocks): poll a micro-batch, score
it with the version serving now, send, wait for the acknowledgements, commit; on failure seek
back and score the batch again. Rebalances finish the batch in progress first.

The model is not held here: every micro-batch leases the version its `Slot` serves now
(services/core/lifecycle.py), so a swap on the event loop takes effect from the next batch and
the old version is unloaded only once no batch holds it.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.consumer.subscription_state import ConsumerRebalanceListener
from kafka.errors import CommitFailedError
from kafka.structs import OffsetAndMetadata

from services.core.lifecycle import Slot
from services.kafka import metrics
from services.kafka.events import instance_id
from services.kafka.scoring.batch import ScoringVersion, score_records
from services.kafka.scoring.output import Output
from services.kafka.scoring.settings import ScoringSettings
from services.kafka.topics import ensure_topics, plain_topic

log = logging.getLogger(__name__)


class _Rebalance(ConsumerRebalanceListener):
    def __init__(self, worker: ScoringWorker) -> None:
        self.worker = worker

    def on_partitions_revoked(self, revoked):
        # Finish what was read from these partitions before another worker takes them over.
        if self.worker.pending:
            log.info("partitions revoked; finishing the micro-batch in progress",
                     extra={"revoked": [tp.partition for tp in revoked], "records": len(self.worker.pending)})
            self.worker.flush_pending()

    def on_partitions_assigned(self, assigned):
        self.worker.assigned = sorted(tp.partition for tp in assigned)
        self.worker.joined.set()
        log.info("partitions assigned", extra={"partitions": self.worker.assigned})


class ScoringWorker:
    def __init__(self, settings: ScoringSettings, slot: Slot[ScoringVersion]) -> None:
        self.s = settings
        self.slot = slot
        self.name = settings.model_name
        self.instance = instance_id()
        self.pending: list[Any] = []
        self.assigned: list[int] = []
        self.joined = threading.Event()
        self.stopping = threading.Event()
        self.consumer: KafkaConsumer | None = None
        self.output: Output | None = None
        self._thread: threading.Thread | None = None

    @property
    def ready(self) -> bool:
        return self.slot.current is not None and self.joined.is_set()

    def start(self) -> None:
        self._thread = threading.Thread(target=self.run, name="scoring", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 30.0) -> None:
        """Finish and commit the micro-batch in progress, then close the clients."""
        self.stopping.set()
        if self._thread is not None:
            self._thread.join(timeout_s)

    # -- clients -----------------------------------------------------------------------------------

    def _connect(self) -> None:
        s = self.s
        self.close()  # whatever a failed earlier attempt left behind
        ensure_topics(s.bootstrap_servers, [plain_topic(t, s.topic_partitions)
                                            for t in (s.requests_topic, s.results_topic, s.dlq_topic)], timeout_s=10)
        producer = KafkaProducer(
            bootstrap_servers=s.bootstrap_servers,
            client_id=f"scoring-{self.instance}",
            acks="all",
            enable_idempotence=True,
            linger_ms=s.linger_ms,
            batch_size=s.producer_batch_bytes,
            max_request_size=8 * 1024 * 1024,
            max_block_ms=10000,
            # kafka-python requires delivery_timeout > linger + request_timeout.
            delivery_timeout_ms=int(s.ack_timeout_s * 1000),
            request_timeout_ms=max(1000, min(30000, int(s.ack_timeout_s * 1000) // 2 - s.linger_ms)),
            bootstrap_timeout_ms=5000,
            reconnect_backoff_max_ms=int(s.backoff_max_s * 1000),
        )
        self.output = Output(producer, results_topic=s.results_topic, dlq_topic=s.dlq_topic, worker=self.instance,
                             max_record_bytes=s.max_record_bytes)
        self.consumer = KafkaConsumer(
            bootstrap_servers=s.bootstrap_servers,
            client_id=f"scoring-{self.instance}",
            group_id=s.group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=s.batch_max_size,
            fetch_max_wait_ms=max(1, min(500, s.batch_max_wait_ms)),
            max_partition_fetch_bytes=4 * 1024 * 1024,
            allow_auto_create_topics=False,
            session_timeout_ms=s.session_timeout_ms,
            heartbeat_interval_ms=max(500, s.session_timeout_ms // 4),
            bootstrap_timeout_ms=5000,
            reconnect_backoff_max_ms=int(s.backoff_max_s * 1000),
        )
        self.consumer.subscribe([s.requests_topic], listener=_Rebalance(self))

    def close(self) -> None:
        if self.consumer is not None:
            try:
                self.consumer.close(autocommit=False, timeout_ms=5000)
            except Exception:
                pass
            self.consumer = None
        if self.output is not None:
            try:
                self.output.producer.close(timeout=5)
            except Exception:
                pass
            self.output = None

    # -- main loop -----------------------------------------------------------------------------------

    def run(self) -> None:
        delay = 0.2
        while not self.stopping.is_set():
            if self.slot.current is None:
                self.stopping.wait(0.2)  # no model yet (following the models topic): do not join the group
                continue
            try:
                if self.consumer is None:
                    self._connect()
                    delay = 0.2
                self._poll_batch()
                if self.pending:
                    self.flush_pending()
            except Exception as exc:
                metrics.SCORING_ERRORS.labels(self.name, "broker").inc()
                log.warning("scoring loop error; retrying", extra={"error": repr(exc), "retry_in_s": round(delay, 2)})
                self._rewind()
                self.stopping.wait(delay)
                delay = min(delay * 2, self.s.backoff_max_s)
        if self.pending and self.consumer is not None:
            try:
                self.flush_pending()
            except Exception as exc:
                log.warning("could not finish the last micro-batch; it will be redelivered",
                            extra={"error": repr(exc)})
        self.close()

    def _poll_batch(self) -> None:
        assert self.consumer is not None
        max_size, max_wait = self.s.batch_max_size, self.s.batch_max_wait_ms / 1000
        first_at: float | None = None
        while len(self.pending) < max_size and not self.stopping.is_set():
            if first_at is None:
                timeout_ms = 200
            else:
                left = first_at + max_wait - time.monotonic()
                if left <= 0:
                    break
                timeout_ms = max(1, int(left * 1000))
            polled = self.consumer.poll(timeout_ms=timeout_ms, max_records=max_size - len(self.pending))
            for records in polled.values():
                self.pending.extend(records)
            if self.pending and first_at is None:
                first_at = time.monotonic()
            elif first_at is None:
                return  # idle: let run() check for stop

    def _rewind(self) -> None:
        """After a failure: forget the micro-batch and seek back to its first offsets (re-read)."""
        if not self.pending or self.consumer is None:
            self.pending.clear()
            return
        first: dict[TopicPartition, int] = {}
        for r in self.pending:
            tp = TopicPartition(r.topic, r.partition)
            first[tp] = min(first.get(tp, r.offset), r.offset)
        self.pending.clear()
        assigned = self.consumer.assignment()
        for tp, offset in first.items():
            if tp in assigned:
                try:
                    self.consumer.seek(tp, offset)
                except Exception as exc:
                    log.warning("cannot seek back; the committed offset will be used",
                                extra={"partition": tp.partition, "error": repr(exc)})

    def flush_pending(self) -> None:
        """Score, send, wait for the acks, commit. On failure: rewind so the batch is read again."""
        assert self.consumer is not None and self.output is not None
        batch = self.pending
        started = time.perf_counter()
        with self.slot.lease() as version:  # the swap's drain waits for this batch's prediction
            scored = score_records(batch, version, self.s.max_record_bytes)
        name, label = scored.model_name, str(scored.model_version)
        futures = self.output.send(scored)
        metrics.SCORING_BATCH_SECONDS.labels(name, label).observe(time.perf_counter() - started)
        if scored.results:
            metrics.SCORING_BATCH_ROWS.labels(name, label).observe(scored.rows)
            metrics.SCORING_ROWS.labels(name, label).inc(scored.rows)
            metrics.SCORING_RECORDS.labels(name, label, "scored").inc(len(scored.results))
        if scored.dead:
            metrics.SCORING_RECORDS.labels(name, label, "dlq").inc(len(scored.dead))
        waited = time.perf_counter()
        self.output.producer.flush(timeout=self.s.ack_timeout_s)
        failed = [f for f in futures if not f.succeeded()]
        if failed:
            metrics.SCORING_ERRORS.labels(self.name, "delivery").inc()
            log.warning("results not acknowledged; the micro-batch will be scored again",
                        extra={"records": len(batch), "unacknowledged": len(failed),
                               "error": repr(failed[0].exception) if failed[0].is_done else "timeout"})
            self._rewind()
            return
        offsets: dict[TopicPartition, OffsetAndMetadata] = {}
        for r in batch:
            tp = TopicPartition(r.topic, r.partition)
            if tp not in offsets or offsets[tp].offset <= r.offset:
                offsets[tp] = OffsetAndMetadata(r.offset + 1, "", -1)
        self.pending = []
        try:
            self.consumer.commit(offsets)
        except CommitFailedError as exc:
            # The group moved on (rebalance): the new owner re-reads from the last commit.
            metrics.SCORING_ERRORS.labels(self.name, "commit").inc()
            log.warning("offset commit failed; these records may be scored again",
                        extra={"records": len(batch), "error": repr(exc)})
        metrics.SCORING_COMMIT_SECONDS.labels(name, label).observe(time.perf_counter() - waited)
