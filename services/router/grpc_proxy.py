"""gRPC `PredictionService/Predict` pass-through (TF Serving API), routed like the REST path.

    ROUTER_GRPC_PORT=8500   and, per variant in the routing config,   grpc: model-server-host:8500

A TF Serving client calls the router as it would call TF Serving. The request stays bytes except
for its `model_spec`, which is rewritten to the chosen variant's model and version (the rest of
the message is re-serialised untouched). Policy, stickiness (metadata `x-user-id`, or the
configured sticky header), override (`x-variant`), fail-over to the fallback (on UNAVAILABLE,
DEADLINE_EXCEEDED, INTERNAL, UNKNOWN, RESOURCE_EXHAUSTED and the variant's timeout), outlier
ejection and feedback bookkeeping are the REST path's. The answer's trailing metadata carries
`x-request-id`, `x-variant` and `x-model-version`. Other status codes (INVALID_ARGUMENT,
NOT_FOUND, ...) are the client's and pass through unchanged.

Not on this path: shadow mirroring (mirrors are REST only) and `GetModelMetadata` (call a model
server, or the router's REST metadata endpoint).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import grpc

from services.protocols.tfs import predict_pb2
from services.router import metrics
from services.router.policies import RouteRequest, UnknownVariantError
from services.router.service import _REQUEST_ID_OK, Router, RouteTable, Variant

log = logging.getLogger("services.router.grpc")

SERVICE = "tensorflow.serving.PredictionService"
PREDICT = f"/{SERVICE}/Predict"
#: Codes that mean "this variant could not answer": fail over. Anything else is the client's.
FAILOVER_CODES = frozenset({
    grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.INTERNAL,
    grpc.StatusCode.UNKNOWN, grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.CANCELLED,
})


class _Failed(Exception):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code = code
        self.details = details


class GrpcProxy:
    def __init__(self, router: Router, host: str, port: int, max_message_bytes: int) -> None:
        self.router = router
        self.address = f"{host}:{port}"
        self.max_message_bytes = max_message_bytes
        self.server: grpc.aio.Server | None = None
        self._channels: dict[str, tuple[grpc.aio.Channel, Any]] = {}

    async def start(self) -> None:
        options = [("grpc.max_receive_message_length", self.max_message_bytes),
                   ("grpc.max_send_message_length", self.max_message_bytes)]
        self.server = grpc.aio.server(options=options)
        handler = grpc.method_handlers_generic_handler(
            SERVICE, {"Predict": grpc.unary_unary_rpc_method_handler(self.predict)}  # bytes in, bytes out
        )
        self.server.add_generic_rpc_handlers((handler,))
        self.server.add_insecure_port(self.address)
        await self.server.start()
        log.info("gRPC pass-through listening", extra={"address": self.address})

    async def stop(self, grace_s: float) -> None:
        if self.server is not None:
            await self.server.stop(grace_s)
        for channel, _ in self._channels.values():
            await channel.close()
        self._channels.clear()

    def _stub(self, address: str) -> Any:
        entry = self._channels.get(address)
        if entry is None:
            options = [("grpc.max_receive_message_length", self.max_message_bytes),
                       ("grpc.max_send_message_length", self.max_message_bytes)]
            channel = grpc.aio.insecure_channel(address, options=options)
            entry = self._channels[address] = (channel, channel.unary_unary(PREDICT))
        return entry[1]

    async def predict(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        started = time.perf_counter()
        router = self.router
        table = router.table
        assert table is not None
        metadata = {k: v for k, v in context.invocation_metadata() if isinstance(v, str)}
        rid = metadata.get("x-request-id")
        if not rid or not _REQUEST_ID_OK.match(rid):
            rid = router.new_request_id()
        try:
            message = predict_pb2.PredictRequest.FromString(request)
        except Exception:
            await self._abort(context, table, grpc.StatusCode.INVALID_ARGUMENT, "request is not a PredictRequest", rid)
        spec = message.model_spec
        if table.public_model is not None and spec.name != table.public_model:
            await self._abort(context, table, grpc.StatusCode.NOT_FOUND,
                              f"model {spec.name!r} is not routed here; this router serves {table.public_model!r}",
                              rid)
        forced = metadata.get(table.config.override_header or "") or None
        choice = spec.WhichOneof("version_choice")
        if choice is not None:
            asked = str(spec.version.value) if choice == "version" else spec.version_label
            pinned = table.by_version.get(asked)
            if pinned is None:
                await self._abort(context, table, grpc.StatusCode.NOT_FOUND,
                                  f"version {asked!r} is not routed here; routed versions: {sorted(table.by_version)}",
                                  rid)
            forced = forced or pinned
        key = metadata.get(table.config.sticky.header or "") or None
        try:
            decision = table.policy.choose(RouteRequest(rid, key, forced))
        except UnknownVariantError:
            await self._abort(context, table, grpc.StatusCode.INVALID_ARGUMENT,
                              f"{table.config.override_header}: unknown variant {forced!r}; "
                              f"variants: {list(table.variants)}", rid)
        chosen = table.variants[decision.variant]
        chosen.metrics.decision(decision.reason)
        served, answer, latency, failures, passthrough = await self._route(table, chosen, message, rid)
        if table.learns and passthrough is None:
            router._dirty = True
            if served is chosen:
                router.pending.add(rid, chosen.name, key, table.epoch)
            else:
                router._settle_failed(table, chosen, rid)
        table.policy.on_result(decision, rid, served is chosen, latency)
        table.request_seconds.observe(time.perf_counter() - started)
        if passthrough is not None:  # the variant's answer to a bad request: the client's mistake
            assert served is not None
            served.metrics.request(_code_status(passthrough.code))
            await context.abort(passthrough.code, passthrough.details,
                                trailing_metadata=(("x-request-id", rid), ("x-variant", served.name)))
        if answer is None:
            text = "; ".join(f"{name}: {why}" for name, why in failures)
            await self._abort(context, table, grpc.StatusCode.UNAVAILABLE, f"no variant could answer: {text}", rid)
        assert served is not None
        served.metrics.request(200)
        version = served.cfg.version if served.cfg.version is not None else "default"
        context.set_trailing_metadata((("x-request-id", rid), ("x-variant", served.name),
                                       ("x-model-version", f"{served.cfg.model}:{version}")))
        return answer

    async def _route(self, table: RouteTable, chosen: Variant, message: Any, rid: str
                     ) -> tuple[Variant | None, bytes | None, float, list[tuple[str, str]], _Failed | None]:
        detector = self.router.detector
        fallback = table.fallback
        first = chosen
        if chosen is not fallback and detector.is_ejected(chosen.name) and not detector.is_ejected(fallback.name):
            metrics.FAILOVER.labels(chosen.name, fallback.name, "ejected").inc()
            first = fallback
        failures: list[tuple[str, str]] = []
        for variant in (first, fallback) if first is not fallback else (first,):
            if variant is fallback and variant is not first:
                metrics.FAILOVER.labels(first.name, fallback.name, "error").inc()
            t0 = time.perf_counter()
            try:
                answer = await self._call(variant, message, rid)
            except _Failed as exc:
                if exc.code not in FAILOVER_CODES:
                    detector.success(variant.name)  # alive; the request was bad
                    return variant, None, time.perf_counter() - t0, failures, exc
                variant.metrics.upstream_error(f"grpc_{exc.code.name.lower()}")
                detector.failure(variant.name)
                failures.append((variant.name, f"{exc.code.name}: {exc.details}"))
                continue
            latency = time.perf_counter() - t0
            variant.metrics.upstream_seconds.observe(latency)
            detector.success(variant.name)
            return variant, answer, latency, failures, None
        return None, None, 0.0, failures, None

    async def _call(self, variant: Variant, message: Any, rid: str) -> bytes:
        address = variant.cfg.grpc
        if address is None:
            raise _Failed(grpc.StatusCode.UNAVAILABLE, f"variant {variant.name!r} has no grpc address in the config")
        spec = message.model_spec
        spec.name = variant.cfg.model
        if isinstance(variant.cfg.version, int):
            spec.version.value = variant.cfg.version
        elif isinstance(variant.cfg.version, str):
            spec.version_label = variant.cfg.version
        else:
            spec.ClearField("version")
            spec.ClearField("version_label")
        try:
            return await self._stub(address)(message.SerializeToString(), timeout=variant.timeout_s,
                                             metadata=(("x-request-id", rid),))
        except grpc.aio.AioRpcError as exc:
            raise _Failed(exc.code(), exc.details() or "") from None

    async def _abort(self, context: grpc.aio.ServicerContext, table: RouteTable, code: grpc.StatusCode,
                     details: str, rid: str) -> None:
        table.unrouted.request(_code_status(code))
        await context.abort(code, details, trailing_metadata=(("x-request-id", rid),))


def _code_status(code: grpc.StatusCode) -> int:
    """The HTTP status equivalent of a gRPC code, for `router_requests_total{status}`."""
    return {
        grpc.StatusCode.OK: 200, grpc.StatusCode.INVALID_ARGUMENT: 400, grpc.StatusCode.NOT_FOUND: 404,
        grpc.StatusCode.RESOURCE_EXHAUSTED: 429, grpc.StatusCode.FAILED_PRECONDITION: 400,
        grpc.StatusCode.UNAUTHENTICATED: 401, grpc.StatusCode.PERMISSION_DENIED: 403,
        grpc.StatusCode.UNAVAILABLE: 503, grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    }.get(code, 500)
