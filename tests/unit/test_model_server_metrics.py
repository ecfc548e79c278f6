"""The model server's /metrics after real traffic: the documented series exist and promtool accepts them."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from services.model_server.repository import Registry
from services.model_server.rest import build_rest_app
from services.model_server.settings import ModelServerSettings
from services.stack import promtool
from tests.integration.model_server_helpers import copy_repository

EXPECTED = {
    "model_server_requests": "counter",
    "model_server_request_seconds": "histogram",
    "model_server_queue_wait_seconds": "histogram",
    "model_server_inference_seconds": "histogram",
    "model_server_batch_size": "histogram",
    "model_server_queue_depth": "gauge",
    "model_server_model_version_ready": "gauge",
    "model_server_model_loads": "counter",
}


def samples_of(text: str) -> dict[tuple, float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(text) for s in f.samples}


@pytest.fixture(scope="module")
def traffic(tmp_path_factory) -> tuple[str, str]:
    """(/metrics before, /metrics after) some traffic; other tests in this process may share the registry."""
    repo = copy_repository(tmp_path_factory.mktemp("repo"), {"breast-cancer": [2], "wine": [2]})
    (repo / "wine" / "config.yaml").write_text("batching: {enabled: true, max_delay_ms: 1}\n")

    async def scenario() -> str:
        reg = Registry(ModelServerSettings(model_repository=repo, poll_interval_s=0))
        await reg.start()
        try:
            app = build_rest_app(reg, max_body_bytes=1 << 20)
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
                before = (await client.get("/metrics")).text
                for model, width in (("breast-cancer", 30), ("wine", 13)):
                    body = {"inputs": [{"name": "input", "shape": [2, width], "datatype": "FP32",
                                        "data": [0.5] * (2 * width)}]}
                    assert (await client.post(f"/v2/models/{model}/infer", json=body)).status_code == 200
                    bad = {"inputs": [{"name": "x", "shape": [1, width], "datatype": "FP32", "data": [0.5] * width}]}
                    assert (await client.post(f"/v2/models/{model}/infer", json=bad)).status_code == 400
                assert (await client.post("/v2/models/nope/infer", json={})).status_code == 404
                tf = await client.post("/v1/models/wine:predict", json={"instances": [[1.0] * 13]})
                assert tf.status_code == 200
                return before, (await client.get("/metrics")).text
        finally:
            await reg.stop()

    return asyncio.run(scenario())


@pytest.fixture(scope="module")
def exposition(traffic) -> str:
    return traffic[1]


def test_documented_series_exist_with_their_labels(traffic):
    before, after = samples_of(traffic[0]), samples_of(traffic[1])
    families = {f.name: f for f in text_string_to_metric_families(traffic[1])}
    for name, kind in EXPECTED.items():
        assert name in families and families[name].type == kind, name

    def value(name, **labels):
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0.0) - before.get(key, 0.0)

    ok = dict(model_name="wine", model_version="2", protocol="rest_v2", status="ok")
    assert value("model_server_requests_total", **ok) == 1
    assert value("model_server_requests_total", **{**ok, "status": "invalid_input"}) == 1
    assert value("model_server_requests_total", model_name="", model_version="", protocol="rest_v2",
                 status="not_found") == 1  # an unknown model never becomes a label value
    assert value("model_server_requests_total", **{**ok, "protocol": "rest_v1"}) == 1
    assert value("model_server_queue_wait_seconds_count", model_name="wine", model_version="2") == 2  # batched
    assert value("model_server_queue_wait_seconds_count", model_name="breast-cancer", model_version="2") == 0
    assert value("model_server_batch_size_sum", model_name="breast-cancer", model_version="2") == 2
    assert after[("model_server_model_loads_total", (("model_name", "wine"), ("outcome", "loaded")))] >= 1
    assert after[("model_server_model_version_ready", (("model_name", "wine"), ("model_version", "2")))] == 1


def test_prometheus_client_parser_accepts_it(exposition):
    assert sum(1 for _ in text_string_to_metric_families(exposition)) >= len(EXPECTED)


def test_promtool_check_metrics_accepts_it(exposition):
    if promtool.path() is None:
        pytest.fail("promtool is not built: run `make promtool` (make test builds it)")
    result = promtool.check_metrics(exposition)
    assert result.returncode == 0, result.stdout.decode() + result.stderr.decode()
