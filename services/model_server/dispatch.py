"""The one inference path every protocol codec goes through: resolve, validate, predict, count.

    with Call(registry, "grpc_v2", request.model_name) as call:
        call.resolve(version_number(...))          # NotFound for an unknown model or version
        labels, probabilities = await call.infer(array, field="inputs[0]")   # contract + batching
        response = encode(call.servable, labels, probabilities)

A codec (REST V2, REST V1, gRPC TF Serving, gRPC Open Inference Protocol) only decodes its request
into an array and encodes the answer; the model resolution, the input contract, the batcher and the
request metrics are here, once. Errors leave the `with` unchanged (after being counted) for the
protocol's one error mapping: `services.core.http` or `services.core.grpc_status`.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable
from types import TracebackType

import numpy as np

from services.core.errors import ServingError
from services.model_server import metrics
from services.model_server.repository import Registry, Servable

# More digits than any int64 version has; also keeps int() clear of Python's 4300-digit limit.
_MAX_VERSION_DIGITS = 18


def version_number(raw: str) -> int | None:
    """`raw` as a version number when it is ASCII digits, else None. (`str.isdigit` alone also
    accepts '²' or '٣', which int() then refuses or reads as another number.)"""
    if raw.isascii() and raw.isdigit() and len(raw) <= _MAX_VERSION_DIGITS:
        return int(raw)
    return None


class Call:
    """One inference request, from the protocol handler's entry to its answer or error."""

    __slots__ = ("registry", "protocol", "model_name", "servable", "started", "_counted")

    def __init__(self, registry: Registry, protocol: str, model_name: str) -> None:
        self.registry = registry
        self.protocol = protocol
        self.model_name = model_name
        self.servable: Servable | None = None
        self.started = time.perf_counter()
        self._counted = True

    def resolve(self, version: int | None = None, label: str | None = None) -> Servable:
        """The version that answers (the default one when neither is given). Resolve again after an
        await that waited on the client: a newer version may have been swapped in meanwhile."""
        servable = self.servable = self.registry.resolve(self.model_name, version, label)
        return servable

    # Not coroutines themselves: they hand back the servable's, one coroutine frame less per request.
    def infer(self, array: np.ndarray, field: str) -> Awaitable[tuple[np.ndarray, np.ndarray]]:
        """Check `array` against the resolved version's input contract (naming `field` in errors),
        then predict: (labels int64 [rows], probabilities float32 [rows, classes])."""
        servable = self.servable
        assert servable is not None, "resolve() first"
        return servable.predict(servable.contract.check_array(array, field=field))

    def predict(self, x: np.ndarray) -> Awaitable[tuple[np.ndarray, np.ndarray]]:
        """Predict rows the contract already produced (`InputContract.rows_to_array`)."""
        servable = self.servable
        assert servable is not None, "resolve() first"
        return servable.predict(x)

    def abandon(self) -> None:
        """The client went away before there was anything to answer: count nothing."""
        self._counted = False

    def __enter__(self) -> Call:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        servable = self.servable
        if exc is None:
            if servable is not None and self._counted:
                m = servable.metrics.protocols[self.protocol]
                m.ok.inc()
                m.seconds.observe(time.perf_counter() - self.started)
            return
        if not isinstance(exc, Exception):
            return  # cancelled: nobody is waiting for an answer
        code = exc.code if isinstance(exc, ServingError) else "internal"
        if servable is not None:
            servable.metrics.error(self.protocol, code)
        else:
            # No client-chosen label values: an unknown model is counted under model_name="".
            name = self.model_name if self.model_name in self.registry.models else ""
            metrics.count_error(name, "", self.protocol, code)
