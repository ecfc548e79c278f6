"""Prometheus metrics of the model server (exposed on the REST port at /metrics).

    model_server_requests_total{model_name, model_version, protocol, status}   counter
    model_server_request_seconds{model_name, model_version, protocol}          histogram, parse to response
    model_server_queue_wait_seconds{model_name, model_version}                 histogram, batching queue wait
    model_server_inference_seconds{model_name, model_version}                  histogram, one ONNX Runtime call
    model_server_batch_size{model_name, model_version}                         histogram, rows per ONNX Runtime call
    model_server_queue_depth{model_name, model_version}                        gauge, requests waiting to be batched
    model_server_model_version_ready{model_name, model_version}                gauge, 1 while a version serves
    model_server_model_loads_total{model_name, outcome}                        counter, loaded | failed | unloaded
    model_server_out_of_range_values_total{model_name, model_version}          counter, range policy `flag`

`protocol` is `rest_v2` (KServe V2 REST), `rest_v1` (TF Serving REST), `grpc` (TF Serving gRPC) or
`grpc_v2` (Open Inference Protocol / KServe V2 gRPC); `status` is `ok` or
the error code of `services.core.errors` (`invalid_input`, `not_found`, `overloaded`, ...), the
same across protocols. Requests for a model that does not exist are counted under
model_name="" so a client cannot grow the label set.

The per-request path never calls `.labels()`: `VersionMetrics` resolves the children once per
loaded version and protocol.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

PROTOCOLS = ("rest_v2", "rest_v1", "grpc", "grpc_v2")

LATENCY_BUCKETS = (
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)

REQUESTS = Counter(
    "model_server_requests",
    "Inference requests by model, version, protocol and outcome.",
    ["model_name", "model_version", "protocol", "status"],
)
REQUEST_SECONDS = Histogram(
    "model_server_request_seconds",
    "Time to answer an inference request, from parsed request to serialized response.",
    ["model_name", "model_version", "protocol"],
    buckets=LATENCY_BUCKETS,
)
QUEUE_WAIT_SECONDS = Histogram(
    "model_server_queue_wait_seconds",
    "Time a request waited in the dynamic-batching queue before its batch started.",
    ["model_name", "model_version"],
    buckets=LATENCY_BUCKETS,
)
INFERENCE_SECONDS = Histogram(
    "model_server_inference_seconds",
    "Duration of one ONNX Runtime call (one request, or one coalesced batch).",
    ["model_name", "model_version"],
    buckets=LATENCY_BUCKETS,
)
BATCH_SIZE = Histogram(
    "model_server_batch_size",
    "Rows per ONNX Runtime call.",
    ["model_name", "model_version"],
    buckets=BATCH_BUCKETS,
)
QUEUE_DEPTH = Gauge(
    "model_server_queue_depth",
    "Requests waiting in the dynamic-batching queue.",
    ["model_name", "model_version"],
)
VERSION_READY = Gauge(
    "model_server_model_version_ready",
    "1 while a model version is loaded and serving.",
    ["model_name", "model_version"],
)
MODEL_LOADS = Counter(
    "model_server_model_loads",
    "Model version life-cycle events: loaded, failed (load refused; old versions keep serving), unloaded.",
    ["model_name", "outcome"],
)
OUT_OF_RANGE = Counter(
    "model_server_out_of_range_values",
    "Input values outside the training range (plus margin), counted under range policy `flag`.",
    ["model_name", "model_version"],
)


def count_error(model_name: str, model_version: str, protocol: str, code: str) -> None:
    """Errors are the rare path: a `.labels()` lookup here is fine."""
    REQUESTS.labels(model_name, model_version, protocol, code).inc()


class ProtocolMetrics:
    """The children one protocol's successful requests touch, resolved once."""

    __slots__ = ("ok", "seconds")

    def __init__(self, name: str, version: str, protocol: str) -> None:
        self.ok = REQUESTS.labels(name, version, protocol, "ok")
        self.seconds = REQUEST_SECONDS.labels(name, version, protocol)


class VersionMetrics:
    """Label children of one loaded model version, resolved when it loads."""

    def __init__(self, name: str, version: int) -> None:
        v = str(version)
        self.name, self.version = name, v
        self.protocols = {p: ProtocolMetrics(name, v, p) for p in PROTOCOLS}
        self.queue_wait = QUEUE_WAIT_SECONDS.labels(name, v)
        self.inference = INFERENCE_SECONDS.labels(name, v)
        self.batch_size = BATCH_SIZE.labels(name, v)
        self.queue_depth = QUEUE_DEPTH.labels(name, v)
        self.out_of_range = OUT_OF_RANGE.labels(name, v)

    def error(self, protocol: str, code: str) -> None:
        count_error(self.name, self.version, protocol, code)

    def set_ready(self, ready: bool) -> None:
        if ready:
            VERSION_READY.labels(self.name, self.version).set(1)
        else:
            try:
                VERSION_READY.remove(self.name, self.version)
            except KeyError:
                pass
            try:
                QUEUE_DEPTH.remove(self.name, self.version)
            except KeyError:
                pass
