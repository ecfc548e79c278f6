"""Run the model server: REST (uvicorn) and gRPC (grpc.aio) in one process, on one uvloop event loop.

    python -m services.model_server            (settings from MODEL_SERVER_* environment variables)

Start-up: load every model version the policies want, then open both ports; readiness
(`/v2/health/ready`, grpc.health.v1) turns SERVING once a version serves.

SIGTERM or SIGINT: readiness turns 503 / NOT_SERVING, both servers stop accepting, in-flight
requests (including those waiting in a batching queue) finish within `shutdown_grace_s`, every
model is unloaded, and the process exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import uvicorn
import uvloop

from services.core.logging import configure_logging
from services.model_server.grpc_server import GrpcFrontend
from services.model_server.repository import Registry
from services.model_server.rest import build_rest_app
from services.model_server.settings import ModelServerSettings

log = logging.getLogger("services.model_server")


class _RestServer(uvicorn.Server):
    """uvicorn without its own signal handling: this process handles SIGTERM/SIGINT once, on the loop,
    for both servers (uvicorn's handler would race ours and re-raise the signal after draining)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


async def serve(settings: ModelServerSettings) -> int:
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)

    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="batch")
    registry = Registry(settings, executor)
    await registry.start()
    loaded = {name: sorted(entry.versions) for name, entry in registry.models.items()}
    log.info("models loaded", extra={"models": loaded, "repository": str(settings.model_repository)})

    grpc_frontend = GrpcFrontend(registry, host=settings.host, port=settings.grpc_port,
                                 max_message_bytes=settings.grpc_max_message_bytes)
    await grpc_frontend.start()
    app = build_rest_app(registry, max_body_bytes=settings.max_body_bytes, is_shutting_down=stopping.is_set)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        http="httptools",
        lifespan="off",
        access_log=False,
        log_config=None,
        server_header=False,
        timeout_graceful_shutdown=int(settings.shutdown_grace_s),
    )
    rest = _RestServer(config)
    rest_task = asyncio.create_task(rest.serve(), name="rest")
    stop_task = asyncio.create_task(stopping.wait(), name="signal")
    log.info("model server listening", extra={"rest": f"http://{settings.host}:{settings.port}",
                                               "grpc": grpc_frontend.address})
    await asyncio.wait({rest_task, stop_task}, return_when=asyncio.FIRST_COMPLETED)
    status = 0
    if rest_task.done():  # uvicorn ended on its own: it could not bind or crashed
        log.error("REST server stopped unexpectedly; shutting down")
        status = 1
    log.info("shutting down: no new requests; finishing in-flight ones",
             extra={"grace_s": settings.shutdown_grace_s})
    rest.should_exit = True
    stop_task.cancel()
    await asyncio.gather(rest_task, grpc_frontend.stop(settings.shutdown_grace_s), return_exceptions=True)
    await registry.stop()
    executor.shutdown(wait=True)
    log.info("model server stopped", extra={"exit_status": status})
    return status


def main() -> None:
    settings = ModelServerSettings()
    configure_logging("model-server", settings.log_level)
    sys.exit(uvloop.run(serve(settings)))


if __name__ == "__main__":
    main()
