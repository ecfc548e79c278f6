"""The router's parts wired together, started and stopped.

    router = Router(settings)
    router.load()          # config and saved state; SystemExit naming the problem (before binding a port)
    await router.start()   # shadow workers, config poller, state saver
    ...                    # requests: services.router.rest (REST), services.router.grpc_front (gRPC)
    await router.stop()    # stop tasks, save state, close connections

The process (`__main__.py`) runs both fronts through `services.core.http.serve`, which starts the
router first and stops it last, after REST and gRPC drained together.
"""

from __future__ import annotations

import asyncio

from services.router.control import Control
from services.router.dispatch import Dispatcher
from services.router.settings import RouterSettings
from services.router.upstream import Pools


class Router:
    def __init__(self, settings: RouterSettings) -> None:
        self.settings = settings
        self.pools = Pools(connect_timeout_s=settings.connect_timeout_s, max_idle=settings.upstream_max_idle,
                           idle_timeout_s=settings.upstream_idle_timeout_s)
        self.dispatcher = Dispatcher()
        self.control = Control(settings, self.dispatcher, self.pools)
        self.started = False
        self._tasks: list[asyncio.Task] = []

    def load(self) -> None:
        """Load the config and the saved state (raises SystemExit naming the problem)."""
        self.control.load()

    async def start(self) -> None:
        s = self.settings
        self.load()
        self.dispatcher.mirrors.start()
        if s.config_poll_s > 0:
            self._tasks.append(asyncio.create_task(self.control.poll_config(), name="config-poll"))
        if self.control.state_file.enabled:
            self._tasks.append(asyncio.create_task(self.control.save_periodically(), name="state-save"))
        self._tasks.append(asyncio.create_task(self._maintain(), name="maintenance"))
        self.started = True

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        await self.dispatcher.mirrors.stop()
        self.control.save_state()
        self.pools.close()
        self.started = False

    async def _maintain(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            self.dispatcher.maintain()
            self.pools.prune()
