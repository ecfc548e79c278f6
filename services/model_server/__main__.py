"""Run the model server: REST (uvicorn) and gRPC (grpc.aio) in one process, on one uvloop event loop.

    python -m services.model_server            (settings from MODEL_SERVER_* environment variables)

Start-up: load every model version the policies want, then open both ports; readiness
(`/v2/health/ready`, grpc.health.v1, the Open Inference Protocol's ServerReady) turns SERVING once
a version serves.

SIGTERM or SIGINT: readiness turns 503 / NOT_SERVING, both servers stop accepting, in-flight
requests (including those waiting in a batching queue) finish within `shutdown_grace_s`, every
model is unloaded, and the process exits 0. `services.core.http.serve` does the running and
draining, as for every service here.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor

from services.core.http import serve
from services.core.logging import configure_logging
from services.model_server.grpc_server import GrpcFrontend
from services.model_server.repository import Registry
from services.model_server.rest import build_rest_app
from services.model_server.settings import ModelServerSettings

log = logging.getLogger("services.model_server")


def main() -> None:
    settings = ModelServerSettings()
    configure_logging("model-server", settings.log_level)
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="batch")
    registry = Registry(settings, executor)
    stopping = asyncio.Event()
    grpc_frontend = GrpcFrontend(registry, host=settings.host, port=settings.grpc_port,
                                 max_message_bytes=settings.grpc_max_message_bytes,
                                 options=settings.grpc_connection_options())

    async def load() -> None:
        await registry.start()
        loaded = {name: sorted(entry.versions) for name, entry in registry.models.items()}
        log.info("models loaded", extra={"models": loaded, "repository": str(settings.model_repository)})

    async def unload() -> None:
        await registry.stop()
        executor.shutdown(wait=True)
        log.info("model server stopped")

    serve(
        build_rest_app(registry, max_body_bytes=settings.max_body_bytes, is_shutting_down=stopping.is_set),
        settings,
        servers=[grpc_frontend],
        on_start=[load],
        on_stop=[unload],
        stopping=stopping,
    )


if __name__ == "__main__":
    main()
