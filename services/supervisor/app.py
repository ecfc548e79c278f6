"""The supervisor's HTTP API (Starlette).

    GET  /status       the rollout: phase, step, weights, next check, latest per-variant figures
    GET  /decisions    the recent decision records, newest last (?limit=N: the last N)
    POST /resume       resume a paused rollout (Authorization: Bearer <the router's admin token>)
    GET  /metrics      Prometheus text format
    GET  /healthz      liveness
    GET  /readyz       200 once the loop runs, 503 while stopping
    GET  /             the dashboard page (also /dashboard); its files under /static/
    GET  /api/dashboard  everything the page shows, gathered from the supervisor and the router (dashboard.py)
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from services.core.errors import InvalidInput, Unauthorized
from services.core.http import EXCEPTION_HANDLERS, json_response, metrics

from .dashboard import Dashboard
from .service import Supervisor

STATIC_DIR = Path(__file__).parent / "static"


def build_app(supervisor: Supervisor, stopping: asyncio.Event | None = None) -> Starlette:
    async def status(_: Request) -> Response:
        return json_response(supervisor.status())

    async def decisions(request: Request) -> Response:
        items = list(supervisor.decisions)
        raw = request.query_params.get("limit")
        if raw is not None:
            if not raw.isdigit():
                raise InvalidInput(f"limit: expected a positive whole number, got {raw!r}", field="limit")
            items = items[-int(raw):] if int(raw) else []
        return json_response(items)

    async def resume(request: Request) -> Response:
        token = supervisor.settings.token()
        presented = request.headers.get("authorization", "").partition(" ")[2].strip()
        if token is None or not presented or not hmac.compare_digest(presented.encode(), token.encode()):
            raise Unauthorized("POST /resume needs 'Authorization: Bearer <the router's admin token>'",
                               field="Authorization")
        try:
            return json_response(supervisor.resume())
        except ValueError as exc:
            raise InvalidInput(str(exc), field="phase") from None

    async def healthz(_: Request) -> Response:
        return json_response({"status": "ok"})

    async def readyz(_: Request) -> Response:
        if stopping is not None and stopping.is_set():
            return json_response({"status": "stopping"}, 503)
        return json_response({"status": "ready", "phase": supervisor.status()["phase"]})

    board = Dashboard(supervisor)

    async def dashboard_page(_: Request) -> Response:
        return FileResponse(STATIC_DIR / "dashboard.html", media_type="text/html; charset=utf-8",
                            headers={"Cache-Control": "no-cache"})

    async def dashboard_redirect(_: Request) -> Response:
        return RedirectResponse("/", status_code=307)

    async def dashboard_data(_: Request) -> Response:
        return json_response(await board.document(), headers={"Cache-Control": "no-store"})

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette):
        try:
            yield
        finally:
            await board.close()

    return Starlette(
        routes=[
            Route("/", dashboard_page),
            Route("/dashboard", dashboard_redirect),
            Route("/api/dashboard", dashboard_data),
            Mount("/static", StaticFiles(directory=STATIC_DIR), name="static"),
            Route("/status", status),
            Route("/decisions", decisions),
            Route("/resume", resume, methods=["POST"]),
            Route("/metrics", metrics),
            Route("/healthz", healthz),
            Route("/readyz", readyz),
        ],
        exception_handlers=EXCEPTION_HANDLERS,  # type: ignore[arg-type]
        lifespan=lifespan,
    )
