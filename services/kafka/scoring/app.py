"""The scoring worker process: its model, its scoring thread, and HTTP for probes and metrics.

    python -m services.kafka.scoring

The model comes from one of two places, both through the one lifecycle (services/core/lifecycle.py):

- `RepositoryModel` (default): `model_version` of `model_name` in `model_repository`, prepared
  once at start-up (a refused version fails the start-up);
- `ModelFollower` (`follow_models`): whatever was published last on the `models` topic and
  accepted, hot-swapped while the worker runs (services/kafka/follower.py).

The scoring thread joins the consumer group only once a version serves. `/healthz`, `/readyz`
and `/metrics` are a Starlette app under `services.core.http.serve` (uvicorn): SIGTERM stops the
HTTP side, then the lifespan's shutdown finishes and commits the micro-batch in progress.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Protocol

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from services.core.errors import ServingError
from services.core.http import EXCEPTION_HANDLERS, json_response, serve
from services.core.http import metrics as metrics_endpoint
from services.core.lifecycle import Lifecycle, Slot
from services.core.logging import configure_logging
from services.core.repository import version_dir
from services.core.runtime import RuntimeOptions
from services.kafka import messages
from services.kafka.follower import follow_models_topic, reference_card
from services.kafka.scoring.batch import ScoringVersion
from services.kafka.scoring.settings import ScoringSettings
from services.kafka.scoring.worker import ScoringWorker

log = logging.getLogger(__name__)
APP_NAME = "scoring"


class ModelSource(Protocol):
    slot: Slot[ScoringVersion]

    @property
    def ready(self) -> bool: ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


class RepositoryModel:
    """One repository version for the life of the process."""

    def __init__(self, settings: ScoringSettings, lifecycle: Lifecycle, build) -> None:
        self.settings = settings
        self.lifecycle = lifecycle
        self.build = build
        self.slot: Slot[ScoringVersion] = Slot()

    @property
    def ready(self) -> bool:
        return self.slot.current is not None

    async def start(self) -> None:
        s = self.settings
        path = version_dir(s.model_repository, s.model_name, s.model_version)
        version = await self.lifecycle.load_dir(path, self.build, identity=(s.model_name, int(path.name)))
        await self.slot.swap(version)

    async def stop(self) -> None:
        await self.slot.close()


def model_source(settings: ScoringSettings) -> ModelSource:
    lifecycle = Lifecycle(RuntimeOptions(settings.intra_op_threads, settings.inter_op_threads),
                          skew_tolerance=settings.skew_tolerance)
    build = ScoringVersion.builder(max_batch_size=settings.max_batch_size, range_policy=settings.range_policy,
                                   range_margin=settings.range_margin, max_record_bytes=settings.max_record_bytes)
    if not settings.follow_models:
        return RepositoryModel(settings, lifecycle, build)
    return follow_models_topic(
        app=APP_NAME, bootstrap_servers=settings.bootstrap_servers, models_topic=settings.models_topic,
        model_events_topic=settings.model_events_topic, model_name=settings.model_name,
        signing_key_file=settings.signing_key_file, backoff_max_s=settings.backoff_max_s, lifecycle=lifecycle,
        build=build, reference=reference_card(settings.model_repository, settings.model_name))


def create_app(settings: ScoringSettings) -> Starlette:
    source = model_source(settings)
    worker = ScoringWorker(settings, source.slot)

    async def healthz(_: Request) -> Response:
        return json_response({"status": "alive"})

    async def readyz(_: Request) -> Response:
        version = source.slot.current
        ready = source.ready and worker.ready
        return json_response({"status": "ready" if ready else "not ready", "model_name": settings.model_name,
                              "model_version": version.version if version is not None else None,
                              "partitions": worker.assigned}, 200 if ready else 503)

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        await source.start()
        worker.start()
        log.info("scoring worker started", extra={
            "model_name": settings.model_name, "follow_models": settings.follow_models,
            "requests_topic": settings.requests_topic, "group_id": settings.group_id, "port": settings.port})
        try:
            yield
        finally:
            await asyncio.to_thread(worker.stop)
            await source.stop()
            log.info("scoring worker stopped")

    app = Starlette(
        routes=[Route("/healthz", healthz), Route("/readyz", readyz), Route("/metrics", metrics_endpoint)],
        exception_handlers=EXCEPTION_HANDLERS,
        lifespan=lifespan,
    )
    app.state.worker = worker
    app.state.source = source
    return app


def main() -> None:
    settings = ScoringSettings()
    configure_logging(APP_NAME, settings.log_level)
    logging.getLogger("kafka").setLevel(max(logging.WARNING, logging.getLevelName(settings.log_level.upper())))
    try:
        app = create_app(settings)
    except (messages.SigningKeyError, ServingError) as exc:
        log.error("cannot start", extra={"error": getattr(exc, "message", str(exc))})
        raise SystemExit(2) from exc
    serve(app, settings)
