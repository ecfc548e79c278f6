"""Locust: stream scoring over Kafka (`scoring-requests` -> scoring workers -> `scoring-results`).

    .venv/bin/python -m locust -f loadtests/locust_kafka.py --headless --host 127.0.0.1:9092 \
        --model breast-cancer --model-version 1 -u 16 -r 16 -t 30s KafkaOneRow

`--host` is the bootstrap servers (a `kafka://` prefix is accepted). A user produces a request
record (key and `request_id`: a request id unique to this process) to `--requests-topic`, and
reports to Locust's `request` event when the result with that id arrives on `--results-topic`:
response time = produce call to result received, failure = a dead letter never answered within
`--result-timeout-s`, or a result without the right labels. Results are read by ONE consumer per
process (`ResultListener`: every partition, from the end, no consumer group), shared by all the
users of the process; it hands each result to the user waiting for its id. Producer and listener
are created on the first user's start, after `--processes` forked.

`KafkaOneRow` sends one row per record, `KafkaBatch` `--batch-rows` rows per record (multi-row
records: what stream scoring is for). `--kafka-window N` keeps N records in flight per user (sent
together, then awaited), so a few users can fill the pipeline the way a real producer does; each
record is still its own Locust request. Accuracy is counted from the results' labels. With
`--ceiling` the topics are served by `loadtests/ceiling.py kafka` (an echo without a model), which
gives the Kafka client's own ceiling.
"""

from __future__ import annotations

import itertools
import sys
import time
import uuid
from pathlib import Path

# Locust imports a locustfile by path: make `loadtests` and `services` importable from the repo root.
if str(Path(__file__).resolve().parents[1]) not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import gevent  # noqa: E402
import gevent.lock  # noqa: E402
import orjson  # noqa: E402
from gevent.event import AsyncResult  # noqa: E402
from kafka import KafkaConsumer, KafkaProducer, TopicPartition  # noqa: E402
from locust import User, constant, events, task  # noqa: E402
from locust.exception import LocustError  # noqa: E402

from loadtests.locust_support import QUALITY, Samples, model_from, option, profile_shape, rows_of  # noqa: E402
from loadtests.payloads import instances_json  # noqa: E402


@events.init_command_line_parser.add_listener
def _kafka_options(parser) -> None:
    group = parser.add_argument_group("stream scoring")
    group.add_argument("--requests-topic", default="scoring-requests", help="topic of request records")
    group.add_argument("--results-topic", default="scoring-results", help="topic of result records")
    group.add_argument("--kafka-window", type=int, default=1, help="records in flight per user (default 1)")
    group.add_argument("--result-timeout-s", type=float, default=30.0, help="a result later than this fails")


class ResultListener:
    """One consumer of the results topic for the whole process; results go to whoever waits for their id."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                                      fetch_max_wait_ms=10, max_poll_records=10_000, client_id="locust-results")
        partitions = None
        for _ in range(120):
            partitions = self.consumer.partitions_for_topic(topic)
            if partitions:
                break
            gevent.sleep(0.5)
        if not partitions:
            raise LocustError(f"topic {topic} does not exist: is a scoring worker running?")
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        self.consumer.assign(tps)
        self.consumer.seek_to_end(*tps)
        for tp in tps:  # resolve the end offsets now: results of requests sent from here on are all seen
            self.consumer.position(tp)
        self.waiting: dict[bytes, AsyncResult] = {}
        self.running = True
        self.greenlet = gevent.spawn(self._run)

    def expect(self, key: bytes) -> AsyncResult:
        waiter = AsyncResult()
        self.waiting[key] = waiter
        return waiter

    def forget(self, key: bytes) -> None:
        self.waiting.pop(key, None)

    def _run(self) -> None:
        while self.running:
            for batch in self.consumer.poll(timeout_ms=50).values():
                now = time.perf_counter()
                for record in batch:
                    waiter = self.waiting.pop(record.key, None)
                    if waiter is not None:  # a duplicate (at-least-once) finds no waiter: ignored
                        waiter.set((now, record.value))
            gevent.sleep(0)

    def close(self) -> None:
        self.running = False
        self.greenlet.join(timeout=2)
        self.consumer.close(autocommit=False)


class _Shared:
    """The process's producer and result listener, created once (after a --processes fork)."""

    producer: KafkaProducer | None = None
    listener: ResultListener | None = None
    prefix = ""
    ids = itertools.count()
    lock = gevent.lock.Semaphore()

    @classmethod
    def get(cls, environment, bootstrap: str) -> type[_Shared]:
        with cls.lock:  # users start concurrently; the first one creates, the others wait for it
            if cls.producer is None:
                cls.prefix = uuid.uuid4().hex[:10]
                cls.listener = ResultListener(bootstrap, option(environment, "results_topic", "scoring-results"))
                cls.producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=1,
                                             batch_size=1024 * 1024, client_id="locust-requests")
        return cls

    @classmethod
    def next_id(cls) -> str:
        return f"{cls.prefix}-{next(cls.ids)}"


@events.quitting.add_listener
def _close(environment, **_kwargs) -> None:
    if _Shared.listener is not None:
        _Shared.listener.close()
    if _Shared.producer is not None:
        _Shared.producer.close(timeout=5)


class KafkaScoringUser(User):
    """Abstract: produce scoring requests, report each when its result arrives (closed loop per window)."""

    abstract = True
    batch = False
    wait_time = constant(0)

    def on_start(self) -> None:
        env = self.environment
        if not self.host:
            raise LocustError("give the Kafka bootstrap servers with --host host:port")
        bootstrap = self.host.removeprefix("kafka://").rstrip("/")
        self.shared = _Shared.get(env, bootstrap)
        model = model_from(env)
        self.rows = rows_of(env, self.batch)
        self.topic = option(env, "requests_topic", "scoring-requests")
        self.window = max(1, int(option(env, "kafka_window", 1)))
        self.timeout_s = float(option(env, "result_timeout_s", 30.0))
        self.ceiling = option(env, "ceiling", False)
        self.samples = Samples(model, self.rows, instances_json, start=id(self))
        self.label = f"score {model.name}:{model.version} x{self.rows}"

    @task
    def score(self) -> None:
        shared, sent = self.shared, []
        for _ in range(self.window):
            instances, truth = self.samples.next()
            rid = shared.next_id()
            key = rid.encode()
            waiter = shared.listener.expect(key)
            value = b'{"request_id":"' + key + b'","instances":' + instances + b"}"
            started = time.perf_counter()
            shared.producer.send(self.topic, key=key, value=value)
            sent.append((key, waiter, started, truth, len(value)))
        for key, waiter, started, truth, length in sent:
            self._await(key, waiter, started, truth, length)

    def _await(self, key: bytes, waiter: AsyncResult, started: float, truth: list[int], length: int) -> None:
        exception, received = None, None
        try:
            received, value = waiter.get(timeout=max(0.0, started + self.timeout_s - time.perf_counter()))
            if not self.ceiling:
                labels = orjson.loads(value).get("labels")
                if not isinstance(labels, list) or len(labels) != len(truth):
                    raise ValueError(f"result {key.decode()} without {len(truth)} labels: {value[:200]!r}")
                QUALITY.add([int(v) for v in labels], truth)
        except gevent.Timeout:
            self.shared.listener.forget(key)
            exception = TimeoutError(f"no result for {key.decode()} within {self.timeout_s:g} s")
        except ValueError as exc:
            exception = exc
        self.environment.events.request.fire(
            request_type="kafka", name=self.label,
            response_time=((received or time.perf_counter()) - started) * 1000,
            response_length=length, response=None, context=None, exception=exception,
        )


class KafkaOneRow(KafkaScoringUser):
    batch = False


class KafkaBatch(KafkaScoringUser):
    """Multi-row records: --batch-rows rows per request record (default 64)."""

    batch = True


Profile = profile_shape(one_row=KafkaOneRow, batch=KafkaBatch)
