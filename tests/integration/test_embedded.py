"""The embedded app as a real process: predictions over HTTP equal ONNX Runtime's; bad input is 4xx."""

from __future__ import annotations

import json

import httpx
import numpy as np
import onnxruntime as ort
import pytest

from services.stack.process import ServiceProcess, free_port, http_ready


@pytest.fixture
def app_url(start_service) -> str:
    port = free_port()
    start_service(
        ServiceProcess(
            "embedded",
            ["-m", "services.apps.embedded"],
            env={"EMBEDDED_PORT": str(port), "EMBEDDED_MODEL_VERSION": "2", "EMBEDDED_MAX_BATCH_SIZE": "64",
                 "EMBEDDED_MAX_BODY_BYTES": "65536"},
            ready=http_ready(f"http://127.0.0.1:{port}/readyz"),
        )
    )
    return f"http://127.0.0.1:{port}"


def test_holdout_predictions_equal_onnx_runtime(app_url, model_repo, holdout):
    names, x, _ = holdout
    x32 = x.astype(np.float32)
    labels, proba = ort.InferenceSession(str(model_repo / "breast-cancer/2/model.onnx")).run(None, {"input": x32})
    with httpx.Client(base_url=app_url) as client:
        got_labels, got_proba = [], []
        for start in range(0, len(x), 50):  # batches by array
            r = client.post("/predict", json={"instances": x[start : start + 50].tolist()})
            assert r.status_code == 200, r.text
            body = r.json()
            assert (body["model_name"], body["model_version"]) == ("breast-cancer", 2)
            assert r.headers["x-model-version"] == "breast-cancer:2"
            got_labels += body["labels"]
            got_proba += body["probabilities"]
        # and one row by feature name
        named = client.post("/predict", json={"instances": [dict(zip(names, x[0].tolist(), strict=True))]})
        assert named.json()["labels"] == [int(labels[0])]
    np.testing.assert_array_equal(got_labels, labels)
    np.testing.assert_allclose(got_proba, proba, rtol=0, atol=1e-6)


def test_health_readiness_model_and_metrics(app_url):
    with httpx.Client(base_url=app_url) as client:
        assert client.get("/healthz").status_code == 200
        ready = client.get("/readyz").json()
        assert ready == {"status": "ready", "model_name": "breast-cancer", "model_version": 2}
        assert client.get("/model").json()["sha256"]
        client.post("/predict", json={"instances": [[1.0] * 30]})
        client.post("/predict", json={"instances": [[1.0] * 3]})
        text = client.get("/metrics").text
    assert 'app_requests_total{app="embedded",model_name="breast-cancer",model_version="2",status="200"} 1.0' in text
    assert 'status="400"} 1.0' in text
    assert 'app_model_info{app="embedded",model_name="breast-cancer",model_version="2"} 1.0' in text


@pytest.mark.parametrize(
    ("body", "status", "field", "words"),
    [
        (b'{"instances": [[NaN]]}', 400, "body", "not valid JSON"),
        (b"[1, 2]", 400, "body", "JSON object"),
        (b"", 400, "body", "empty"),
        (b'{"rows": []}', 400, "instances", '"instances"'),
        (b'{"instances": []}', 400, "instances", "empty"),
        (b'{"instances": [[1, 2, 3]]}', 400, "instances[0]", "3 values"),
        (b'{"instances": [{"mean radios": 1}]}', 400, "instances[0]", "unknown feature"),
        (b'{"instances": [[' + b"1e39," * 29 + b"1]]}", 400, "instances[0].mean radius", "finite"),
        (b'{"instances": [[' + b'"1",' * 29 + b"1]]}", 400, "instances[0][0]", "got str"),
        (json.dumps({"instances": [[1] * 30] * 65}).encode(), 413, "instances", "limit is 64"),
        (b'{"instances": "' + b"x" * 70000 + b'"}', 413, "body", "exceeds the limit"),
    ],
)
def test_bad_input_gets_a_4xx_naming_the_problem(app_url, body, status, field, words):
    r = httpx.post(f"{app_url}/predict", content=body, headers={"content-type": "application/json"})
    assert r.status_code == status, r.text
    err = r.json()
    assert err["field"] == field
    assert words in err["error"]


def test_chunked_oversized_body_is_refused_without_content_length(app_url):
    def chunks():
        yield b'{"instances": "'
        for _ in range(100):
            yield b"x" * 1000
        yield b'"}'

    r = httpx.post(f"{app_url}/predict", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413 and r.json()["field"] == "body"


def test_sigterm_drains_and_exits_zero(start_service):
    port = free_port()
    proc = start_service(
        ServiceProcess(
            "embedded",
            ["-m", "services.apps.embedded"],
            env={"EMBEDDED_PORT": str(port)},
            ready=http_ready(f"http://127.0.0.1:{port}/readyz"),
        )
    )
    assert httpx.post(f"http://127.0.0.1:{port}/predict", json={"instances": [[1.0] * 30]}).status_code == 200
    assert proc.stop() == 0
