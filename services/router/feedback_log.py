"""The `feedback` topic: rewards and outcomes shared by every router replica, each applied once.

    log = FeedbackLog(settings, dispatcher)      # with ROUTER_KAFKA_BOOTSTRAP_SERVERS set
    log.start(loop)                              # producer + consumer thread; `caught_up` once read to the end
    status, body = await log.submit(fb, body)    # POST /feedback: produce, wait for the broker, then for the read-back
    log.stop()

Why a topic: behind one Service, feedback lands on any replica, while every replica's policy
(bandit posterior, A/B counts) must learn from all of it. So the replica that takes a feedback
call validates it (signed token or its own pending entry, reward range, TTL, already rewarded?),
produces one event keyed by the request id, and answers only after the broker acknowledged it
(acks=all): an acknowledged reward is on the topic and is never lost. It does **not** apply it
directly: every replica — the one that produced it too — applies each event when its consumer
reads it, in topic order, so all replicas apply the same events and converge on the same totals.

Each replica has its own consumer, without a consumer group (partitions are assigned, every
replica reads every partition). Exactly once per replica: an event whose request id was already
applied is skipped and counted (`router_feedback_events_total{outcome="duplicate"}`; two replicas
taking feedback for one token at the same moment both produce; the first on the topic wins on
every replica, as all read the same partition in the same order). The next offset of each
partition is kept with the pending table in the state file, written in the same snapshot as the
policy state, so a restart resumes exactly where its saved policy state stopped; without a
state file a replica reads the topic from the beginning (its retention) and rebuilds the state.
A starting replica reports ready only after it read every partition to the end offsets it found
at start (`caught_up`).

The receiving replica counts the feedback in its quality metrics (`router_feedback_*`: each
feedback once across replicas, so Prometheus sums are right) when its own consumer applied it;
after the broker's ack it waits up to `feedback_apply_wait_s` for that and answers 200 with the
outcome (409 if it turned out to be a duplicate), else 202 (acknowledged, applied shortly).

Event (JSON, schema 1): {"schema": 1, "request_id", "variant", "epoch", "field": "reward" |
"outcome" | null, "reward": float | null, "labels": bool, "replica", "ts"}.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import orjson
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from services.core.errors import ServingError, Unavailable
from services.kafka.topics import ensure_topics, plain_topic
from services.router import metrics
from services.router.dispatch import Dispatcher
from services.router.errors import Conflict
from services.router.feedback import Feedback, learn, score
from services.router.settings import RouterSettings

log = logging.getLogger("services.router")

SCHEMA = 1
_WAITERS_MAX = 100_000


class FeedbackLog:
    def __init__(self, settings: RouterSettings, dispatcher: Dispatcher) -> None:
        self.settings = settings
        self.dispatcher = dispatcher
        self.topic = settings.feedback_topic
        self.bootstrap = settings.kafka_bootstrap_servers
        self.replica = settings.replica_id or f"{socket.gethostname()}:{os.getpid()}"
        self.caught_up = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._producer: KafkaProducer | None = None
        self._producer_lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._next: dict[int, int] = {}  # consumer thread: next offset to read per partition
        # request id -> (future resolved with the apply outcome, what to do then on this replica)
        self._waiters: dict[str, tuple[asyncio.Future, Callable[[], dict[str, Any]]]] = {}
        metrics.FEEDBACK_CAUGHT_UP.set(0)

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        saved = self.dispatcher.pending.offsets
        self._next = {int(k.rpartition(":")[2]): int(v) for k, v in saved.items()
                      if k.rpartition(":")[0] == self.topic}
        self._thread = threading.Thread(target=self._run, name="feedback-consumer", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(10)
        with self._producer_lock:
            if self._producer is not None:
                try:
                    self._producer.close(timeout=5)
                except Exception:
                    pass
                self._producer = None

    # -- producing (the replica that took the feedback call) --------------------------------------

    def _get_producer(self) -> KafkaProducer:
        with self._producer_lock:
            if self._producer is None:
                s = self.settings
                self._producer = KafkaProducer(
                    bootstrap_servers=self.bootstrap, client_id=f"router-feedback-{self.replica}",
                    acks="all", enable_idempotence=True, linger_ms=2, retries=2_147_483_647,
                    max_block_ms=int(s.feedback_ack_timeout_s * 1000),
                    request_timeout_ms=int(min(s.feedback_ack_timeout_s, 30) * 1000),
                    delivery_timeout_ms=int(s.feedback_ack_timeout_s * 1000) + 1000,
                    reconnect_backoff_max_ms=int(s.kafka_backoff_max_s * 1000),
                    bootstrap_timeout_ms=int(s.feedback_ack_timeout_s * 1000),
                )
            return self._producer

    def _produce(self, key: bytes, value: bytes) -> None:
        """Send one event and wait for the broker's acknowledgement (a thread: kafka-python blocks)."""
        timeout = self.settings.feedback_ack_timeout_s
        self._get_producer().send(self.topic, key=key, value=value).get(timeout=timeout)

    async def submit(self, fb: Feedback, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """Produce a validated feedback; (status, answer) once the broker has it (and, if in time,
        this replica applied it). Unavailable (503) when the broker did not acknowledge it."""
        rid = fb.request_id
        if rid in self._waiters:
            raise Conflict(f"request_id {rid!r}: feedback for it is being applied", field="request_id")
        if len(self._waiters) >= _WAITERS_MAX:
            raise Unavailable("too many feedback events awaiting their read-back; retry shortly")
        event = {"schema": SCHEMA, "request_id": rid, "variant": fb.variant, "epoch": fb.epoch, "field": fb.field,
                 "reward": fb.reward, "labels": fb.truth is not None, "replica": self.replica, "ts": time.time()}
        loop = asyncio.get_running_loop()
        done: asyncio.Future = loop.create_future()
        self._waiters[rid] = (done, lambda: score(self.dispatcher.quality, fb, body))
        try:
            await asyncio.to_thread(self._produce, rid.encode(), orjson.dumps(event))
        except Exception as exc:
            self._waiters.pop(rid, None)
            metrics.FEEDBACK_PRODUCED.labels("failed").inc()
            log.warning("feedback event not acknowledged by the broker",
                        extra={"request_id": rid, "topic": self.topic, "error": repr(exc)})
            raise Unavailable(f"the feedback topic did not acknowledge the event ({type(exc).__name__}); "
                              "nothing is lost by resending it (duplicates are skipped)",
                              retry_after_s=1.0) from None
        metrics.FEEDBACK_PRODUCED.labels("acked").inc()
        try:
            error, result = await asyncio.wait_for(asyncio.shield(done), self.settings.feedback_apply_wait_s)
        except TimeoutError:
            return 202, {"request_id": rid, "variant": fb.variant, "applied": False, "acknowledged": True,
                         "detail": "on the feedback topic; this replica applies it when it reads it back"}
        if error is not None:
            raise error
        return 200, {**result, "applied": True, "acknowledged": True}

    def share_failure(self, token: str, variant: str, epoch: int, reward: float | None) -> None:
        """A learning policy's chosen variant failed (the fallback answered): publish it so every
        replica scores the failure reward (`Dispatcher.share_failure`). Fire and forget: nobody was
        promised anything, so a broker outage loses it (counted as failed)."""
        event = {"schema": SCHEMA, "request_id": token, "variant": variant, "epoch": epoch, "field": "failure",
                 "reward": reward, "labels": False, "replica": self.replica, "ts": time.time()}
        asyncio.get_running_loop().run_in_executor(None, self._send_quietly, token.encode(), orjson.dumps(event))

    def _send_quietly(self, key: bytes, value: bytes) -> None:
        try:
            self._produce(key, value)
            metrics.FEEDBACK_PRODUCED.labels("acked").inc()
        except Exception as exc:
            metrics.FEEDBACK_PRODUCED.labels("failed").inc()
            log.warning("failure event not acknowledged by the broker", extra={"error": repr(exc)})

    # -- applying (every replica, in topic order, on the event loop) -------------------------------

    def _apply(self, records: list[tuple[int, int, bytes | None, int]]) -> None:
        dispatcher = self.dispatcher
        table = dispatcher.table
        pending = dispatcher.pending
        for partition, offset, value, timestamp_ms in records:
            pending.offsets[f"{self.topic}:{partition}"] = offset + 1
            outcome, error = self._apply_one(value, table)
            metrics.FEEDBACK_EVENTS.labels(outcome).inc()
            if timestamp_ms > 0:
                metrics.FEEDBACK_LAG.set(max(0.0, time.time() - timestamp_ms / 1000))
            rid = self._own_rid(value)
            waiter = self._waiters.pop(rid, None) if rid is not None else None
            if waiter is not None:
                future, on_applied = waiter
                result = on_applied() if outcome == "applied" else {}
                if not future.done():
                    future.set_result((error, result))
        dispatcher.dirty = True

    def _own_rid(self, value: bytes | None) -> str | None:
        """The request id of an event this replica produced: only its own event answers its waiting
        call (another replica's event for the same id, racing it, makes this call's event the duplicate)."""
        try:
            event = orjson.loads(value or b"")
        except orjson.JSONDecodeError:
            return None
        if not isinstance(event, dict) or event.get("replica") != self.replica:
            return None
        return event.get("request_id")

    def _apply_one(self, value: bytes | None, table: Any) -> tuple[str, ServingError | None]:
        pending = self.dispatcher.pending
        try:
            event = orjson.loads(value or b"")
            rid, variant, epoch = event["request_id"], event["variant"], event["epoch"]
            reward, field = event.get("reward"), event.get("field")
            if not (isinstance(rid, str) and isinstance(variant, str) and isinstance(epoch, int)):
                raise TypeError
            if reward is not None and not isinstance(reward, (int, float)):
                raise TypeError
        except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
            log.warning("unreadable feedback event skipped", extra={"topic": self.topic})
            return "malformed", None
        if pending.is_settled(rid):
            return "duplicate", Conflict(f"request_id {rid!r} takes no more feedback: it already has its "
                                         "outcome (another call got there first)", field="request_id")
        if field == "failure":  # a failed decision: the policy's own failure scoring, on every replica
            if epoch == table.epoch:
                try:
                    table.policy.on_failure(variant, reward)
                except ValueError as exc:  # an unknown variant (config changed) or a refused reward
                    log.warning("failure event not scored", extra={"request_id": rid, "error": str(exc)})
            pending.settle(rid, f"its variant {variant!r} failed and the fallback answered")
            return "applied", None
        fb = Feedback(rid, variant, epoch, field, reward, None if reward is None else float(reward), None, None, None)
        try:
            learn(table, pending, fb)
        except ServingError as exc:
            pending.settle(rid, exc.message)
            log.warning("feedback event not applied", extra={"request_id": rid, "error": exc.message})
            return "refused", exc
        pending.close(rid)
        return "applied", None

    def _mark_caught_up(self, ends: dict[int, int]) -> None:
        self.caught_up = True
        metrics.FEEDBACK_CAUGHT_UP.set(1)
        log.info("feedback topic read to its end offsets; ready",
                 extra={"topic": self.topic, "end_offsets": {str(p): o for p, o in ends.items()}})

    # -- the consumer thread ------------------------------------------------------------------------

    def _run(self) -> None:
        delay = 0.2
        while not self._stopping.is_set():
            try:
                self._session()
                delay = 0.2
            except Exception as exc:
                metrics.FEEDBACK_CONSUMER_ERRORS.inc()
                log.warning("feedback consumer error; reconnecting",
                            extra={"topic": self.topic, "error": repr(exc), "retry_in_s": round(delay, 2)})
                self._stopping.wait(delay)
                delay = min(delay * 2, self.settings.kafka_backoff_max_s)

    def _session(self) -> None:
        s = self.settings
        ensure_topics(self.bootstrap, [plain_topic(self.topic, s.feedback_topic_partitions)], timeout_s=10)
        consumer = KafkaConsumer(
            bootstrap_servers=self.bootstrap, client_id=f"router-feedback-{self.replica}", group_id=None,
            enable_auto_commit=False, auto_offset_reset="earliest", allow_auto_create_topics=False,
            bootstrap_timeout_ms=5000, request_timeout_ms=10000, metadata_max_age_ms=30000,
            reconnect_backoff_max_ms=int(s.kafka_backoff_max_s * 1000),
        )
        try:
            partitions = consumer.partitions_for_topic(self.topic)
            if not partitions:
                raise RuntimeError(f"topic {self.topic!r} has no partitions in the broker's metadata yet")
            tps = [TopicPartition(self.topic, p) for p in sorted(partitions)]
            consumer.assign(tps)
            for tp in tps:
                if tp.partition in self._next:
                    consumer.seek(tp, self._next[tp.partition])
                else:
                    consumer.seek_to_beginning(tp)
            ends = None if self.caught_up else consumer.end_offsets(tps, timeout_ms=10000)
            loop = self._loop
            assert loop is not None
            while not self._stopping.is_set():
                polled = consumer.poll(timeout_ms=200, max_records=500)
                batch = []
                for tp, records in polled.items():
                    for r in records:
                        batch.append((tp.partition, r.offset, r.value, r.timestamp))
                        self._next[tp.partition] = r.offset + 1
                if batch:
                    loop.call_soon_threadsafe(self._apply, batch)
                elif not polled:
                    loop.call_soon_threadsafe(metrics.FEEDBACK_LAG.set, 0.0)
                if ends is not None and all(consumer.position(tp) >= ends[tp] for tp in tps):
                    loop.call_soon_threadsafe(self._mark_caught_up, {tp.partition: ends[tp] for tp in tps})
                    ends = None
        finally:
            try:
                consumer.close(autocommit=False, timeout_ms=2000)
            except Exception:
                pass
