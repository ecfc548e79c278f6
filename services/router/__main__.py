"""Run the router.

    python -m services.router          (settings from ROUTER_* environment variables)

ROUTER_ROUTING_CONFIG names the routing config (YAML); see services/router/README.md.
REST runs under uvicorn (uvloop + httptools) and gRPC under grpc.aio, both through services.core.http.serve.
"""

from __future__ import annotations

import sys

from pydantic import ValidationError

from services.core.http import serve
from services.core.logging import configure_logging
from services.router.grpc_front import GrpcFront
from services.router.rest import build_app
from services.router.service import Router
from services.router.settings import RouterSettings


def main() -> None:
    try:
        settings = RouterSettings()  # type: ignore[call-arg]
    except ValidationError as exc:
        problems = "; ".join(
            f"ROUTER_{'_'.join(str(p) for p in e['loc']).upper()}: {e['msg']}" for e in exc.errors()
        )
        print(f"router: bad settings: {problems}", file=sys.stderr)
        sys.exit(2)
    configure_logging("router", settings.log_level)
    router = Router(settings)
    try:
        router.load()  # fail fast, before binding the port, on a config that cannot serve
    except SystemExit as exc:
        print(str(exc), file=sys.stderr)
        sys.exit(2)
    fronts = ([GrpcFront(router.dispatcher, settings.host, settings.grpc_port, settings.grpc_max_message_bytes,
                         settings.grpc_connection_options())]
              if settings.grpc_port else [])
    # The router starts before either front accepts a call and stops after both drained.
    serve(build_app(router), settings, servers=fronts, on_start=[router.start], on_stop=[router.stop])


if __name__ == "__main__":
    main()
