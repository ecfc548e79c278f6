"""How the gRPC codecs read a variant's status: the client's mistakes pass through, the rest fail over."""

from __future__ import annotations

import grpc
import pytest

from services.core.errors import InvalidInput, NotFound, PayloadTooLarge
from services.router.grpc_upstream import answer_or_raise
from services.router.upstream import UpstreamError


def status(code: grpc.StatusCode, details: str, *trailing: tuple[str, str]) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(*trailing), details)


@pytest.mark.parametrize(("code", "error", "http_status"), [
    (grpc.StatusCode.INVALID_ARGUMENT, InvalidInput, 400),
    (grpc.StatusCode.NOT_FOUND, NotFound, 404),
    (grpc.StatusCode.RESOURCE_EXHAUSTED, PayloadTooLarge, 413),  # no retry-after: a batch over the limit
])
def test_client_errors_are_answers_to_pass_through(code, error, http_status) -> None:
    answer = answer_or_raise(status(code, "inputs has 257 rows; the limit is 256"))
    assert type(answer.error) is error and answer.status == http_status
    assert answer.error.grpc_code == code and answer.error.message == "inputs has 257 rows; the limit is 256"


@pytest.mark.parametrize(("code", "trailing"), [
    (grpc.StatusCode.UNAVAILABLE, ()),
    (grpc.StatusCode.DEADLINE_EXCEEDED, ()),
    (grpc.StatusCode.INTERNAL, ()),
    (grpc.StatusCode.UNKNOWN, ()),
    (grpc.StatusCode.CANCELLED, ()),
    (grpc.StatusCode.RESOURCE_EXHAUSTED, (("retry-after", "1"),)),  # a shedding server: overloaded
])
def test_other_statuses_are_failures_of_the_variant(code, trailing) -> None:
    with pytest.raises(UpstreamError) as err:
        answer_or_raise(status(code, "queue full", *trailing))
    assert err.value.kind == f"grpc_{code.name.lower()}" and code.name in err.value.message
