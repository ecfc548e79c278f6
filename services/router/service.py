"""The router's parts wired together, started and stopped.

    router = Router(settings)
    router.load()          # config and saved state; SystemExit naming the problem (before binding a port)
    await router.start()   # shadow workers, config poller, state saver, Kafka feedback/labels
    ...                    # requests: services.router.rest (REST), services.router.grpc_front (gRPC)
    await router.stop()    # stop tasks, save state, close connections

The process (`__main__.py`) runs both fronts through `services.core.http.serve`, which starts the
router first and stops it last, after REST and gRPC drained together.
"""

from __future__ import annotations

import asyncio
import logging

from services.router.control import Control
from services.router.dispatch import Dispatcher
from services.router.feedback_log import FeedbackLog
from services.router.labels_out import LabelsOut
from services.router.settings import RouterSettings
from services.router.tap import InputTap
from services.router.tokens import TokenCodec, key_source
from services.router.upstream import Pools

log = logging.getLogger("services.router")


class Router:
    def __init__(self, settings: RouterSettings) -> None:
        self.settings = settings
        self.pools = Pools(connect_timeout_s=settings.connect_timeout_s, max_idle=settings.upstream_max_idle,
                           idle_timeout_s=settings.upstream_idle_timeout_s)
        self.dispatcher = Dispatcher()
        self.dispatcher.tap = InputTap(settings.input_tap_rows, settings.input_tap_sample_rate)
        self.control = Control(settings, self.dispatcher, self.pools)
        key = settings.token_key.get_secret_value() if settings.token_key is not None else None
        keys, self.token_key_source = key_source(key, settings.token_key_file)
        self.dispatcher.tokens = TokenCodec(keys)
        self.feedback_log = FeedbackLog(settings, self.dispatcher) if settings.kafka_bootstrap_servers else None
        if self.feedback_log is not None:
            self.dispatcher.share_failure = self.feedback_log.share_failure
        self.labels_out = (LabelsOut(settings.kafka_bootstrap_servers, settings.labels_topic)
                           if settings.labels_topic else None)
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
        if self.feedback_log is not None:
            self.feedback_log.start(asyncio.get_running_loop())
        if self.labels_out is not None:
            self.labels_out.start()
        log.info("router started", extra={"token_key": self.token_key_source,
                                           "feedback_topic": self.feedback_log.topic if self.feedback_log else None,
                                           "labels_topic": self.labels_out.topic if self.labels_out else None})
        self.started = True

    @property
    def ready(self) -> bool:
        """Started, and (with the feedback topic) caught up with what the other replicas learned."""
        return self.started and (self.feedback_log is None or self.feedback_log.caught_up)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        if self.feedback_log is not None:
            await asyncio.to_thread(self.feedback_log.stop)
        if self.labels_out is not None:
            await asyncio.to_thread(self.labels_out.stop)
        await self.dispatcher.mirrors.stop()
        self.control.save_state()
        self.pools.close()
        self.started = False

    async def _maintain(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            self.dispatcher.maintain()
            self.pools.prune()
