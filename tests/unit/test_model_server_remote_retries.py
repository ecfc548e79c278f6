"""The remote app's retry policy: bounded, exponential backoff with full jitter, on UNAVAILABLE only."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from services.apps.remote import _rest_error, _Retryable, with_retries
from services.core.errors import Overloaded, ServingError, Unavailable


class Flaky:
    def __init__(self, failures: list[Exception]) -> None:
        self.failures = failures
        self.calls = 0

    async def __call__(self) -> str:
        self.calls += 1
        if self.failures:
            raise self.failures.pop(0)
        return "ok"


def run_with(call, retries=2, base=0.1, cap=1.0):
    sleeps: list[float] = []

    async def fake_sleep(s: float) -> None:
        sleeps.append(s)

    async def go():
        return await with_retries(call, retries=retries, base_s=base, max_s=cap, sleep=fake_sleep)

    return asyncio.run(go()), sleeps


def unavailable() -> _Retryable:
    return _Retryable(Unavailable("down"))


def test_unavailable_is_retried_with_growing_jittered_backoff():
    call = Flaky([unavailable(), unavailable()])
    result, sleeps = run_with(call, retries=2, base=0.1, cap=1.0)
    assert result == "ok" and call.calls == 3
    assert len(sleeps) == 2 and 0 <= sleeps[0] <= 0.1 and 0 <= sleeps[1] <= 0.2


def test_retries_are_bounded_and_the_last_error_surfaces():
    call = Flaky([unavailable() for _ in range(10)])
    with pytest.raises(Unavailable, match="down"):
        run_with(call, retries=3, base=0.5, cap=0.6)
    assert call.calls == 4


def test_backoff_is_capped():
    call = Flaky([unavailable() for _ in range(6)])
    _, sleeps = run_with(call, retries=6, base=0.5, cap=0.6)
    assert all(0 <= s <= 0.6 for s in sleeps)


@pytest.mark.parametrize("error", [Overloaded("shed"), ServingError("boom"), Unavailable("deadline")])
def test_nothing_else_is_retried(error):
    call = Flaky([error])
    with pytest.raises(type(error)):
        run_with(call)
    assert call.calls == 1


def test_rest_errors_map_to_retry_or_not():
    shed = httpx.Response(503, json={"error": "queue full", "code": "overloaded"}, headers={"retry-after": "3"})
    assert isinstance(_rest_error(shed), Overloaded) and _rest_error(shed).retry_after_s == 3.0
    down = httpx.Response(503, json={"error": "not ready", "code": "unavailable"})
    assert isinstance(_rest_error(down), _Retryable)
    missing = httpx.Response(404, json={"error": "model 'x' is not served here", "code": "not_found"})
    assert isinstance(_rest_error(missing), Unavailable) and "not served" in _rest_error(missing).message
    assert isinstance(_rest_error(httpx.Response(500, text="<html>")), ServingError)
