"""Stream (batched) scoring: a consumer-group worker from `scoring-requests` to `scoring-results`.

    python -m services.kafka.scoring          (settings from SCORING_* environment variables)

Request record (key: the request id, recommended, so a request's partition is stable), schema 1:

    {"request_id": "r-000123", "instances": [[14.1, 20.3, ...]]}      rows in contract order, or
    {"request_id": "r-000124", "instances": [{"mean radius": 14.1, ...}]}   rows by feature name

Result record on `scoring-results`, key = the request id:

    {"schema": 1, "request_id": "r-000123", "model_name": "breast-cancer", "model_version": 2,
     "labels": [1], "probabilities": [[0.03, 0.97]],
     "source": {"partition": 3, "offset": 1234, "timestamp_ms": 1735689600123}}

Dead letters on `scoring-dlq`, key = the request id when one could be read, else the original key:

    {"schema": 1, "code": "invalid_json" | "not_an_object" | "missing_request_id" | "invalid_input"
     | "too_many_rows" | "too_large" | "out_of_range", "reason": "instances[0] has 3 values; ...",
     "field": "instances[0]" | null, "request_id": "..." | null,
     "source": {"topic", "partition", "offset", "timestamp_ms"}, "key": "...", "value": "<original, UTF-8>"
     (or "value_base64" when the bytes are not UTF-8), "worker": "host:pid"}

How it scores: the worker polls up to `batch_max_size` records, waiting at most `batch_max_wait_ms`
after the first one arrived (a micro-batch). It decodes them, validates all rows together
(`InputContract`, vectorised; only a batch with a bad record is re-checked record by record to
find which go to the DLQ), makes ONE ONNX Runtime call for the batch, and sends one result per
request without waiting. Then it waits for the broker to acknowledge every result and dead
letter of the batch (`acks=all`, idempotent producer), and only then commits the batch's
offsets. If the acknowledgement fails, nothing is committed and the worker seeks back to the
batch's first offsets and scores it again.

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

HTTP on `port`: /healthz, /readyz (model loaded and the group joined), /metrics.
"""

from __future__ import annotations

import base64
import logging
import signal
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np
import orjson
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.consumer.subscription_state import ConsumerRebalanceListener
from kafka.errors import CommitFailedError
from kafka.structs import OffsetAndMetadata
from prometheus_client import CONTENT_TYPE_LATEST, disable_created_metrics, generate_latest

from services.core.contract import InputContract, RangePolicy
from services.core.errors import ClientError
from services.core.logging import configure_logging
from services.core.repository import version_dir
from services.core.runtime import OnnxModel, RuntimeOptions
from services.core.settings import ModelSettings, settings_config
from services.kafka import metrics
from services.kafka.events import instance_id
from services.kafka.topics import (
    SCORING_DLQ,
    SCORING_PARTITIONS,
    SCORING_REQUESTS,
    SCORING_RESULTS,
    ensure_topics,
    plain_topic,
)

log = logging.getLogger(__name__)
disable_created_metrics()  # as services.core.http does for the HTTP services
SCHEMA = 1
MAX_REQUEST_ID = 200


class ScoringSettings(ModelSettings):
    """Settings of the stream-scoring worker; environment variables are prefixed SCORING_.

    `max_batch_size` (inherited) is the most rows one request record may carry; more goes to the DLQ.
    `port` serves /healthz, /readyz and /metrics.
    """

    model_config = settings_config("SCORING_")

    port: int = 8090
    """HTTP port for /healthz, /readyz and /metrics."""
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
    def __init__(self, settings: ScoringSettings, model: OnnxModel) -> None:
        self.s = settings
        self.model = model
        self.name = model.name
        self.version = str(model.version)
        self.contract = InputContract(
            model.card,
            max_batch_size=max(settings.max_batch_size, 1) * max(settings.batch_max_size, 1),
            range_policy=settings.range_policy,
            range_margin=settings.range_margin,
        )
        self.instance = instance_id()
        self.pending: list[Any] = []
        self.assigned: list[int] = []
        self.joined = threading.Event()
        self.stopping = threading.Event()
        self.consumer: KafkaConsumer | None = None
        self.producer: KafkaProducer | None = None
        self._result_partitions = 0
        m = metrics
        self._scored = m.SCORING_RECORDS.labels(self.name, self.version, "scored")
        self._dlq_records = m.SCORING_RECORDS.labels(self.name, self.version, "dlq")
        self._rows = m.SCORING_ROWS.labels(self.name, self.version)
        self._batch_rows = m.SCORING_BATCH_ROWS.labels(self.name, self.version)
        self._batch_seconds = m.SCORING_BATCH_SECONDS.labels(self.name, self.version)
        self._commit_seconds = m.SCORING_COMMIT_SECONDS.labels(self.name, self.version)

    @property
    def ready(self) -> bool:
        return self.model.ready and self.joined.is_set()

    # -- clients -----------------------------------------------------------------------------------

    def _connect(self) -> None:
        s = self.s
        self.close()  # whatever a failed earlier attempt left behind
        ensure_topics(s.bootstrap_servers, [plain_topic(t, s.topic_partitions)
                                            for t in (s.requests_topic, s.results_topic, s.dlq_topic)], timeout_s=10)
        self.producer = KafkaProducer(
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
        self._result_partitions = len(self.producer.partitions_for(s.results_topic))

    def close(self) -> None:
        if self.consumer is not None:
            try:
                self.consumer.close(autocommit=False, timeout_ms=5000)
            except Exception:
                pass
            self.consumer = None
        if self.producer is not None:
            try:
                self.producer.close(timeout=5)
            except Exception:
                pass
            self.producer = None

    # -- main loop -----------------------------------------------------------------------------------

    def run(self) -> None:
        delay = 0.2
        while not self.stopping.is_set():
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
        assert self.consumer is not None and self.producer is not None
        batch = self.pending
        started = time.perf_counter()
        futures = self._score_and_send(batch)
        self._batch_seconds.observe(time.perf_counter() - started)
        waited = time.perf_counter()
        self.producer.flush(timeout=self.s.ack_timeout_s)
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
        self._commit_seconds.observe(time.perf_counter() - waited)

    # -- scoring -------------------------------------------------------------------------------------

    def _score_and_send(self, batch: list[Any]) -> list[Any]:
        producer = self.producer
        assert producer is not None
        s = self.s
        futures: list[Any] = []
        ids: list[str] = []
        rows: list[Any] = []
        counts: list[int] = []
        good: list[Any] = []
        per_request = s.max_batch_size
        maybe_bool = False  # JSON true/false would pass as 1.0/0.0 through np.array: let the contract see them
        for r in batch:
            value = r.value
            if not value:
                futures.append(self._dead(r, "invalid_json", "record has no value"))
                continue
            if len(value) > s.max_record_bytes:
                futures.append(self._dead(r, "too_large", f"record value is {len(value)} bytes; "
                                                          f"the limit is {s.max_record_bytes}"))
                continue
            try:
                body = orjson.loads(value)
            except orjson.JSONDecodeError as exc:
                futures.append(self._dead(r, "invalid_json", f"value is not valid JSON: {exc}"))
                continue
            if not isinstance(body, dict):
                futures.append(self._dead(r, "not_an_object",
                                          f"value must be a JSON object, got {type(body).__name__}"))
                continue
            rid = body.get("request_id")
            if not isinstance(rid, str) or not rid or len(rid) > MAX_REQUEST_ID:
                futures.append(self._dead(r, "missing_request_id",
                                          f'"request_id" must be a non-empty string of at most {MAX_REQUEST_ID} '
                                          "characters", field="request_id"))
                continue
            inst = body.get("instances")
            if not isinstance(inst, list) or not inst:
                futures.append(self._dead(r, "invalid_input", '"instances" must be a non-empty list of rows',
                                          field="instances", request_id=rid))
                continue
            if len(inst) > per_request:
                futures.append(self._dead(r, "too_many_rows", f"instances has {len(inst)} rows; the limit is "
                                          f"{per_request} per request", field="instances", request_id=rid))
                continue
            maybe_bool = maybe_bool or b"true" in value or b"false" in value
            ids.append(rid)
            rows.extend(inst)
            counts.append(len(inst))
            good.append((r, inst))
        if not good:
            return futures

        try:
            x = self._fast_matrix(rows) if not maybe_bool else None
            if x is None:
                x = self.contract.rows_to_array(rows)
        except ClientError:
            x, ids, counts, good = self._validate_each(good, futures)
            if not good:
                return futures
        if self.contract.range_policy is RangePolicy.REJECT:
            x, ids, counts, good = self._ranges(x, ids, counts, good, futures)
            if not good:
                return futures

        p = self.model.predict_sync(x)
        self._batch_rows.observe(len(x))
        self._rows.inc(len(x))
        self._scored.inc(len(good))
        labels = p.labels.tolist()
        # float32 -> shortest decimal that reads back as the same float32 (as orjson prints numpy float32)
        proba = orjson.loads(orjson.dumps(p.probabilities, option=orjson.OPT_SERIALIZE_NUMPY))
        name, version = self.name, self.model.version
        send, topic, dumps = producer.send, s.results_topic, orjson.dumps
        n_parts = self._result_partitions
        start = 0
        for rid, n, (r, _) in zip(ids, counts, good, strict=True):
            end = start + n
            value = dumps(
                {"schema": SCHEMA, "request_id": rid, "model_name": name, "model_version": version,
                 "labels": labels[start:end], "probabilities": proba[start:end],
                 "source": {"partition": r.partition, "offset": r.offset, "timestamp_ms": r.timestamp}},
            )
            # Co-partitioned: the result goes to the request's partition number, so every result of a
            # request id (duplicates too) lands in one partition, and no key hashing per record.
            part = r.partition if r.partition < n_parts else None
            futures.append(send(topic, key=rid.encode(), value=value, partition=part))
            start = end
        return futures

    def _fast_matrix(self, rows: list[Any]) -> np.ndarray | None:
        """The common case, rows as arrays of numbers: one numpy conversion, then the contract's
        shape and finiteness check. None when anything else is in there (the contract diagnoses)."""
        try:
            m = np.array(rows)
        except ValueError:
            return None
        if m.dtype.kind not in "iuf" or m.ndim != 2 or m.shape[1] != self.contract.n_features:
            return None
        return self.contract.check_array(m)

    def _validate_each(self, good, futures):
        """Slow path, only for a batch with a bad record: find which ones, send those to the DLQ."""
        xs, ids, counts, kept = [], [], [], []
        for r, inst in good:
            try:
                xs.append(self.contract.rows_to_array(inst))
            except ClientError as exc:
                rid = orjson.loads(r.value)["request_id"]
                futures.append(self._dead(r, "invalid_input", exc.message, field=exc.field, request_id=rid))
                continue
            ids.append(orjson.loads(r.value)["request_id"])
            counts.append(len(inst))
            kept.append((r, inst))
        x = np.concatenate(xs) if xs else np.empty((0, self.contract.n_features), np.float32)
        return x, ids, counts, kept

    def _ranges(self, x, ids, counts, good, futures):
        c = self.contract
        if c.range_policy is not RangePolicy.REJECT:
            return x, ids, counts, good  # flag: scored as usual (the worker has no side channel to flag on)
        outside = (x < c.low) | (x > c.high)
        if not outside.any():
            return x, ids, counts, good
        bounds = np.cumsum([0, *counts])
        keep_rows, k_ids, k_counts, k_good = [], [], [], []
        for i, (rid, n, g) in enumerate(zip(ids, counts, good, strict=True)):
            block = outside[bounds[i] : bounds[i + 1]]
            if block.any():
                row, col = np.argwhere(block)[0]
                value = float(x[bounds[i] + row, col])
                futures.append(self._dead(
                    g[0], "out_of_range",
                    f"instances[{row}].{c.names[col]}={value:g} is outside the accepted range "
                    f"[{c.low[col]:g}, {c.high[col]:g}] (training range plus margin)",
                    field=f"instances[{row}].{c.names[col]}", request_id=rid))
                continue
            keep_rows.append(x[bounds[i] : bounds[i + 1]])
            k_ids.append(rid)
            k_counts.append(n)
            k_good.append(g)
        x = np.concatenate(keep_rows) if keep_rows else x[:0]
        return x, k_ids, k_counts, k_good

    def _dead(self, r: Any, code: str, reason: str, *, field: str | None = None, request_id: str | None = None):
        assert self.producer is not None
        self._dlq_records.inc()
        metrics.SCORING_DLQ.labels(self.name, code).inc()
        value = r.value or b""
        letter: dict[str, Any] = {
            "schema": SCHEMA, "code": code, "reason": reason, "field": field, "request_id": request_id,
            "source": {"topic": r.topic, "partition": r.partition, "offset": r.offset, "timestamp_ms": r.timestamp},
            "key": r.key.decode(errors="replace") if r.key else None,
            "worker": self.instance,
        }
        if len(value) <= self.s.max_record_bytes:
            try:
                letter["value"] = value.decode()
            except UnicodeDecodeError:
                letter["value_base64"] = base64.b64encode(value).decode()
        else:
            letter["value_truncated"] = True
        key = request_id.encode() if request_id else r.key
        return self.producer.send(self.s.dlq_topic, key=key, value=orjson.dumps(letter))


# -- process --------------------------------------------------------------------------------------


def _http_server(settings: ScoringSettings, worker: ScoringWorker) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            if self.path == "/metrics":
                body, ctype, status = generate_latest(), CONTENT_TYPE_LATEST, 200
            elif self.path == "/healthz":
                body, ctype, status = b'{"status":"alive"}', "application/json", 200
            elif self.path == "/readyz":
                ready = worker.ready
                body = orjson.dumps({"status": "ready" if ready else "not ready", "model_name": worker.name,
                                     "model_version": worker.model.version, "partitions": worker.assigned})
                ctype, status = "application/json", 200 if ready else 503
            else:
                body, ctype, status = b'{"error":"not found"}', "application/json", 404
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer((settings.host, settings.port), Handler)
    threading.Thread(target=server.serve_forever, name="http", daemon=True).start()
    return server


def main() -> None:
    settings = ScoringSettings()
    configure_logging("scoring", settings.log_level)
    logging.getLogger("kafka").setLevel(max(logging.WARNING, logging.getLevelName(settings.log_level.upper())))
    path = version_dir(settings.model_repository, settings.model_name, settings.model_version)
    model = OnnxModel.from_dir(path, RuntimeOptions(settings.intra_op_threads, settings.inter_op_threads))
    model.load_sync()
    worker = ScoringWorker(settings, model)
    server = _http_server(settings, worker)

    def on_signal(signum: int, _frame: Any) -> None:
        log.info("stopping", extra={"signal": signum})
        worker.stopping.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    log.info("scoring worker starting", extra={"model_name": model.name, "model_version": model.version,
                                               "requests_topic": settings.requests_topic, "group_id": settings.group_id,
                                               "port": settings.port})
    try:
        worker.run()
    finally:
        server.shutdown()
    log.info("scoring worker stopped")


if __name__ == "__main__":
    main()
