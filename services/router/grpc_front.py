"""The router's gRPC port (ROUTER_GRPC_PORT): one server hosting every gRPC codec.

Each codec registers its service as a bytes-in, bytes-out generic handler (no servicer base
classes, no message parsing beyond what routing needs) and shares one set of upstream channels.
"""

from __future__ import annotations

import logging

import grpc

from services.router.dispatch import Dispatcher
from services.router.grpc_predict import PredictCodec
from services.router.grpc_upstream import Channels

log = logging.getLogger("services.router.grpc")


class GrpcFront:
    def __init__(self, dispatcher: Dispatcher, host: str, port: int, max_message_bytes: int) -> None:
        self.address = f"{host}:{port}"
        self.max_message_bytes = max_message_bytes
        self.channels = Channels(max_message_bytes)
        self.codecs = [PredictCodec(dispatcher, self.channels)]
        self.server: grpc.aio.Server | None = None

    async def start(self) -> None:
        self.server = grpc.aio.server(options=[("grpc.max_receive_message_length", self.max_message_bytes),
                                               ("grpc.max_send_message_length", self.max_message_bytes)])
        self.server.add_generic_rpc_handlers(tuple(codec.handler() for codec in self.codecs))
        self.server.add_insecure_port(self.address)
        await self.server.start()
        log.info("gRPC front listening", extra={"address": self.address})

    async def stop(self, grace_s: float) -> None:
        if self.server is not None:
            await self.server.stop(grace_s)
            self.server = None
        await self.channels.close()
