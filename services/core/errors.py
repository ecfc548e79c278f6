"""Typed errors of the serving stack, each carrying its HTTP status and gRPC code.

    ServingError                      500  INTERNAL
    ├── ClientError                   400  INVALID_ARGUMENT   the caller's mistake
    │   ├── InvalidInput              400  INVALID_ARGUMENT   names the field and the problem
    │   ├── PayloadTooLarge           413  RESOURCE_EXHAUSTED body or batch over the limit
    │   ├── NotFound                  404  NOT_FOUND          unknown model, version or id
    │   ├── Gone                      410  NOT_FOUND          an id that existed but expired
    │   ├── UnsupportedMediaType      415  INVALID_ARGUMENT   a body sent as something other than JSON
    │   └── Unauthorized              401  UNAUTHENTICATED    admin endpoint without a valid token
    ├── Unavailable                   503  UNAVAILABLE        not ready yet, or a backend is down
    │   └── Overloaded                503  RESOURCE_EXHAUSTED queue full; carries Retry-After
    └── ArtifactError                 500  INTERNAL           a model artifact cannot be served
        └── IntegrityError            500  INTERNAL           checksum or signature mismatch

Services may add leaves for their own needs (the router's admin API and proxy:
`services/router/errors.py`: Forbidden 403, Conflict 409, PreconditionFailed 412, BadGateway 502).

Services raise these and translate them to the wire in exactly one place each:
`services.core.http.exception_response` for HTTP (Starlette apps through `EXCEPTION_HANDLERS`),
`services.core.grpc_status` for gRPC (servicers registered with `add_servicer`, or `guard`).
Wrap lower-level exceptions with `raise ... from exc` so the cause stays in the logs.

A client's strings end up in error messages; quote them with `echo(value)` (a bounded repr), and
every message is cut to MAX_MESSAGE_CHARS anyway: a gRPC status message travels in the trailing
metadata, which a 10 kB echo would overflow (the client then sees a transport error instead of
INVALID_ARGUMENT, and a proxy counts it against the variant).
"""

from __future__ import annotations

from typing import Any

import grpc

# What a client sees of an unexpected failure, over HTTP and gRPC alike: never a trace or a class name.
INTERNAL_MESSAGE = "internal error; see the server log"
ECHO_CHARS = 64
"""Most characters of a client-supplied value quoted in an error message (`echo`)."""
MAX_NAME_CHARS = 256
"""Most characters of a name or id a client sends for the server to use or echo (a TF Serving
signature_name, a KServe V2 request `id`); longer is INVALID_ARGUMENT."""
MAX_MESSAGE_CHARS = 1000
"""Most characters of any error message (gRPC's default metadata limit is 8 KiB, and the status
message is percent-encoded: up to 3 bytes a character)."""


def echo(value: object, limit: int = ECHO_CHARS) -> str:
    """`repr(value)` for an error message, cut to `limit` characters with the original length named."""
    text = repr(value)
    if len(text) <= limit:
        return text
    size = len(value) if isinstance(value, (str, bytes)) else len(text)
    return f"{text[:limit]}...({size} characters)"


def bounded(message: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    """`message` cut to `limit` characters."""
    return message if len(message) <= limit else message[: limit - 15] + "...(truncated)"


class ServingError(Exception):
    http_status: int = 500
    grpc_code: grpc.StatusCode = grpc.StatusCode.INTERNAL
    code: str = "internal"

    def __init__(self, message: str, *, field: str | None = None, **details: Any) -> None:
        message = bounded(message)
        super().__init__(message)
        self.message = message
        self.field = field
        self.details = details

    def to_dict(self) -> dict[str, Any]:
        # `error` is a plain string so KServe V2 clients, which expect {"error": "..."}, read it.
        body: dict[str, Any] = {"error": self.message, "code": self.code}
        if self.field is not None:
            body["field"] = self.field
        body.update(self.details)
        return body


class ClientError(ServingError):
    http_status = 400
    grpc_code = grpc.StatusCode.INVALID_ARGUMENT
    code = "bad_request"


class InvalidInput(ClientError):
    code = "invalid_input"


class PayloadTooLarge(ClientError):
    http_status = 413
    grpc_code = grpc.StatusCode.RESOURCE_EXHAUSTED
    code = "payload_too_large"


class NotFound(ClientError):
    http_status = 404
    grpc_code = grpc.StatusCode.NOT_FOUND
    code = "not_found"


class Gone(ClientError):
    http_status = 410
    grpc_code = grpc.StatusCode.NOT_FOUND
    code = "gone"


class UnsupportedMediaType(ClientError):
    http_status = 415
    code = "unsupported_media_type"


class Unauthorized(ClientError):
    http_status = 401
    grpc_code = grpc.StatusCode.UNAUTHENTICATED
    code = "unauthorized"


class Unavailable(ServingError):
    http_status = 503
    grpc_code = grpc.StatusCode.UNAVAILABLE
    code = "unavailable"


class Overloaded(Unavailable):
    grpc_code = grpc.StatusCode.RESOURCE_EXHAUSTED
    code = "overloaded"

    def __init__(self, message: str, *, retry_after_s: float = 1.0, **details: Any) -> None:
        super().__init__(message, **details)
        self.retry_after_s = retry_after_s


class ArtifactError(ServingError):
    code = "artifact_error"


class IntegrityError(ArtifactError):
    code = "integrity_error"
