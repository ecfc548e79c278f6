"""Run the supervisor.

    python -m services.supervisor      (settings from SUPERVISOR_* environment variables)

SUPERVISOR_ROLLOUT_SPEC names the rollout spec (YAML), SUPERVISOR_ROUTER_URL the router; see
services/supervisor/README.md. The control loop runs as an on_start task of services.core.http.serve;
SIGTERM finishes the check in progress, persists the state and exits 0.
"""

from __future__ import annotations

import asyncio
import logging
import sys

from pydantic import ValidationError

from services.core.errors import InvalidInput
from services.core.http import serve
from services.core.logging import configure_logging

from .app import build_app
from .service import Supervisor, load_spec
from .settings import SupervisorSettings


def main() -> None:
    try:
        settings = SupervisorSettings()  # type: ignore[call-arg]
    except ValidationError as exc:
        problems = "; ".join(
            f"SUPERVISOR_{'_'.join(str(p) for p in e['loc']).upper()}: {e['msg']}" for e in exc.errors()
        )
        print(f"supervisor: bad settings: {problems}", file=sys.stderr)
        sys.exit(2)
    configure_logging("supervisor", settings.log_level)
    try:
        spec, skipped = load_spec(settings.rollout_spec, settings.interval_s)
    except (OSError, InvalidInput) as exc:
        print(f"supervisor: rollout spec {settings.rollout_spec}: {exc}", file=sys.stderr)
        sys.exit(2)
    emitter = None
    if settings.kafka_bootstrap_servers:
        from services.kafka.emitter import BackgroundEmitter
        from services.kafka.topics import plain_topic

        emitter = BackgroundEmitter(settings.kafka_bootstrap_servers, name="supervisor-decisions",
                                    buffer_size=1000, topics=[plain_topic(settings.decisions_topic)])
    for rule in skipped:
        logging.getLogger("services.supervisor").warning("rule left out: the service cannot feed it yet", extra=rule)
    supervisor = Supervisor(settings, spec, emitter=emitter, skipped_rules=skipped)
    stopping = asyncio.Event()
    serve(build_app(supervisor, stopping), settings, on_start=[supervisor.start], on_stop=[supervisor.stop],
          stopping=stopping)


if __name__ == "__main__":
    main()
