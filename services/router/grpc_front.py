"""The router's gRPC port (ROUTER_GRPC_PORT): one server hosting every gRPC codec.

    tensorflow.serving.PredictionService   grpc_predict.py (TF Serving API: Predict, GetModelMetadata)
    inference.GRPCInferenceService         grpc_oip.py (Open Inference Protocol / KServe V2 gRPC)

Each codec registers its methods as bytes-in, bytes-out handlers (no message parsing beyond what
routing needs) and shares one set of upstream channels.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import grpc

from services.router.dispatch import Dispatcher
from services.router.grpc_oip import OipCodec
from services.router.grpc_predict import PredictCodec
from services.router.grpc_upstream import Channels

log = logging.getLogger("services.router.grpc")


class GrpcFront:
    def __init__(self, dispatcher: Dispatcher, host: str, port: int, max_message_bytes: int,
                 options: Sequence[tuple[str, int]] = ()) -> None:
        """`options`: more grpc.aio server options (`GrpcServerSettings.grpc_connection_options`)."""
        self.address = f"{host}:{port}"
        self.options = [("grpc.max_receive_message_length", max_message_bytes),
                        ("grpc.max_send_message_length", max_message_bytes), *options]
        self.channels = Channels(max_message_bytes)
        self.codecs = [PredictCodec(dispatcher, self.channels), OipCodec(dispatcher, self.channels)]
        self.server: grpc.aio.Server | None = None

    async def start(self) -> None:
        self.server = grpc.aio.server(options=self.options)
        for codec in self.codecs:
            handlers = codec.handlers()
            self.server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(codec.service, handlers),))
            self.server.add_registered_method_handlers(codec.service, handlers)
        self.server.add_insecure_port(self.address)
        await self.server.start()
        log.info("gRPC front listening", extra={"address": self.address})

    async def stop(self, grace_s: float) -> None:
        if self.server is not None:
            await self.server.stop(grace_s)
            self.server = None
        await self.channels.close()
