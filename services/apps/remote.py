"""The model-as-service pattern: the consuming application calling a model server.

    python -m services.apps.remote            (settings from REMOTE_* environment variables)

Same HTTP API as the embedded app (`services/apps/api.py`); predictions come from the model
server (`services/model_server`) over gRPC, TF Serving's PredictionService (default), or over
REST, KServe V2 (`REMOTE_PROTOCOL=rest`). One channel / one HTTP client is opened at start-up
and reused by every request. Each call has a deadline (`REMOTE_TIMEOUT_S`); a call that fails
with UNAVAILABLE (server restarting, connection refused, 503 without `overloaded`) is retried
at most `REMOTE_RETRIES` times with exponential backoff and full jitter. Nothing else is
retried: a shed request (RESOURCE_EXHAUSTED / 503 overloaded) goes back to the caller as 503
with Retry-After, so load shedding is not undone by retries.

The app validates inputs itself with the contract of the model card in the repository (as the
embedded app does), so a bad request never costs a network hop, and labels each response with
the version the server reports it used. See patterns/model-as-service/README.md.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from enum import StrEnum
from typing import Any, TypeVar

import grpc
import httpx
import numpy as np
import orjson
from starlette.applications import Starlette

from services.apps.api import build_app
from services.apps.backend import Backend, BackendResult
from services.core.card import ModelCard
from services.core.errors import NotFound, Overloaded, ServingError, Unavailable
from services.core.grpc_status import error_from_status
from services.core.http import serve
from services.core.logging import configure_logging
from services.core.repository import version_dir
from services.core.runtime import CARD_FILE
from services.core.settings import ModelSettings, settings_config

log = logging.getLogger(__name__)
T = TypeVar("T")


class Protocol(StrEnum):
    GRPC = "grpc"
    REST = "rest"


class RemoteSettings(ModelSettings):
    """Settings of the model-as-service app; environment variables are prefixed REMOTE_."""

    model_config = settings_config("REMOTE_")

    protocol: Protocol = Protocol.GRPC
    """How to call the model server: grpc (TF Serving PredictionService) or rest (KServe V2)."""
    server_address: str = "127.0.0.1:8500"
    """Model server gRPC address, host:port."""
    server_url: str = "http://127.0.0.1:8501"
    """Model server REST base URL (KServe V2)."""
    model_label: str | None = None
    """Ask the server for a version label (e.g. stable) instead of a number; overrides model_version on the wire."""
    timeout_s: float = 2.0
    """Deadline of one call to the model server."""
    retries: int = 2
    """Retries of a call that failed with UNAVAILABLE (0 = no retry)."""
    backoff_base_s: float = 0.05
    """First retry waits up to this long (full jitter); each further retry doubles it."""
    backoff_max_s: float = 1.0
    """Longest wait before one retry."""


class _Retryable(Exception):
    """A call failed in a way worth retrying (the server is unavailable, for now)."""

    def __init__(self, error: ServingError) -> None:
        super().__init__(error.message)
        self.error = error


async def with_retries(call: Callable[[], Awaitable[T]], *, retries: int, base_s: float, max_s: float,
                       sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep) -> T:
    """Run `call`; on `_Retryable` retry up to `retries` times with exponential backoff and full jitter."""
    attempt = 0
    while True:
        try:
            return await call()
        except _Retryable as exc:
            if attempt >= retries:
                raise exc.error from exc
            delay = random.uniform(0, min(max_s, base_s * (2**attempt)))
            attempt += 1
            log.info("model server unavailable; retrying", extra={"attempt": attempt, "delay_s": round(delay, 4),
                                                                 "error": exc.error.message})
            await sleep(delay)


class _GrpcClient:
    """TF Serving PredictionService over one reused channel."""

    def __init__(self, settings: RemoteSettings) -> None:
        # Imported here: the REST shape never loads the protobuf modules.
        from services.protocols.tfs import predict_pb2, prediction_service_pb2_grpc
        from services.protocols.tfs.tensors import from_numpy, to_numpy

        self._predict_pb2, self._from_numpy, self._to_numpy = predict_pb2, from_numpy, to_numpy
        self.settings = settings
        self.channel = grpc.aio.insecure_channel(settings.server_address)
        self.stub = prediction_service_pb2_grpc.PredictionServiceStub(self.channel)

    async def predict(self, x: np.ndarray, name: str, input_name: str) -> tuple[np.ndarray, np.ndarray, int]:
        s = self.settings
        request = self._predict_pb2.PredictRequest()
        spec = request.model_spec
        spec.name = name
        if s.model_label:
            spec.version_label = s.model_label
        elif s.model_version is not None:
            spec.version.value = s.model_version
        request.inputs[input_name].CopyFrom(self._from_numpy(x))
        try:
            response = await self.stub.Predict(request, timeout=s.timeout_s)
        except grpc.aio.AioRpcError as exc:
            raise _grpc_error(exc) from exc
        return (self._to_numpy(response.outputs["label"]), self._to_numpy(response.outputs["probabilities"]),
                response.model_spec.version.value)

    async def ready(self, name: str) -> bool:
        from services.protocols.tfs import get_model_status_pb2, model_service_pb2_grpc

        stub = model_service_pb2_grpc.ModelServiceStub(self.channel)
        request = get_model_status_pb2.GetModelStatusRequest()
        request.model_spec.name = name
        try:
            response = await stub.GetModelStatus(request, timeout=self.settings.timeout_s)
        except grpc.aio.AioRpcError:
            return False
        available = get_model_status_pb2.ModelVersionStatus.AVAILABLE
        return any(v.state == available for v in response.model_version_status)

    async def close(self) -> None:
        await self.channel.close()


def _grpc_error(exc: grpc.aio.AioRpcError) -> Exception:
    """The model server's status through the one mapping (`error_from_status`), seen from the app: a
    model the server lacks is our deployment's fault, not the caller's; only UNAVAILABLE is retried."""
    error = error_from_status(exc.code(), f"model server: {exc.details() or exc.code().name}", exc.trailing_metadata())
    if isinstance(error, NotFound):
        return Unavailable(error.message)
    if exc.code() == grpc.StatusCode.UNAVAILABLE:
        return _Retryable(error)
    return error


class _RestClient:
    """KServe V2 inference over one reused httpx client (keep-alive)."""

    def __init__(self, settings: RemoteSettings) -> None:
        self.settings = settings
        self.client = httpx.AsyncClient(base_url=settings.server_url, timeout=settings.timeout_s,
                                        limits=httpx.Limits(max_keepalive_connections=64, max_connections=256))

    def _path(self, name: str) -> str:
        s = self.settings
        if s.model_label:
            return f"/v2/models/{name}/versions/{s.model_label}"
        if s.model_version is not None:
            return f"/v2/models/{name}/versions/{s.model_version}"
        return f"/v2/models/{name}"

    async def predict(self, x: np.ndarray, name: str, input_name: str) -> tuple[np.ndarray, np.ndarray, int]:
        body = orjson.dumps(
            {"inputs": [{"name": input_name, "shape": x.shape, "datatype": "FP32", "data": x.ravel()}]},
            option=orjson.OPT_SERIALIZE_NUMPY,
        )
        try:
            r = await self.client.post(self._path(name) + "/infer", content=body,
                                       headers={"content-type": "application/json"})
        except httpx.TimeoutException as exc:
            raise Unavailable("model server did not answer within the deadline") from exc
        except httpx.TransportError as exc:  # refused, reset, DNS: the server is not there right now
            raise _Retryable(Unavailable(f"model server unavailable: {exc!r}")) from exc
        if r.status_code != 200:
            raise _rest_error(r)
        payload = orjson.loads(r.content)
        outputs = {o["name"]: o for o in payload["outputs"]}
        label, prob = outputs["label"], outputs["probabilities"]
        labels = np.asarray(label["data"], dtype=np.int64).reshape(label["shape"])
        proba = np.asarray(prob["data"], dtype=np.float32).reshape(prob["shape"])
        return labels, proba, int(payload["model_version"])

    async def ready(self, name: str) -> bool:
        try:
            r = await self.client.get(self._path(name) + "/ready")
        except httpx.HTTPError:
            return False
        return r.status_code == 200

    async def close(self) -> None:
        await self.client.aclose()


def _rest_error(r: httpx.Response) -> Exception:
    try:
        body = orjson.loads(r.content)
        message, code = str(body.get("error", "")), body.get("code")
    except (orjson.JSONDecodeError, AttributeError):
        message, code = r.text[:200], None
    if r.status_code == 503 and code == "overloaded":
        retry = r.headers.get("retry-after", "1")
        return Overloaded(f"model server is shedding load: {message}",
                          retry_after_s=float(retry) if retry.isdigit() else 1.0)
    if r.status_code in (502, 503, 504):
        return _Retryable(Unavailable(f"model server unavailable ({r.status_code}): {message}"))
    if r.status_code == 404:  # the server lacks the model: our deployment's fault, not the caller's
        return Unavailable(f"model server: {message}")
    return ServingError(f"model server answered {r.status_code}: {message}")


class RemoteBackend(Backend):
    """The model-as-service shape: predictions from a model server; the card from the repository."""

    def __init__(self, settings: RemoteSettings, card: ModelCard) -> None:
        self.settings = settings
        self._card = card
        self._client: _GrpcClient | _RestClient | None = None
        self._ready = False
        self._watch: asyncio.Task | None = None

    @property
    def ready(self) -> bool:
        return self._ready

    @property
    def card(self) -> ModelCard:
        return self._card

    async def start(self) -> None:
        self._client = _GrpcClient(self.settings) if self.settings.protocol is Protocol.GRPC \
            else _RestClient(self.settings)
        self._watch = asyncio.create_task(self._wait_for_server(), name="wait for model server")

    async def _wait_for_server(self) -> None:
        """Ready once the server has the model loaded; until then /readyz answers 503."""
        assert self._client is not None
        delay = 0.05
        while not await self._client.ready(self._card.name):
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)
        self._ready = True
        log.info("model server ready", extra={"model_name": self._card.name, "protocol": self.settings.protocol.value})

    async def stop(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
        if self._client is not None:
            await self._client.close()

    async def predict(self, x: np.ndarray) -> BackendResult:
        client = self._client
        if client is None:
            raise Unavailable("the model server client is not started")
        s = self.settings
        name, input_name = self._card.name, self._card.input.name
        labels, proba, version = await with_retries(
            lambda: client.predict(x, name, input_name),
            retries=s.retries, base_s=s.backoff_base_s, max_s=s.backoff_max_s,
        )
        return BackendResult(labels, proba, name, version)


def load_card(settings: RemoteSettings) -> ModelCard:
    """The contract the app validates with: the card of the version it asks for (the newest that passed its gate
    when none is set) in the shared model repository."""
    path = version_dir(settings.model_repository, settings.model_name, settings.model_version)
    return ModelCard.from_file(path / CARD_FILE)


def create_app(settings: RemoteSettings) -> Starlette:
    return build_app(
        RemoteBackend(settings, load_card(settings)),
        app_name="model-as-service",
        max_body_bytes=settings.max_body_bytes,
        max_batch_size=settings.max_batch_size,
        range_policy=settings.range_policy,
        range_margin=settings.range_margin,
    )


def main() -> None:
    settings = RemoteSettings()
    configure_logging("remote-app", settings.log_level)
    serve(create_app(settings), settings)


if __name__ == "__main__":
    main()
