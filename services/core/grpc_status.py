"""The one place a `ServingError` becomes a gRPC status, and a gRPC status becomes a `ServingError`.

    add_servicer(server, service, servicer)
                                 registers every method of a service so that it answers errors through
                                 `guard`, and undecodable request bytes as INVALID_ARGUMENT
    abort(context, exc)          ServingError -> status code + message (+ `retry-after` trailer on overload)
    guard(context, call)         runs a servicer body: ServingError -> abort; anything else -> INTERNAL,
                                 logged, never a trace or a class name to the client
    error_from_status(code, msg) an upstream's gRPC status -> the ServingError a proxy or client raises,
                                 so a REST front answers it with the matching HTTP status

Every gRPC servicer (model server, router, any protocol codec) answers errors through these; with
`add_servicer` a servicer method only raises ServingError and never touches the context for errors.

Why `add_servicer` instead of the generated `add_XServicer_to_server`: gRPC decodes the request
before the servicer runs, and when the bytes do not parse it logs a trace and hands the method None
(which then fails somewhere as INTERNAL or UNKNOWN). Here decoding failures reach the method wrapper
as a marker, answered INVALID_ARGUMENT naming the message type.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any, NoReturn, TypeVar

import grpc
from google.protobuf.descriptor import ServiceDescriptor
from google.protobuf.message import DecodeError
from google.protobuf.message_factory import GetMessageClass

from services.core.errors import (
    INTERNAL_MESSAGE,
    ClientError,
    InvalidInput,
    NotFound,
    Overloaded,
    PayloadTooLarge,
    ServingError,
    Unauthorized,
    Unavailable,
    bounded,
)

log = logging.getLogger(__name__)
T = TypeVar("T")



async def abort(context: grpc.aio.ServicerContext, exc: ServingError) -> NoReturn:
    """Answer the call with `exc`'s gRPC code and message."""
    trailing: tuple[tuple[str, str], ...] = ()
    if isinstance(exc, Overloaded):
        trailing = (("retry-after", str(max(1, round(exc.retry_after_s)))),)
    # bounded again: a handler may have edited the message after construction (errors.MAX_MESSAGE_CHARS)
    await context.abort(exc.grpc_code, bounded(exc.message), trailing_metadata=trailing)
    raise AssertionError("unreachable: context.abort raises")  # pragma: no cover


async def abort_internal(context: grpc.aio.ServicerContext, exc: BaseException) -> NoReturn:
    log.error("unhandled error in a gRPC call", exc_info=exc)
    await context.abort(grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE)
    raise AssertionError("unreachable: context.abort raises")  # pragma: no cover


async def guard(context: grpc.aio.ServicerContext, call: Callable[[], Awaitable[T]]) -> T:
    """Run a servicer method's body; every failure leaves as a clean status."""
    try:
        return await call()
    except ServingError as exc:
        await abort(context, exc)
    except grpc.aio.AbortError:
        raise  # the body already answered
    except Exception as exc:  # never a trace to the client
        await abort_internal(context, exc)


class _Undecodable:
    """What the request deserializer hands the method when the bytes are not a valid message."""

    __slots__ = ("error",)

    def __init__(self, error: InvalidInput) -> None:
        self.error = error


def _decoder(message_class: Any) -> Callable[[bytes], Any]:
    parse = message_class.FromString
    type_name = message_class.DESCRIPTOR.full_name

    def decode(data: bytes) -> Any:
        try:
            return parse(data)
        except DecodeError:
            return _Undecodable(InvalidInput(f"the request is not a valid {type_name} message "
                                             f"({len(data)} bytes that do not parse)", field="request"))

    return decode


def _guarded(method: Callable[[Any, grpc.aio.ServicerContext], Awaitable[T]]
             ) -> Callable[[Any, grpc.aio.ServicerContext], Awaitable[T]]:
    async def behavior(request: Any, context: grpc.aio.ServicerContext) -> T:
        if request.__class__ is _Undecodable:
            await abort(context, request.error)
        try:
            return await method(request, context)
        except ServingError as exc:
            await abort(context, exc)
        except grpc.aio.AbortError:
            raise
        except Exception as exc:
            await abort_internal(context, exc)

    return behavior


def add_servicer(server: grpc.aio.Server, service: ServiceDescriptor, servicer: object) -> None:
    """Register `servicer`'s unary methods for `service` (one coroutine method per RPC, named as in
    the .proto); methods it lacks answer UNIMPLEMENTED, as with the generated registration."""
    handlers = {}
    for method in service.methods:
        if method.client_streaming or method.server_streaming:
            raise ValueError(f"{service.full_name}/{method.name} streams; add_servicer registers unary methods")
        impl = getattr(servicer, method.name, None)
        if impl is None:
            continue
        handlers[method.name] = grpc.unary_unary_rpc_method_handler(
            _guarded(impl),
            request_deserializer=_decoder(GetMessageClass(method.input_type)),
            response_serializer=GetMessageClass(method.output_type).SerializeToString,
        )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service.full_name, handlers),))
    server.add_registered_method_handlers(service.full_name, handlers)


_FROM_CODE: dict[grpc.StatusCode, type[ServingError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidInput,
    grpc.StatusCode.OUT_OF_RANGE: InvalidInput,
    grpc.StatusCode.FAILED_PRECONDITION: ClientError,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.UNAUTHENTICATED: Unauthorized,
    grpc.StatusCode.RESOURCE_EXHAUSTED: Overloaded,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: Unavailable,
}


def error_from_status(code: grpc.StatusCode, details: str | None, trailing_metadata: Any = None,
                      **extra: Any) -> ServingError:
    """The ServingError for an upstream's status (INTERNAL and anything unknown: a 500-class error).

    RESOURCE_EXHAUSTED means two things on the wire: a shedding server (`abort` sends `retry-after`:
    Overloaded, retry elsewhere or later) or a message or batch over a limit (no `retry-after`:
    PayloadTooLarge, the client's mistake)."""
    cls = _FROM_CODE.get(code, ServingError)
    if cls is Overloaded:
        retry_after = next((v for k, v in trailing_metadata or () if k == "retry-after"), None)
        if retry_after is None:
            return PayloadTooLarge(details or "request over a limit", **extra)
        seconds = float(retry_after) if retry_after.isascii() and retry_after.isdigit() else 1.0
        return Overloaded(details or "overloaded", retry_after_s=seconds, **extra)
    return cls(details or code.name.lower(), **extra)
