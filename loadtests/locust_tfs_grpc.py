"""Locust: TensorFlow Serving gRPC `PredictionService/Predict`.

    .venv/bin/python -m locust -f loadtests/locust_tfs_grpc.py --headless --host 127.0.0.1:8500 \
        --model wine --model-version 2 --load-profile batched

Locust has no gRPC client of its own: `GrpcUser` opens one channel per user through
`LocustInterceptor`, a client interceptor that times every call and fires Locust's `request`
event, so gRPC calls land in the same statistics as HTTP ones. grpcio runs under gevent
(`grpc.experimental.gevent.init_gevent()`), as Locust's users are greenlets. `--host` is
`host:port` (a `grpc://` prefix is accepted). The messages are the model server's wire-compatible
TF Serving protos, so no TensorFlow is needed.

`TfsPredictUser` sends the holdout rows in turn and counts the accuracy of the answers (per answering
variant behind the router: its `x-variant` reply metadata); `TfsOneRow`
sends one row per request, `TfsBatch` client-side batches of `--batch-rows`. Statistics entries are
named `TFS Predict <model>:<version> x<rows>` (the interceptor's `label`). With `--ceiling` the same
requests go to `loadtests/ceiling.py grpc`, which answers every call with an empty message.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

# Locust imports a locustfile by path: make `loadtests` and `services` importable from the repo root.
if str(Path(__file__).resolve().parents[1]) not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import grpc  # noqa: E402
import grpc.experimental.gevent as grpc_gevent  # noqa: E402
from locust import User, constant, task  # noqa: E402
from locust.exception import LocustError  # noqa: E402

from loadtests.locust_support import QUALITY, Samples, model_from, option, profile_shape, rows_of  # noqa: E402
from loadtests.payloads import tfs_labels, tfs_predict_request  # noqa: E402
from services.protocols.tfs import prediction_service_pb2_grpc  # noqa: E402

grpc_gevent.init_gevent()


class LocustInterceptor(grpc.UnaryUnaryClientInterceptor):
    """Times each unary call and reports it to Locust as a `grpc` request named `label` (default: the method)."""

    def __init__(self, environment, label: str | None = None) -> None:
        self.environment = environment
        self.label = label

    def intercept_unary_unary(self, continuation, client_call_details, request):
        started = time.perf_counter()
        response, exception, length = None, None, 0
        try:
            response = continuation(client_call_details, request)
            length = response.result().ByteSize()
        except grpc.RpcError as exc:
            exception = exc
        self.environment.events.request.fire(
            request_type="grpc",
            name=self.label or client_call_details.method,
            response_time=(time.perf_counter() - started) * 1000,
            response_length=length,
            response=response,
            context=None,
            exception=exception,
        )
        return response


class GrpcUser(User):
    """Abstract: a user with a gRPC `stub` (of `stub_class`) on its own intercepted channel."""

    abstract = True
    stub_class: type | None = None

    def __init__(self, environment) -> None:
        super().__init__(environment)
        if not self.host:
            raise LocustError("give the gRPC target with --host host:port")
        if self.stub_class is None:
            raise LocustError(f"{type(self).__name__} sets no stub_class")
        target = self.host.removeprefix("grpc://").removeprefix("http://").rstrip("/")
        self.interceptor = LocustInterceptor(environment)
        self._channel = grpc.intercept_channel(grpc.insecure_channel(target), self.interceptor)
        self.stub = self.stub_class(self._channel)

    def on_stop(self) -> None:
        self._channel.close()


class TfsPredictUser(GrpcUser):
    abstract = True
    stub_class = prediction_service_pb2_grpc.PredictionServiceStub
    batch = False
    wait_time = constant(0)
    timeout_s = 10.0

    def on_start(self) -> None:
        model = model_from(self.environment)
        self.rows = rows_of(self.environment, self.batch)
        self.ceiling = option(self.environment, "ceiling", False)
        self.samples = Samples(model, self.rows, tfs_predict_request, start=id(self))
        self.interceptor.label = f"TFS Predict {model.name}:{model.version} x{self.rows}"

    @task
    def predict(self) -> None:
        request, truth = self.samples.next()
        try:
            response, call = self.stub.Predict.with_call(request, timeout=self.timeout_s)
        except grpc.RpcError:
            return  # already reported as a failure by the interceptor
        if self.ceiling:
            return
        try:
            # the router's gRPC front names the answering variant in the reply metadata, as REST's headers do
            variant = dict(call.initial_metadata() or ()).get("x-variant")
            QUALITY.add(tfs_labels(response, self.rows), truth, variant)
        except ValueError as exc:
            # The interceptor counted the call; an answer without the right labels is a failure too.
            self.environment.events.request.fire(request_type="grpc", name=f"{self.interceptor.label} (bad answer)",
                                                 response_time=0, response_length=0, response=response,
                                                 context=None, exception=exc)


class TfsOneRow(TfsPredictUser):
    batch = False


class TfsBatch(TfsPredictUser):
    """Client-side batches: --batch-rows rows per request (default 64)."""

    batch = True


Profile = profile_shape(one_row=TfsOneRow, batch=TfsBatch)
