"""The one place a `ServingError` becomes a gRPC status, and a gRPC status becomes a `ServingError`.

    abort(context, exc)          ServingError -> status code + message (+ `retry-after` trailer on overload)
    guard(context, call)         runs a servicer body: ServingError -> abort; anything else -> INTERNAL,
                                 logged, never a trace or a class name to the client
    error_from_status(code, msg) an upstream's gRPC status -> the ServingError a proxy or client raises,
                                 so a REST front answers it with the matching HTTP status

Every gRPC servicer (model server, router, any protocol codec) answers errors through these.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any, NoReturn, TypeVar

import grpc

from services.core.errors import (
    ClientError,
    InvalidInput,
    NotFound,
    Overloaded,
    ServingError,
    Unauthorized,
    Unavailable,
)

log = logging.getLogger(__name__)
T = TypeVar("T")

INTERNAL_MESSAGE = "internal error; see the server log"


async def abort(context: grpc.aio.ServicerContext, exc: ServingError) -> NoReturn:
    """Answer the call with `exc`'s gRPC code and message."""
    trailing: tuple[tuple[str, str], ...] = ()
    if isinstance(exc, Overloaded):
        trailing = (("retry-after", str(max(1, round(exc.retry_after_s)))),)
    await context.abort(exc.grpc_code, exc.message, trailing_metadata=trailing)
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
    except Exception as exc:  # never a trace to the client
        await abort_internal(context, exc)


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


def error_from_status(code: grpc.StatusCode, details: str | None, **extra: Any) -> ServingError:
    """The ServingError for an upstream's status (INTERNAL and anything unknown: a 500-class error)."""
    cls = _FROM_CODE.get(code, ServingError)
    return cls(details or code.name.lower(), **extra)
