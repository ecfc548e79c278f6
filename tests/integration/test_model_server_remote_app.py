"""The model-as-service pattern as `make up` starts it: model server, then the app calling it."""

from __future__ import annotations

import httpx
import pytest

from services.stack.patterns import model_as_service
from tests.integration.model_server_helpers import Reference, assert_same_predictions


@pytest.mark.parametrize("protocol", ["grpc", "rest"])
def test_app_answers_equal_onnx_runtime_and_name_the_served_version(start_service, holdout, protocol):
    stack = model_as_service("breast-cancer", protocol=protocol)
    server, app = stack.processes
    for proc in stack.processes:
        start_service(proc)
    assert set(stack.endpoints) == {"app", "model-server-rest", "model-server-grpc"}
    names, x, _ = holdout
    want_labels, want_proba = Reference()("breast-cancer", 2, x)
    with httpx.Client(base_url=stack.endpoints["app"], timeout=10) as client:
        labels, proba = [], []
        for start in range(0, len(x), 25):
            r = client.post("/predict", json={"instances": x[start : start + 25].tolist()})
            assert r.status_code == 200, r.text
            body = r.json()
            assert (body["model_name"], body["model_version"]) == ("breast-cancer", 2)
            assert r.headers["x-model-version"] == "breast-cancer:2"
            labels += body["labels"]
            proba += body["probabilities"]
        assert_same_predictions(labels, proba, want_labels, want_proba)
        by_name = client.post("/predict", json={"instances": [dict(zip(names, x[0].tolist(), strict=True))]})
        assert by_name.json()["labels"] == [int(want_labels[0])]

        # A client mistake is caught by the app's own contract check: 400, and no call to the server.
        before = httpx.get(f"{stack.endpoints['model-server-rest']}/metrics").text
        bad = client.post("/predict", json={"instances": [[1.0] * 29]})
        assert bad.status_code == 400 and bad.json()["field"] == "instances[0]"
        after = httpx.get(f"{stack.endpoints['model-server-rest']}/metrics").text
        assert _served(after) == _served(before)

        # Model server gone: bounded retries, then 503 (never a hang, never a 500).
        server.stop()
        down = client.post("/predict", json={"instances": [x[0].tolist()]})
        assert down.status_code == 503, down.text
        assert down.json()["code"] == "unavailable"
        assert client.get("/healthz").status_code == 200


def _served(metrics_text: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    return sum(s.value for f in text_string_to_metric_families(metrics_text) for s in f.samples
               if s.name == "model_server_requests_total")
