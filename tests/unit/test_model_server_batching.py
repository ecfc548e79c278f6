"""Dynamic batching in-process: coalescing, each caller's own rows, bounded queue, draining on close."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from services.core.errors import Overloaded, Unavailable
from services.core.runtime import OnnxModel, Prediction
from services.model_server.batching import Batcher
from services.model_server.config import BatchingConfig
from services.model_server.metrics import VersionMetrics


class CountingModel:
    """An OnnxModel wrapper that records the size of every ONNX Runtime call."""

    def __init__(self, model: OnnxModel) -> None:
        self.inner = model
        self.name, self.version, self.source = model.name, model.version, model.source
        self.calls: list[int] = []

    def predict_sync(self, x: np.ndarray) -> Prediction:
        self.calls.append(x.shape[0])
        return self.inner.predict_sync(x)


@pytest.fixture(scope="module")
def model(model_repo) -> OnnxModel:
    m = OnnxModel.from_dir(model_repo / "wine" / "2")  # the 200-tree forest
    m.load_sync()
    return m


@pytest.fixture(scope="module")
def rows(model_repo) -> np.ndarray:
    from services.stack.demo_common import load_holdout

    _, x, _ = load_holdout(model_repo / "wine" / "2" / "holdout.csv")
    return x.astype(np.float32)


def make(model, executor=None, **cfg) -> tuple[Batcher, CountingModel]:
    counting = CountingModel(model)
    config = BatchingConfig(enabled=True, **cfg)
    return Batcher(counting, config, VersionMetrics("wine", 2), executor, retry_after_s=2.0), counting


@pytest.mark.parametrize("in_thread", [False, True], ids=["inline", "thread"])
def test_concurrent_requests_of_different_sizes_each_get_their_own_rows(model, rows, in_thread):
    rng = np.random.default_rng(7)
    requests = []
    for _ in range(120):
        n = int(rng.integers(1, 9))
        requests.append(rows[rng.integers(0, len(rows), n)])
    want = [model.predict_sync(x) for x in requests]

    async def scenario():
        with ThreadPoolExecutor(1) as pool:
            batcher, counting = make(model, pool, max_rows=32, max_delay_s=0.02, max_queue=1000, in_thread=in_thread)
            batcher.start()
            got = await asyncio.gather(*(batcher.submit(x) for x in requests))
            await batcher.close()
        return got, counting.calls

    got, calls = asyncio.run(scenario())
    for (labels, proba), expected, x in zip(got, want, requests, strict=True):
        assert labels.shape == (len(x),) and proba.shape == (len(x), 3)
        np.testing.assert_array_equal(labels, expected.labels)
        np.testing.assert_allclose(proba, expected.probabilities, rtol=0, atol=1e-6)
    assert sum(calls) == sum(len(x) for x in requests)  # every row computed exactly once
    assert len(calls) < len(requests)  # requests were coalesced
    assert max(calls) <= 32  # never more than max_rows in one call


def test_a_request_larger_than_max_rows_runs_alone(model, rows):
    async def scenario():
        batcher, counting = make(model, max_rows=4, max_delay_s=0.0, in_thread=False)
        batcher.start()
        big, small = rows[:10], rows[10:12]
        got = await asyncio.gather(batcher.submit(big), batcher.submit(small))
        await batcher.close()
        return got, counting.calls

    (big_out, small_out), calls = asyncio.run(scenario())
    assert calls == [10, 2]
    np.testing.assert_array_equal(big_out[0], model.predict_sync(rows[:10]).labels)
    np.testing.assert_array_equal(small_out[0], model.predict_sync(rows[10:12]).labels)


def test_full_queue_sheds_with_overloaded_and_keeps_serving_the_rest(model, rows):
    async def scenario():
        batcher, _ = make(model, max_rows=64, max_delay_s=0.05, max_queue=3, in_thread=False)
        batcher.start()
        results = await asyncio.gather(*(batcher.submit(rows[i : i + 1]) for i in range(10)),
                                       return_exceptions=True)
        await batcher.close()
        return results

    results = asyncio.run(scenario())
    served = [r for r in results if isinstance(r, tuple)]
    shed = [r for r in results if isinstance(r, Overloaded)]
    assert len(served) == 3 and len(shed) == 7 and len(served) + len(shed) == 10
    assert shed[0].retry_after_s == 2.0 and "queue is full" in shed[0].message
    assert shed[0].http_status == 503 and shed[0].grpc_code.name == "RESOURCE_EXHAUSTED"


def test_close_runs_everything_already_queued_then_refuses(model, rows):
    async def scenario():
        batcher, counting = make(model, max_rows=64, max_delay_s=10.0, max_queue=100, in_thread=True)
        batcher.start()
        pending = [asyncio.ensure_future(batcher.submit(rows[i : i + 2])) for i in range(5)]
        await asyncio.sleep(0)  # all five are queued; the 10 s delay has not passed
        assert batcher.depth == 5
        await batcher.close()  # must not wait for the delay: it flushes
        done = [p.result() for p in pending]
        with pytest.raises(Unavailable):
            await batcher.submit(rows[:1])
        return done, counting.calls

    done, calls = asyncio.run(scenario())
    assert calls == [10]
    for i, (labels, _) in enumerate(done):
        np.testing.assert_array_equal(labels, model.predict_sync(rows[i : i + 2]).labels)


def test_a_cancelled_caller_does_not_disturb_the_others(model, rows):
    async def scenario():
        batcher, counting = make(model, max_rows=64, max_delay_s=0.05, in_thread=False)
        batcher.start()
        keep = asyncio.ensure_future(batcher.submit(rows[:3]))
        gone = asyncio.ensure_future(batcher.submit(rows[3:5]))
        await asyncio.sleep(0)
        gone.cancel()
        labels, _ = await keep
        await batcher.close()
        return labels, counting.calls

    labels, calls = asyncio.run(scenario())
    np.testing.assert_array_equal(labels, model.predict_sync(rows[:3]).labels)
    assert calls == [3]


# -- max delay 0 (the default): no timer; a lone request runs at once ----------------------------


def test_default_config_has_no_timer():
    assert BatchingConfig().max_delay_s == 0.0


def test_a_lone_request_runs_at_once_inline(model, rows):
    async def scenario():
        batcher, counting = make(model, max_rows=64, max_delay_s=0.0)
        batcher.start()
        got = await batcher.submit(rows[:3])
        depth = batcher.depth
        await batcher.close()
        return got, depth, counting.calls

    (labels, proba), depth, calls = asyncio.run(scenario())
    assert calls == [3] and depth == 0
    np.testing.assert_array_equal(labels, model.predict_sync(rows[:3]).labels)


def test_with_no_delay_requests_arriving_together_are_still_coalesced(model, rows):
    requests = [rows[i : i + 1 + i % 3] for i in range(40)]

    async def scenario():
        batcher, counting = make(model, max_rows=64, max_delay_s=0.0)
        batcher.start()
        got = await asyncio.gather(*(batcher.submit(x) for x in requests))
        await batcher.close()
        return got, counting.calls

    got, calls = asyncio.run(scenario())
    assert calls[0] == len(requests[0])  # the first of the turn ran at once ...
    assert len(calls) < len(requests) and max(calls) <= 64  # ... the rest were batched
    assert sum(calls) == sum(len(x) for x in requests)
    for (labels, proba), x in zip(got, requests, strict=True):
        expected = model.predict_sync(x)
        np.testing.assert_array_equal(labels, expected.labels)
        np.testing.assert_allclose(proba, expected.probabilities, rtol=0, atol=1e-6)


def test_a_next_turn_request_runs_at_once_again(model, rows):
    async def scenario():
        batcher, counting = make(model, max_rows=64, max_delay_s=0.0)
        batcher.start()
        for i in range(5):
            await batcher.submit(rows[i : i + 1])
            await asyncio.sleep(0)
        await batcher.close()
        return counting.calls

    assert asyncio.run(scenario()) == [1] * 5


@pytest.mark.parametrize("in_thread", [False, True], ids=["inline", "thread"])
def test_a_request_of_max_rows_never_waits_for_the_delay(model, rows, in_thread):
    async def scenario():
        with ThreadPoolExecutor(1) as pool:
            batcher, counting = make(model, pool, max_rows=4, max_delay_s=10.0, in_thread=in_thread)
            batcher.start()
            labels, _ = await asyncio.wait_for(batcher.submit(rows[:6]), timeout=2.0)
            await batcher.close()
        return labels, counting.calls

    labels, calls = asyncio.run(scenario())
    assert calls == [6]
    np.testing.assert_array_equal(labels, model.predict_sync(rows[:6]).labels)


def test_queue_wait_is_observed_for_every_request_inline_or_queued(model, rows):
    from prometheus_client import REGISTRY

    def count() -> float:
        return REGISTRY.get_sample_value("model_server_queue_wait_seconds_count",
                                         {"model_name": "wine", "model_version": "2"}) or 0.0

    async def scenario():
        batcher, _ = make(model, max_rows=64, max_delay_s=0.0)
        batcher.start()
        await asyncio.gather(*(batcher.submit(rows[i : i + 1]) for i in range(10)))
        await batcher.close()

    before = count()
    asyncio.run(scenario())
    assert count() - before == 10
