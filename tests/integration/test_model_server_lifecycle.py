"""The model server under change and load: hot-add while serving, batching over the wire, load
shedding, graceful shutdown with requests in flight. Every server here is a real process on a
private repository copy; waits are bounded and nothing asserts on elapsed time."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable

import grpc
import httpx
import numpy as np
import pytest

from services.protocols.tfs import (
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)
from services.protocols.tfs.tensors import from_numpy, to_numpy
from tests.integration.model_server_helpers import (
    Reference,
    add_version,
    assert_same_predictions,
    copy_repository,
    metric_value,
    running_server,
)

MODEL = "breast-cancer"


def wait_until(predicate: Callable[[], bool], what: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"gave up waiting for: {what}")


def v2_body(x: np.ndarray) -> dict:
    return {"inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}]}


def grpc_request(x: np.ndarray, version: int | None = None) -> predict_pb2.PredictRequest:
    req = predict_pb2.PredictRequest()
    req.model_spec.name = MODEL
    if version is not None:
        req.model_spec.version.value = version
    req.inputs["input"].CopyFrom(from_numpy(x.astype(np.float32)))
    return req


@pytest.fixture(scope="module")
def ref():
    return Reference()


# -- hot add ------------------------------------------------------------------------------------


class ClientLoop(threading.Thread):
    """Keeps predicting (default version) until stopped; records every outcome."""

    def __init__(self, call: Callable[[], tuple[bool, str]]) -> None:
        super().__init__(daemon=True)
        self.call = call
        self.stop = threading.Event()
        self.outcomes: list[tuple[bool, str]] = []

    def run(self) -> None:
        deadline = time.monotonic() + 120  # bounded even if the test never stops it
        while not self.stop.is_set() and time.monotonic() < deadline:
            try:
                self.outcomes.append(self.call())
            except Exception as exc:  # any failure is an outcome the test reports
                self.outcomes.append((False, repr(exc)))

    def versions(self) -> set[str]:
        return {v for ok, v in self.outcomes if ok}


def _clients(server, ref, row) -> tuple[list[ClientLoop], Callable[[], None]]:
    """A REST and a gRPC client loop on the default version, each checking its answers against ORT
    for the version the server says answered. Returns the loops and a closer."""
    http = httpx.Client(base_url=server.rest)
    channel = grpc.insecure_channel(server.grpc)
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)

    def rest_call() -> tuple[bool, str]:
        r = http.post(f"/v2/models/{MODEL}/infer", json=v2_body(row))
        if r.status_code != 200:
            return False, f"{r.status_code} {r.text}"
        body = r.json()
        want = ref(MODEL, int(body["model_version"]), row)[0]
        return list(body["outputs"][0]["data"]) == want.tolist(), body["model_version"]

    def grpc_call() -> tuple[bool, str]:
        response = stub.Predict(grpc_request(row), timeout=10)
        version = response.model_spec.version.value
        return to_numpy(response.outputs["label"]).tolist() == ref(MODEL, version, row)[0].tolist(), str(version)

    loops = [ClientLoop(rest_call), ClientLoop(grpc_call)]
    for loop in loops:
        loop.start()

    def close() -> None:
        for loop in loops:
            loop.stop.set()
        for loop in loops:
            loop.join(30)
        http.close()
        channel.close()

    return loops, close


def _more_traffic(loops: list[ClientLoop], what: str) -> None:
    seen = [len(lp.outcomes) for lp in loops]
    wait_until(lambda: all(len(lp.outcomes) > n + 20 for lp, n in zip(loops, seen, strict=True)), what)


def _states(server) -> dict[int, int]:
    with grpc.insecure_channel(server.grpc) as channel:
        req = get_model_status_pb2.GetModelStatusRequest()
        req.model_spec.name = MODEL
        return {s.version: s.state for s in
                model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(req).model_version_status}


END, AVAILABLE = get_model_status_pb2.ModelVersionStatus.END, get_model_status_pb2.ModelVersionStatus.AVAILABLE


def test_new_versions_are_hot_added_while_serving_and_the_oldest_unloaded(tmp_path, holdout, ref):
    repo = copy_repository(tmp_path / "repo", {MODEL: [1]})
    row = holdout[1][:3].astype(np.float32)
    with running_server(repo, tmp_path / "logs", poll_interval_s="0.2", batching="true",
                        batch_max_delay_ms="2") as server:
        loops, close = _clients(server, ref, row)
        try:
            wait_until(lambda: all(len(lp.outcomes) > 20 for lp in loops), "traffic on v1")
            add_version(repo, MODEL, 2)
            wait_until(lambda: all("2" in lp.versions() for lp in loops), "both clients answered by v2")
            add_version(repo, MODEL, 3)  # gate-failed: loaded, reachable by number, never the default
            wait_until(lambda: httpx.get(f"{server.rest}/v2/models/{MODEL}").json()["versions"] == ["2", "3"],
                       "latest:2 keeps v2 and v3, unloads v1")
            _more_traffic(loops, "traffic after the swap")
        finally:
            close()

        failures = [o for lp in loops for o in lp.outcomes if not o[0]]
        assert failures == [], failures[:5]
        for loop in loops:
            assert loop.versions() == {"1", "2"}  # the default moved 1 -> 2 and stayed on 2
            assert loop.outcomes[-1] == (True, "2")
        explicit = httpx.post(f"{server.rest}/v2/models/{MODEL}/versions/3/infer", json=v2_body(row))
        assert explicit.status_code == 200 and explicit.json()["model_version"] == "3"
        assert httpx.post(f"{server.rest}/v2/models/{MODEL}/versions/1/infer", json=v2_body(row)).status_code == 404
        assert _states(server) == {1: END, 2: AVAILABLE, 3: AVAILABLE}


@pytest.mark.parametrize("batching", ["true", "false"])
def test_the_version_in_use_is_swapped_out_under_traffic_without_a_failed_request(tmp_path, holdout, ref,
                                                                                   batching):
    """latest:1: the new version replaces the one every request is using; requests already queued
    for the old one (batching) or running on it finish before it is unloaded."""
    repo = copy_repository(tmp_path / "repo", {MODEL: [1]})
    row = holdout[1][:2].astype(np.float32)
    # With a 50 ms batching delay, the old version's queue almost always holds requests at the swap.
    with running_server(repo, tmp_path / "logs", poll_interval_s="0.1", version_policy="latest:1",
                        batching=batching, batch_max_delay_ms="50") as server:
        loops, close = _clients(server, ref, row)
        try:
            wait_until(lambda: all(len(lp.outcomes) > 20 for lp in loops), "traffic on v1")
            add_version(repo, MODEL, 2)
            wait_until(lambda: _states(server) == {1: END, 2: AVAILABLE}, "v2 in, v1 unloaded")
            _more_traffic(loops, "traffic after the swap")
        finally:
            close()
    failures = [o for lp in loops for o in lp.outcomes if not o[0]]
    assert failures == [], failures[:5]
    for loop in loops:
        assert loop.versions() == {"1", "2"} and loop.outcomes[-1] == (True, "2")


def test_a_skewed_version_is_refused_while_the_served_one_keeps_answering(tmp_path, holdout, ref):
    """The integration check in a running server: a real v2 whose holdout labels were altered is
    scored through the server's input path at load, refused as skew (GetModelStatus and the TF
    Serving REST status say so), and v1 keeps answering every request."""
    repo = copy_repository(tmp_path / "repo", {MODEL: [1]})
    row = holdout[1][:2].astype(np.float32)
    staging = add_version(tmp_path / "staging", MODEL, 2)
    header, *rows = (staging / "holdout.csv").read_text().splitlines()
    rows = [",".join([*r.split(",")[:-1], str(1 - int(r.split(",")[-1]))]) if i < 5 else r
            for i, r in enumerate(rows)]
    (staging / "holdout.csv").write_text("\n".join([header, *rows]) + "\n")
    with running_server(repo, tmp_path / "logs", poll_interval_s="0.1", version_policy="latest:1",
                        batching="true") as server:
        loops, close = _clients(server, ref, row)
        try:
            wait_until(lambda: all(len(lp.outcomes) > 20 for lp in loops), "traffic on v1")
            staging.rename(repo / MODEL / "2")  # the whole release appears at once
            wait_until(lambda: _states(server).get(2) == END, "v2 refused")
            _more_traffic(loops, "traffic after the refusal")
        finally:
            close()
        status = httpx.get(f"{server.rest}/v1/models/{MODEL}/versions/2").json()["model_version_status"][0]
        metrics = httpx.get(f"{server.rest}/metrics").text
    failures = [o for lp in loops for o in lp.outcomes if not o[0]]
    assert failures == [], failures[:5]
    assert all(lp.versions() == {"1"} for lp in loops)
    assert status["state"] == "END" and "training/serving skew" in status["status"]["error_message"]
    assert metric_value(metrics, "model_server_model_loads_total", model_name=MODEL, outcome="failed") == 1
    assert "model version refused" in server.proc.log_path.read_text()


# -- batching over the wire ---------------------------------------------------------------------


async def _rest(client: httpx.AsyncClient, x: np.ndarray) -> httpx.Response:
    return await client.post(f"/v2/models/{MODEL}/versions/2/infer", json=v2_body(x))


def test_concurrent_requests_of_different_sizes_each_get_their_own_rows(tmp_path, holdout, ref):
    repo = copy_repository(tmp_path / "repo", {MODEL: [2]})
    _, x, _ = holdout
    rng = np.random.default_rng(11)
    batches = [x[rng.integers(0, len(x), int(rng.integers(1, 9)))].astype(np.float32) for _ in range(160)]
    with running_server(repo, tmp_path / "logs", batching="true", batch_max_delay_ms="20",
                        batch_max_rows="64") as server:

        async def scenario():
            limits = httpx.Limits(max_connections=100)
            async with httpx.AsyncClient(base_url=server.rest, limits=limits, timeout=30) as client, \
                    grpc.aio.insecure_channel(server.grpc) as channel:
                stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
                rest = [_rest(client, b) for b in batches[:80]]
                grpc_calls = [stub.Predict(grpc_request(b, 2), timeout=30) for b in batches[80:]]
                return await asyncio.gather(*rest, *grpc_calls)

        before = httpx.get(f"{server.rest}/metrics").text
        results = asyncio.run(scenario())
        after = httpx.get(f"{server.rest}/metrics").text

    for batch, result in zip(batches, results, strict=True):
        want_labels, want_proba = ref(MODEL, 2, batch)
        if isinstance(result, httpx.Response):
            assert result.status_code == 200, result.text
            label, proba = result.json()["outputs"]
            got_labels, got_proba = label["data"], np.reshape(proba["data"], proba["shape"])
        else:
            got_labels, got_proba = to_numpy(result.outputs["label"]), to_numpy(result.outputs["probabilities"])
        assert len(got_labels) == len(batch)
        assert_same_predictions(got_labels, got_proba, want_labels, want_proba)

    def delta(name: str) -> float:
        labels = {"model_name": MODEL, "model_version": "2"}
        return (metric_value(after, name, **labels) or 0) - (metric_value(before, name, **labels) or 0)

    assert delta("model_server_batch_size_sum") == sum(len(b) for b in batches)  # every row once
    assert delta("model_server_batch_size_count") < len(batches)  # coalesced into fewer calls
    assert delta("model_server_queue_wait_seconds_count") == len(batches)


# -- load shedding ------------------------------------------------------------------------------


def test_full_queue_sheds_with_503_retry_after_and_resource_exhausted(tmp_path, holdout):
    repo = copy_repository(tmp_path / "repo", {MODEL: [2]})
    row = holdout[1][:1].astype(np.float32)
    with running_server(repo, tmp_path / "logs", batching="true", batch_max_queue="4",
                        batch_max_delay_ms="1000", retry_after_s="2") as server:

        async def scenario():
            async with httpx.AsyncClient(base_url=server.rest, limits=httpx.Limits(max_connections=100),
                                         timeout=30) as client, grpc.aio.insecure_channel(server.grpc) as channel:
                stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)

                async def grpc_call():
                    try:
                        await stub.Predict(grpc_request(row), timeout=30)
                        return grpc.StatusCode.OK
                    except grpc.aio.AioRpcError as exc:
                        return exc.code()

                # One burst per protocol, so each protocol sees both outcomes.
                rest = await asyncio.gather(*(_rest(client, row) for _ in range(30)))
                return rest + await asyncio.gather(*(grpc_call() for _ in range(30)))

        results = asyncio.run(scenario())
        metrics = httpx.get(f"{server.rest}/metrics").text

    rest, codes = results[:30], results[30:]
    statuses = [r.status_code for r in rest]
    assert set(statuses) <= {200, 503}, statuses
    assert set(codes) <= {grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED}, codes
    shed = [r for r in rest if r.status_code == 503]
    assert shed and 200 in statuses
    assert grpc.StatusCode.RESOURCE_EXHAUSTED in codes and grpc.StatusCode.OK in codes
    for r in shed:
        assert r.headers["retry-after"] == "2" and r.json()["code"] == "overloaded"
    n_shed = len(shed) + codes.count(grpc.StatusCode.RESOURCE_EXHAUSTED)
    counted = sum(metric_value(metrics, "model_server_requests_total", model_name=MODEL, model_version="2",
                               protocol=p, status="overloaded") or 0 for p in ("rest_v2", "grpc"))
    assert counted == n_shed


# -- graceful shutdown --------------------------------------------------------------------------


def test_sigterm_finishes_every_request_in_flight_and_exits_0(tmp_path, holdout, ref):
    repo = copy_repository(tmp_path / "repo", {MODEL: [2]})
    _, x, _ = holdout
    rows = [x[i : i + 1].astype(np.float32) for i in range(30)]
    with running_server(repo, tmp_path / "logs", batching="true", batch_max_delay_ms="1500",
                        batch_max_rows="256") as server:

        async def scenario():
            async with httpx.AsyncClient(base_url=server.rest, limits=httpx.Limits(max_connections=100),
                                         timeout=30) as client, grpc.aio.insecure_channel(server.grpc) as channel:
                stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
                calls = [asyncio.ensure_future(_rest(client, r)) for r in rows[:20]]
                calls += [asyncio.ensure_future(stub.Predict(grpc_request(r, 2), timeout=30)) for r in rows[20:]]

                async def queued() -> float:
                    r = await client.get("/metrics")
                    return metric_value(r.text, "model_server_queue_depth", model_name=MODEL, model_version="2") or 0

                deadline = time.monotonic() + 30
                while await queued() < len(rows):  # all 30 are inside the server, waiting for their batch
                    assert time.monotonic() < deadline, "requests never reached the batching queue"
                    await asyncio.sleep(0.02)
                server.proc.terminate()  # SIGTERM while every request is in flight
                return await asyncio.gather(*calls, return_exceptions=True)

        results = asyncio.run(scenario())
        exit_status = server.proc.popen.wait(30)

    assert exit_status == 0, server.proc.log_tail()
    for r, result in zip(rows, results, strict=True):
        assert not isinstance(result, BaseException), repr(result)
        if isinstance(result, httpx.Response):
            assert result.status_code == 200, result.text
            labels = result.json()["outputs"][0]["data"]
        else:
            labels = to_numpy(result.outputs["label"]).tolist()
        assert labels == ref(MODEL, 2, r)[0].tolist()
    log = server.proc.log_path.read_text()
    assert "shutting down" in log and "model server stopped" in log
