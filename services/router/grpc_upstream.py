"""What the gRPC codecs share: routing one call, channels to variants, reading an upstream's status.

    async def predict(self, raw, context):       # a codec's method: bytes in, bytes out
        return await guard(context, lambda: route(dispatcher, context, upstream, raw, parse))

    channels = Channels(max_message_bytes)      # the codecs' upstream calls, one channel per address
    call = channels.method("127.0.0.1:8500", "/tensorflow.serving.PredictionService/Predict")
    reply = await call(request_bytes, timeout=1.0, metadata=(("x-request-id", rid),))

An upstream's non-OK status becomes a ServingError through `services.core.grpc_status.error_from_status`
(`upstream_error`). A client error (INVALID_ARGUMENT, NOT_FOUND, a batch over the limit ...) is the
caller's: it comes back as a `GrpcAnswer` carrying the error, to be passed through, and never
counts against the variant. Anything else (UNAVAILABLE, DEADLINE_EXCEEDED, INTERNAL, overload ...)
is a failure of the variant: `UpstreamError`, fail-over and ejection.

`route` is a gRPC call end to end: stickiness, override and request id from the call metadata,
the codec's `parse` (bytes -> its Request), the dispatcher, and the answer with `x-request-id`,
`x-variant`, `x-model-version` as initial and trailing metadata (the REST front's headers).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc

from services.core.errors import ClientError, ServingError
from services.core.grpc_status import error_from_status
from services.router.dispatch import Dispatcher, Request, Upstream
from services.router.table import RouteTable, Variant
from services.router.upstream import UpstreamError

Parse = Callable[[RouteTable, bytes, str, str | None, str | None], Request]
"""A codec's decoder: (table, request bytes, request id, key, override) -> its Request; raises ServingError."""


async def route(dispatcher: Dispatcher, context: grpc.aio.ServicerContext, upstream: Upstream, raw: bytes,
                parse: Parse) -> bytes:
    """Route one gRPC inference call; errors are raised as ServingError (run it under `guard`)."""
    table = dispatcher.table
    assert table is not None
    given = key = override = None
    sticky, forcing = table.sticky, table.override
    for name, value in context.invocation_metadata() or ():
        if name == "x-request-id":
            given = value
        elif name == forcing:
            override = value
        elif name == sticky:
            key = value
    rid = dispatcher.request_id(given if isinstance(given, str) else None)
    try:
        try:
            request = parse(table, raw, rid, key or None, override or None)
        except ServingError as exc:
            table.unrouted.request(exc.http_status)
            raise
        routed = await dispatcher.dispatch(table, request, upstream)
    except ServingError:
        metadata = (("x-request-id", rid),)
        await context.send_initial_metadata(metadata)
        context.set_trailing_metadata(metadata)
        raise
    served, answer, _ = routed
    metadata = reply_metadata(request.reply_id, served)
    if request.token is not None:  # any router replica takes feedback with it (services/router/tokens.py)
        metadata += (("x-feedback-token", request.token),)
    await context.send_initial_metadata(metadata)
    context.set_trailing_metadata(metadata)
    if answer.error is not None:  # the variant's verdict on a bad request: the client's mistake
        raise answer.error
    if table.shadows:
        dispatcher.mirror(table, request, upstream, routed)
    return answer.body


class GrpcAnswer:
    """A variant's gRPC answer: the reply bytes, or the client error it answered with."""

    __slots__ = ("status", "body", "error")

    def __init__(self, body: bytes, error: ClientError | None = None) -> None:
        self.status = 200 if error is None else error.http_status
        """HTTP-equivalent status, for metrics and the dispatcher (< 500: an answer, not a failure)."""
        self.body = body
        self.error = error


class Channels:
    """One channel per upstream address, shared by every gRPC codec; closed at shutdown."""

    def __init__(self, max_message_bytes: int) -> None:
        self._options = [("grpc.max_receive_message_length", max_message_bytes),
                         ("grpc.max_send_message_length", max_message_bytes)]
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._methods: dict[str, dict[str, Any]] = {}

    def method(self, address: str, path: str) -> Any:
        """A bytes-in, bytes-out unary callable of `path` on `address`."""
        by_address = self._methods.get(path)
        if by_address is None:
            by_address = self._methods[path] = {}
        call = by_address.get(address)
        if call is None:
            channel = self._channels.get(address)
            if channel is None:
                channel = self._channels[address] = grpc.aio.insecure_channel(address, options=self._options)
            call = by_address[address] = channel.unary_unary(path)
        return call

    async def close(self) -> None:
        for channel in self._channels.values():
            await channel.close()
        self._channels.clear()
        self._methods.clear()


def address(variant: Variant) -> str:
    """The variant's gRPC address; a variant without one fails like an unreachable one."""
    if variant.grpc is None:
        raise UpstreamError("no_grpc_address", f"variant {variant.name!r} has no grpc address in the routing config")
    return variant.grpc


def upstream_error(exc: grpc.aio.AioRpcError) -> ServingError:
    """The ServingError an upstream's status stands for."""
    return error_from_status(exc.code(), exc.details(), exc.trailing_metadata())


def answer_or_raise(exc: grpc.aio.AioRpcError) -> GrpcAnswer:
    """A client error as an answer to pass through; raise UpstreamError for anything else."""
    error = upstream_error(exc)
    if isinstance(error, ClientError):
        return GrpcAnswer(b"", error)
    code = exc.code()
    raise UpstreamError(f"grpc_{code.name.lower()}", f"{code.name}: {error.message}")


def reply_metadata(request_id: str, served: Variant) -> tuple[tuple[str, str], ...]:
    """What the REST front sends as headers: who answered, which version, under which request id."""
    return (("x-request-id", request_id), ("x-variant", served.name),
            ("x-model-version", served.model_version.decode()))

