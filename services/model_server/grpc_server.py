"""The model server's gRPC server: every protocol's services on one port, health, reflection.

    tensorflow.serving.PredictionService, tensorflow.serving.ModelService    grpc_tfs.py
    inference.GRPCInferenceService (Open Inference Protocol / KServe V2)     grpc_oip.py
    grpc.health.v1.Health/Check|Watch      "" and each service above: SERVING once a version serves
    grpc.reflection.v1alpha.ServerReflection   grpcurl / grpc_cli can list and describe the services

Each protocol is one codec module returning (service descriptor, servicer) pairs; they are
registered with `services.core.grpc_status.add_servicer`, so every method answers errors (and
undecodable requests) through the one mapping.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Sequence

import grpc
from google.protobuf.descriptor import FileDescriptor, ServiceDescriptor
from google.protobuf.descriptor_pool import DescriptorPool
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2

from services.core.grpc_status import add_servicer
from services.model_server import grpc_oip, grpc_tfs
from services.model_server.repository import Registry

log = logging.getLogger(__name__)
_HEALTH: ServiceDescriptor = health_pb2.DESCRIPTOR.services_by_name["Health"]
_REFLECTION: ServiceDescriptor = reflection_pb2.DESCRIPTOR.services_by_name["ServerReflection"]


def _reflection_pool(services: Iterable[ServiceDescriptor]) -> DescriptorPool:
    """One pool holding the files of every service served. Reflection looks symbols up in a single
    pool, and the Open Inference Protocol messages live outside the default one
    (services/protocols/oip/README.md)."""
    pool = DescriptorPool()
    added: set[str] = set()

    def add(file: FileDescriptor) -> None:
        if file.name in added:
            return
        added.add(file.name)
        for dependency in file.dependencies:
            add(dependency)
        pool.AddSerializedFile(file.serialized_pb)

    for service in services:
        add(service.file)
    return pool


class GrpcFrontend:
    """The grpc.aio server with every service registered; health follows the registry's readiness.
    A `serve()` server: start() binds and starts, stop(grace_s) drains."""

    def __init__(self, registry: Registry, *, host: str, port: int, max_message_bytes: int,
                 options: Sequence[tuple[str, int]] = ()) -> None:
        """`options`: more grpc.aio server options (`GrpcServerSettings.grpc_connection_options`)."""
        self.registry = registry
        self.address = f"{host}:{port}"
        self.port = port
        self._options = [
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.so_reuseport", 0),
            *options,
        ]
        self._servicers = [*grpc_tfs.servicers(registry), *grpc_oip.servicers(registry)]
        self.services = [service for service, _ in self._servicers]
        self.server: grpc.aio.Server | None = None
        self.health: health.aio.HealthServicer | None = None
        self._serving: bool | None = None
        registry.listeners.append(self.sync_health)

    async def start(self) -> None:
        """Bind and start (on the running loop: grpc.aio binds a server to the loop it was made on)."""
        server = grpc.aio.server(options=self._options)
        for service, servicer in self._servicers:
            add_servicer(server, service, servicer)
        self.health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        names = [s.full_name for s in (*self.services, _HEALTH, _REFLECTION)]
        reflection.enable_server_reflection(names, server,
                                            pool=_reflection_pool((*self.services, _HEALTH, _REFLECTION)))
        self.port = server.add_insecure_port(self.address)
        self.address = f"{self.address.rpartition(':')[0]}:{self.port}"
        self.server = server
        await server.start()
        self.sync_health()
        log.info("gRPC listening", extra={"address": self.address, "services": [s.full_name for s in self.services]})

    def sync_health(self) -> None:
        """Mirror the registry's readiness into grpc.health.v1 ("" and each served service)."""
        serving = self.registry.ready
        if self.health is None or serving == self._serving:
            return
        self._serving = serving
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in ("", *(s.full_name for s in self.services)):
            # The aio servicer's set() is a coroutine; its state change is synchronous up to the await.
            asyncio.get_running_loop().create_task(self.health.set(name, status))

    async def stop(self, grace_s: float) -> None:
        """NOT_SERVING, refuse new calls, let in-flight calls finish within `grace_s`."""
        if self.server is None:
            return
        if self.health is not None:
            await self.health.enter_graceful_shutdown()
        await self.server.stop(grace_s)
