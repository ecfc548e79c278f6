"""The model-as-data backend: model versions arrive over Kafka and are hot-swapped in.

    backend = HotSwapBackend(subscribe=..., key=signing_key, model_name="breast-cancer", ...)

A `ModelSubscriber` (services/kafka/subscriber.py) follows the compacted `models` topic on a
background thread and hands this backend every record keyed by the app's model name. For each
one, on that thread, so the event loop keeps serving:

1. **verify** (services/kafka/messages.py): framing, HMAC signature, sha256 of the ONNX bytes
   against the header and the card, names against the record key;
2. **contract**: the new card must be `compatible_with` the contract the app was built for
   (`reference_card`: input name, dtype, feature names and order, classes) and with the card
   served now, so the requests the app sends keep meaning the same thing;
3. **load** a new `OnnxModel` (ONNX Runtime session; its graph checked against the card) and
   warm it up with one prediction on the training means, checking the output shape;
4. **swap**, in MLServer's registry order: the new version is loaded and marked ready, the
   served reference is replaced, the old version is unloaded. The swap itself runs on the
   event loop (`call_soon_threadsafe`), so no request ever sees a half-swapped state or an
   unloaded model: a request picks the model once and predicts without yielding in between.

Any refusal (reasons: malformed, signature, checksum, name, contract, load) leaves the served
version untouched and is reported three ways: `kafka_model_rejections_total{reason}`, a JSON
log line at warning level, and a `rejected` record on `model-events`.

At start-up the subscriber reads the topic to its end offsets first; `recover()` then tries the
newest record for this model, falling back to older ones until one is accepted. `ready` turns
true only after that, so /readyz answers 200 with the latest accepted version, never with a
version about to be replaced. With no acceptable model on the topic the app stays unready and
waits for one.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
from typing import Any

import numpy as np

from services.apps.backend import Backend, BackendResult
from services.core.card import ModelCard
from services.core.errors import ArtifactError, Unavailable
from services.core.runtime import OnnxModel, RuntimeOptions
from services.kafka import messages, metrics
from services.kafka.events import ModelEvents
from services.kafka.messages import Rejection

log = logging.getLogger(__name__)


def _source(record: Any) -> dict[str, Any]:
    return {"topic": record.topic, "partition": record.partition, "offset": record.offset}


class HotSwapBackend(Backend):
    def __init__(
        self,
        *,
        model_name: str,
        key: bytes,
        events: ModelEvents,
        subscriber_factory,
        reference_card: ModelCard | None = None,
        options: RuntimeOptions | None = None,
    ) -> None:
        """`subscriber_factory(handler)` returns a started-on-demand object with start()/stop()
        and a `recovered` event (a `ModelSubscriber` in the app; tests may pass their own)."""
        self.model_name = model_name
        self._key = key
        self.events = events
        self.reference_card = reference_card
        self.options = options or RuntimeOptions()
        self._model: OnnxModel | None = None
        self._recovered = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._swap_lock = threading.Lock()
        self._tasks: set[asyncio.Task] = set()
        self.subscriber = subscriber_factory(self)
        metrics.MODEL_SERVED_VERSION.labels(model_name).set(0)

    # -- Backend ------------------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        return self._recovered and self._model is not None

    @property
    def card(self) -> ModelCard:
        model = self._model
        if model is None:
            raise Unavailable("no model version has been accepted yet")
        return model.card

    @property
    def model(self) -> OnnxModel | None:
        return self._model

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.subscriber.start()

    async def stop(self) -> None:
        await asyncio.to_thread(self.subscriber.stop)
        model, self._model = self._model, None
        if model is not None:
            await model.unload()
        if self.events.emitter is not None:
            await asyncio.to_thread(self.events.emitter.close)

    async def predict(self, x: np.ndarray) -> BackendResult:
        # One read of the reference, then no await until the answer: the version that computed
        # the rows is the version the response names.
        model = self._model
        if model is None:
            raise Unavailable("no model version has been accepted yet")
        p = model.predict_sync(x)
        return BackendResult(p.labels, p.probabilities, model.name, model.version)

    # -- ModelHandler (called on the subscriber's thread) -------------------------------------------

    def recover(self, records: list[Any]) -> None:
        for record in reversed(records):
            if self._consider(record, live=False):
                break
        else:
            log.warning(
                "no acceptable model on the topic yet; waiting for one (not ready)",
                extra={"model_name": self.model_name, "candidates": len(records)},
            )
        self._recovered = True
        if self._model is not None:
            log.info("recovered the latest accepted model; ready",
                     extra={"model_name": self.model_name, "model_version": self._model.version})

    def handle(self, record: Any) -> None:
        self._consider(record, live=True)

    # -- one record ----------------------------------------------------------------------------------

    def _consider(self, record: Any, *, live: bool) -> bool:
        """Verify, load and swap in one record; True when its version serves afterwards."""
        started = time.perf_counter()
        version: int | None = None
        sha: str | None = None
        try:
            if not record.value:
                log.warning("tombstone on the models topic ignored; the served version stays",
                            extra={"model_name": self.model_name, **_source(record)})
                return False
            try:
                header = messages.read_header(record.value)
                version = header.get("model_version") if isinstance(header.get("model_version"), int) else None
            except Rejection:
                pass
            msg = messages.decode(record.value, self._key, record_key=self.model_name)
            version, sha = msg.model_version, msg.sha256
            current = self._model
            if current is not None and current.version == version and current.card.sha256 == sha:
                metrics.MODEL_MESSAGES.labels(self.model_name, str(version), "unchanged").inc()
                self.events.emit("unchanged", self.model_name, version, sha256=sha, source=_source(record))
                log.info("model message carries the version already served",
                         extra={"model_name": self.model_name, "model_version": version, **_source(record)})
                return True
            self._check_contract(msg.card, current)
            model = self._load(msg, record)
        except Rejection as exc:
            self._reject(record, version, sha, exc)
            return False
        except Exception as exc:  # a bug must not kill the subscriber; report it as a refusal
            log.exception("unexpected error while considering a model message")
            self._reject(record, version, sha, Rejection("load", f"unexpected error: {exc!r}"))
            return False

        load_s = time.perf_counter() - started
        metrics.MODEL_LOAD_SECONDS.labels(self.model_name, str(version)).observe(load_s)
        self.events.emit("loaded", self.model_name, version, sha256=sha, seconds=round(load_s, 6),
                         source=_source(record))
        old = self._swap(model)
        old_version = old.version if old is not None else None
        publish_to_swap = max(0.0, time.time() - record.timestamp / 1000) if live and record.timestamp > 0 else None
        if publish_to_swap is not None:
            metrics.MODEL_PUBLISH_TO_SWAP_SECONDS.labels(self.model_name, str(version)).observe(publish_to_swap)
        metrics.MODEL_SWAPS.labels(self.model_name, str(version)).inc()
        metrics.MODEL_MESSAGES.labels(self.model_name, str(version), "swapped").inc()
        if old_version is not None and old_version != version:
            metrics.MODEL_SERVED.labels(self.model_name, str(old_version)).set(0)
        metrics.MODEL_SERVED.labels(self.model_name, str(version)).set(1)
        metrics.MODEL_SERVED_VERSION.labels(self.model_name).set(version)
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

    def _check_contract(self, card: ModelCard, current: OnnxModel | None) -> None:
        references = [("the app's contract", self.reference_card)]
        if current is not None:
            references.append((f"the served v{current.version}", current.card))
        for what, ref in references:
            if ref is None:
                continue
            why = card.compatible_with(ref)
            if why is not None:
                raise Rejection("contract", f"{card.name} v{card.version} cannot replace {what}: {why}")

    def _load(self, msg: messages.ModelMessage, record: Any) -> OnnxModel:
        source = f"{record.topic}[{record.partition}]@{record.offset}"
        model = OnnxModel(msg.card, msg.onnx_bytes, self.options, source=source)
        try:
            model.load_sync()
            warm = np.array([[f.mean for f in msg.card.features]], dtype=np.float32)
            if warm.shape[1] != msg.card.n_features:
                raise ArtifactError(f"{source}: the card lists {warm.shape[1]} feature stats for "
                                    f"{msg.card.n_features} features")
            p = model.predict_sync(warm)
            if p.probabilities.shape != (1, len(msg.card.classes)) or p.labels.shape != (1,):
                raise ArtifactError(
                    f"{source}: warm-up prediction has shapes labels {list(p.labels.shape)}, probabilities "
                    f"{list(p.probabilities.shape)}; the card promises {len(msg.card.classes)} classes"
                )
        except ArtifactError as exc:
            raise Rejection("load", exc.message) from exc
        except Exception as exc:  # ONNX Runtime's own errors on a graph that loads but cannot run
            raise Rejection("load", f"{source}: warm-up prediction failed: {exc}") from exc
        return model

    def _swap(self, new: OnnxModel) -> OnnxModel | None:
        """Make `new` the served model on the event loop; unload the old one there too."""
        with self._swap_lock:
            holder: dict[str, OnnxModel | None] = {}

            loop = self._loop
            on_loop = loop is not None and not loop.is_closed() and loop.is_running()

            def swap() -> None:
                holder["old"], self._model = self._model, new
                old = holder["old"]
                if old is not None and old is not new and on_loop:
                    # Unload on the loop too: a request reads the reference and predicts without
                    # an await in between, so none can still hold the old model here.
                    task = loop.create_task(old.unload())
                    self._tasks.add(task)
                    task.add_done_callback(self._tasks.discard)

            if not on_loop:
                swap()  # no loop (yet): the old model is freed once unreferenced
            else:
                done: concurrent.futures.Future = concurrent.futures.Future()

                def run() -> None:
                    try:
                        swap()
                        done.set_result(None)
                    except BaseException as exc:  # pragma: no cover - swap() cannot fail
                        done.set_exception(exc)

                loop.call_soon_threadsafe(run)
                done.result(timeout=30)
            return holder.get("old")

    def _reject(self, record: Any, version: int | None, sha: str | None, exc: Rejection) -> None:
        label = "unknown" if version is None else str(version)
        metrics.MODEL_REJECTIONS.labels(self.model_name, label, exc.reason).inc()
        metrics.MODEL_MESSAGES.labels(self.model_name, label, "rejected").inc()
        served = self._model.version if self._model is not None else None
        self.events.emit("rejected", self.model_name, version, sha256=sha, reason=exc.reason, detail=exc.message,
                         source=_source(record))
        log.warning(
            "model message rejected; the served version stays",
            extra={"model_name": self.model_name, "model_version": version, "reason": exc.reason,
                   "detail": exc.message, "served_version": served, **_source(record)},
        )
