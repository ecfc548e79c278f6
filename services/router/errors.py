"""Router-specific errors, on top of the shared hierarchy in services.core.errors."""

from __future__ import annotations

import grpc

from services.core.errors import ClientError, ServingError


class Forbidden(ClientError):
    """The admin API is disabled (no token configured)."""

    http_status = 403
    grpc_code = grpc.StatusCode.PERMISSION_DENIED
    code = "forbidden"


class Conflict(ClientError):
    """The request conflicts with the router's state (feedback given twice, policy takes none)."""

    http_status = 409
    grpc_code = grpc.StatusCode.FAILED_PRECONDITION
    code = "conflict"


class PreconditionFailed(ClientError):
    """`If-Match` names a config version that is no longer in force."""

    http_status = 412
    grpc_code = grpc.StatusCode.FAILED_PRECONDITION
    code = "version_mismatch"


class BadGateway(ServingError):
    """No variant produced an answer (the chosen one and the fallback both failed)."""

    http_status = 502
    grpc_code = grpc.StatusCode.UNAVAILABLE
    code = "upstream_failed"
