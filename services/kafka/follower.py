"""Serve whatever version of one model was published last on the `models` topic, and accepted.

    follower = ModelFollower(model_name="breast-cancer", key=key, events=events, lifecycle=lifecycle,
                             build=build, reference_card=card, subscriber_factory=factory)
    await follower.start()                    # the subscriber thread starts reading the topic
    with follower.slot.lease() as version:    # any thread: the version serving now
        version.model.predict_sync(x)
    await follower.stop()

Used by the streaming app (services/apps/hotswap.py) and the scoring worker
(services/kafka/scoring, `SCORING_FOLLOW_MODELS=true`). A `ModelSubscriber` reads the topic on
its thread and hands every record keyed by the model's name to this follower on the event loop.
For each record:

1. **verify the message** (services/kafka/messages.py, off the loop): framing, HMAC signature,
   sha256 of the ONNX bytes and of the holdout set, names against the record key;
2. **the lifecycle** (services/core/lifecycle.py): contract against `reference_card` (the
   inputs this service's clients send) and against the version serving now, load, integration
   check of the holdout set through the service's own input path (`build` makes the service's
   `Version`), warm up, ready;
3. **swap** (`Slot.swap`): the new version serves every new request; the old one drains and is
   unloaded.

Before the lifecycle, the release rules (issue #11; messages.py "Releases and rollbacks"): a
version whose card says it failed its quality gate is refused (`gate`) unless the service takes
demo material (`accept_demo_material`); a release not newer than the one serving is refused
(`replay`: an old record sent again cannot roll the service back); a newer release naming an
older version must say it is a rollback (`downgrade` otherwise).

A refusal at any step leaves the served version untouched and is recorded three ways:
`model_rejections_total{reason}`, one JSON log line (services.core.lifecycle.log_refusal) and a
`rejected` record on `model-events` (reason = the error's `code`). A message carrying the version
already served (same sha256) is `unchanged`; a tombstone is logged and skipped.

At start-up the subscriber reads the topic to its end offsets first; `recover()` then tries the
record with the newest release for this model (not the last offset: a replayed old record may sit
at the end), falling back to older ones until one is accepted. `ready` turns
true only after that, so a replica never takes traffic with a version about to be replaced.
With no acceptable model on the topic the service stays unready and waits for one.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Generic, Protocol

from services.core.card import ModelCard
from services.core.errors import ArtifactError, ServingError
from services.core.lifecycle import Lifecycle, LoadFailed, Slot, V, log_refusal
from services.core.repository import version_dir
from services.core.runtime import CARD_FILE, OnnxModel
from services.kafka import messages, metrics
from services.kafka.emitter import BackgroundEmitter
from services.kafka.events import ModelEvents
from services.kafka.subscriber import ModelHandler, ModelSubscriber
from services.kafka.topics import plain_topic

log = logging.getLogger(__name__)


class Subscriber(Protocol):
    def start(self, loop: asyncio.AbstractEventLoop) -> None: ...

    def stop(self) -> None: ...


def reference_card(model_repository: Path, model_name: str, contract_card: Path | None = None) -> ModelCard | None:
    """The contract this service's clients send: `contract_card` if given, else the newest
    gate-passing card of the model in the repository; None when there is none (then only
    compatibility with the version being served is checked)."""
    if contract_card is not None:
        return ModelCard.from_file(contract_card)
    try:
        return ModelCard.from_file(version_dir(model_repository, model_name) / CARD_FILE)
    except ServingError:
        log.warning(
            "no contract card in the model repository; checking new versions against the served one only",
            extra={"model_name": model_name, "model_repository": str(model_repository)},
        )
        return None


def _source(record: Any) -> dict[str, Any]:
    return {"topic": record.topic, "partition": record.partition, "offset": record.offset}


class ModelFollower(Generic[V]):
    def __init__(
        self,
        *,
        model_name: str,
        key: bytes,
        events: ModelEvents,
        lifecycle: Lifecycle,
        build: Callable[[OnnxModel], V],
        subscriber_factory: Callable[[ModelHandler], Subscriber],
        reference_card: ModelCard | None = None,
        accept_demo_material: bool = False,
    ) -> None:
        """`subscriber_factory(handler)` returns the object that feeds `recover`/`handle`
        (a `ModelSubscriber`; tests may pass their own). `accept_demo_material`: take versions whose
        card says they failed the gate as exempt demo material (rollback demos); never other failures."""
        self.model_name = model_name
        self._key = key
        self.events = events
        self.lifecycle = lifecycle
        self.build = build
        self.reference_card = reference_card
        self.slot: Slot[V] = Slot()
        self.accept_demo_material = accept_demo_material
        self.release: int | None = None
        """The release sequence of the version serving now (None before the first)."""
        self.recovered = False
        self.subscriber = subscriber_factory(self)
        metrics.MODEL_SERVED_VERSION.labels(model_name).set(0)

    @property
    def ready(self) -> bool:
        return self.recovered and self.slot.current is not None

    async def start(self) -> None:
        self.subscriber.start(asyncio.get_running_loop())

    async def stop(self) -> None:
        await asyncio.to_thread(self.subscriber.stop)
        await self.slot.close()
        if self.events.emitter is not None:
            await asyncio.to_thread(self.events.emitter.close)

    # -- ModelHandler (on the event loop; the subscriber hands the records over) ---------------------

    async def recover(self, records: list[Any]) -> None:
        for record in sorted(records, key=_claimed_release, reverse=True):
            if await self._consider(record, live=False):
                break
        else:
            log.warning(
                "no acceptable model on the topic yet; waiting for one (not ready)",
                extra={"model_name": self.model_name, "candidates": len(records)},
            )
        self.recovered = True
        if self.slot.current is not None:
            log.info("recovered the latest accepted model; ready",
                     extra={"model_name": self.model_name, "model_version": self.slot.current.version})

    async def handle(self, record: Any) -> None:
        await self._consider(record, live=True)

    # -- one record ----------------------------------------------------------------------------------

    async def _consider(self, record: Any, *, live: bool) -> bool:
        """Verify, prepare and swap in one record; True when its version serves afterwards."""
        started = time.perf_counter()
        source = f"{record.topic}[{record.partition}]@{record.offset}"
        if not record.value:
            log.warning("tombstone on the models topic ignored; the served version stays",
                        extra={"model_name": self.model_name, **_source(record)})
            return False
        version: int | None = None
        sha: str | None = None
        current = self.slot.current
        try:
            try:  # unverified, only to label a refusal with the version it claims
                claimed = messages.read_header(record.value).get("model_version")
                version = claimed if isinstance(claimed, int) else None
            except ArtifactError:
                pass
            # HMAC and sha256 over the whole model: off the loop.
            msg = await asyncio.to_thread(messages.decode, record.value, self._key, record_key=self.model_name)
            version, sha = msg.model_version, msg.sha256
            current = self.slot.current  # handlers run one at a time, but the decode yielded the loop
            if current is not None and current.version == version and current.card.sha256 == sha:
                self.release = max(self.release or 0, msg.release)
                metrics.MODEL_MESSAGES.labels(self.model_name, str(version), "unchanged").inc()
                self.events.emit("unchanged", self.model_name, version, sha256=sha, source=_source(record))
                log.info("model message carries the version already served",
                         extra={"model_name": self.model_name, "model_version": version, **_source(record)})
                return True
            self._release_rules(msg, current)
        except ArtifactError as exc:
            log_refusal(self.model_name, version, exc, source)
            self._reject(record, version, sha, exc)
            return False
        references = [("the contract this service's clients send", self.reference_card)]
        if current is not None:
            references.append((f"the served v{current.version}", current.card))
        try:
            new = await self.lifecycle.prepare(msg.artifact(source), self.build, references=references)
        except ArtifactError as exc:  # already logged by the lifecycle
            self._reject(record, version, sha, exc)
            return False
        except Exception as exc:  # the lifecycle turns every failure into a refusal; this is a bug
            log.exception("unexpected error while preparing a model message")
            self._reject(record, version, sha, LoadFailed(f"unexpected error: {exc!r}"))
            return False

        load_s = time.perf_counter() - started
        label = str(version)
        metrics.MODEL_LOAD_SECONDS.labels(self.model_name, label).observe(load_s)
        self.events.emit("loaded", self.model_name, version, sha256=sha, seconds=round(load_s, 6),
                         source=_source(record))
        publish_to_swap = max(0.0, time.time() - record.timestamp / 1000) if live and record.timestamp > 0 else None
        old = await self.slot.swap(new)  # serving from its first line; the rest is the old one's drain
        self.release = msg.release
        old_version = old.version if old is not None else None
        if publish_to_swap is not None:
            metrics.MODEL_PUBLISH_TO_SWAP_SECONDS.labels(self.model_name, label).observe(publish_to_swap)
        metrics.MODEL_SWAPS.labels(self.model_name, label).inc()
        metrics.MODEL_MESSAGES.labels(self.model_name, label, "swapped").inc()
        if old_version is not None and old_version != version:
            metrics.MODEL_SERVED.labels(self.model_name, str(old_version)).set(0)
        metrics.MODEL_SERVED.labels(self.model_name, label).set(1)
        metrics.MODEL_SERVED_VERSION.labels(self.model_name).set(new.version)
        self.events.emit("swapped", self.model_name, version, sha256=sha, from_version=old_version,
                         seconds=None if publish_to_swap is None else round(publish_to_swap, 6),
                         source=_source(record))
        log.info(
            "model swapped",
            extra={"model_name": self.model_name, "old_version": old_version, "new_version": version,
                   "load_s": round(load_s, 4), "publish_to_swap_s": publish_to_swap, "live": live,
                   **_source(record)},
        )
        return True

    def _release_rules(self, msg: messages.ModelMessage, current: V | None) -> None:
        gate = msg.gate
        if gate and not gate.get("passed", True) and not (self.accept_demo_material and gate.get("demo_material")):
            why = gate.get("reason") or f"{gate.get('metric')} below the floor {gate.get('floor')}"
            raise messages.GateFailed(f"v{msg.model_version}'s card says it failed its quality gate ({why}); "
                                      + ("demo material is not taken here (setting accept_demo_material)"
                                         if gate.get("demo_material") else "never served"))
        if self.release is not None and msg.release <= self.release:
            raise messages.Replay(f"release {msg.release} of v{msg.model_version} is not newer than release "
                                  f"{self.release} serving now: an old record sent again; publish a rollback instead")
        if current is not None and msg.model_version < current.version and not msg.rollback:
            raise messages.Downgrade(f"v{msg.model_version} is older than the served v{current.version} and the "
                                     "message is not marked as a rollback (publisher --rollback)")

    def _reject(self, record: Any, version: int | None, sha: str | None, exc: ServingError) -> None:
        label = "unknown" if version is None else str(version)
        metrics.MODEL_REJECTIONS.labels(self.model_name, label, exc.code).inc()
        metrics.MODEL_MESSAGES.labels(self.model_name, label, "rejected").inc()
        self.events.emit("rejected", self.model_name, version, sha256=sha, reason=exc.code, detail=exc.message,
                         source=_source(record))


def _claimed_release(record: Any) -> tuple[int, int]:
    """(release the header claims, offset), unverified: only the order recovery tries records in."""
    try:
        release = messages.read_header(record.value).get("release")
    except ArtifactError:
        release = None
    return (release if isinstance(release, int) else -1, record.offset)


def follow_models_topic(*, app: str, bootstrap_servers: str, models_topic: str, model_events_topic: str,
                        model_name: str, signing_key_file: Path | None, backoff_max_s: float, lifecycle: Lifecycle,
                        build: Callable[[OnnxModel], V], reference: ModelCard | None,
                        events_buffer: int = 1_000, accept_demo_material: bool = False) -> ModelFollower[V]:
    """A follower of `model_name` on the models topic, recording its decisions on `model_events_topic`:
    the wiring the streaming app and the scoring worker share."""
    key = messages.load_signing_key(signing_key_file)
    emitter = BackgroundEmitter(bootstrap_servers, name="model-events", buffer_size=events_buffer,
                                backoff_max_s=backoff_max_s, topics=[plain_topic(model_events_topic)])
    emitter.start()
    events = ModelEvents(emitter, model_events_topic, app=app)

    def subscriber(handler: ModelHandler) -> ModelSubscriber:
        return ModelSubscriber(bootstrap_servers, models_topic, model_name, handler,
                               backoff_max_s=backoff_max_s, client_id=f"{app}-{events.instance}")

    return ModelFollower(model_name=model_name, key=key, events=events, lifecycle=lifecycle, build=build,
                         subscriber_factory=subscriber, reference_card=reference,
                         accept_demo_material=accept_demo_material)
