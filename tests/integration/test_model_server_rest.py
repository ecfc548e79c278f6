"""The model server over REST, called with an independent KServe V2 client (tritonclient.http).

One server process for the module, on a private copy of the repository with a config.yaml
labelling breast-cancer v1 `stable` and v2 `canary`.
"""

from __future__ import annotations

import json

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from tests.integration.model_server_helpers import (
    Reference,
    assert_same_predictions,
    copy_repository,
    metric_value,
    running_server,
)

MODEL = "breast-cancer"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    repo = copy_repository(tmp_path_factory.mktemp("repo"))
    (repo / MODEL / "config.yaml").write_text("labels: {stable: 1, canary: 2}\n")
    with running_server(repo, tmp_path_factory.mktemp("logs"), max_batch_size="64",
                        max_body_bytes="65536") as s:
        yield s


@pytest.fixture(scope="module")
def client(server):
    c = triton.InferenceServerClient(url=server.rest.removeprefix("http://"), network_timeout=30.0)
    yield c
    c.close()


@pytest.fixture(scope="module")
def ref():
    return Reference()


def infer(client, x, model=MODEL, version="", binary=True, outputs=("label", "probabilities")):
    inp = triton.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x.astype(np.float32), binary_data=binary)
    wanted = [triton.InferRequestedOutput(name, binary_data=binary) for name in outputs]
    return client.infer(model, [inp], model_version=version, outputs=wanted)


def test_server_and_model_metadata(client):
    assert client.is_server_live() and client.is_server_ready()
    assert client.get_server_metadata()["extensions"] == ["binary_tensor_data"]
    meta = client.get_model_metadata(MODEL)
    assert meta["name"] == MODEL and meta["versions"] == ["1", "2", "3"]  # latest:2 plus the labelled v1
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 30]}]
    assert [o["name"] for o in meta["outputs"]] == ["label", "probabilities"]
    assert client.get_model_metadata(MODEL, "1")["parameters"]["version"] == "1"
    assert client.is_model_ready(MODEL) and client.is_model_ready(MODEL, "3")
    assert client.is_model_ready("wine", "2") and not client.is_model_ready("wine", "1")


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_holdout_answers_equal_in_process_onnx_runtime(client, ref, holdout, binary):
    _, x, _ = holdout
    want_labels, want_proba = ref(MODEL, 2, x)
    got_labels, got_proba = [], []
    for start in range(0, len(x), 40):
        result = infer(client, x[start : start + 40], binary=binary)
        response = result.get_response()
        assert (response["model_name"], response["model_version"]) == (MODEL, "2")
        got_labels.append(result.as_numpy("label"))
        got_proba.append(result.as_numpy("probabilities"))
    assert got_labels[0].dtype == np.int64 and got_proba[0].dtype == np.float32
    assert_same_predictions(np.concatenate(got_labels), np.concatenate(got_proba), want_labels, want_proba)


def test_one_row_per_request_by_number_and_by_label(client, ref, holdout):
    _, x, _ = holdout
    for version, label in (("1", "stable"), ("2", "canary"), ("3", None)):
        want_labels, want_proba = ref(MODEL, int(version), x[:5])
        for i in range(5):
            by_number = infer(client, x[i : i + 1], version=version)
            assert by_number.get_response()["model_version"] == version
            assert_same_predictions(by_number.as_numpy("label"), by_number.as_numpy("probabilities"),
                                    want_labels[i : i + 1], want_proba[i : i + 1])
        if label:
            by_label = infer(client, x[:5], version=label)
            assert by_label.get_response()["model_version"] == version
            assert_same_predictions(by_label.as_numpy("label"), by_label.as_numpy("probabilities"),
                                    want_labels, want_proba)


def test_output_selection_and_request_id(server, ref, holdout):
    _, x, _ = holdout
    body = {"id": "req-7", "inputs": [{"name": "input", "shape": [2, 30], "datatype": "FP64",
                                       "data": x[:2].tolist()}], "outputs": [{"name": "probabilities"}]}
    r = httpx.post(f"{server.rest}/v2/models/{MODEL}/versions/2/infer", json=body)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["id"] == "req-7" and [o["name"] for o in out["outputs"]] == ["probabilities"]
    np.testing.assert_allclose(np.reshape(out["outputs"][0]["data"], (2, 2)), ref(MODEL, 2, x[:2])[1], atol=1e-6)
    ints = {"inputs": [{"name": "input", "shape": [1, 30], "datatype": "INT64", "data": [1] * 30}]}
    assert httpx.post(f"{server.rest}/v2/models/{MODEL}/infer", json=ints).status_code == 200


def test_tf_serving_rest_predict_status_and_metadata(server, ref, holdout):
    _, x, _ = holdout
    want_labels, want_proba = ref(MODEL, 1, x[:3])
    rows = httpx.post(f"{server.rest}/v1/models/{MODEL}/labels/stable:predict", json={"instances": x[:3].tolist()})
    assert rows.status_code == 200, rows.text
    predictions = rows.json()["predictions"]
    assert_same_predictions([p["label"] for p in predictions], [p["probabilities"] for p in predictions],
                            want_labels, want_proba)
    cols = httpx.post(f"{server.rest}/v1/models/{MODEL}/versions/1:predict",
                      json={"signature_name": "serving_default", "inputs": {"input": x[:3].tolist()}})
    assert cols.status_code == 200, cols.text
    assert_same_predictions(cols.json()["outputs"]["label"], cols.json()["outputs"]["probabilities"],
                            want_labels, want_proba)
    named = httpx.post(f"{server.rest}/v1/models/{MODEL}/versions/1:predict",
                       json={"instances": [{"input": x[0].tolist()}]})
    assert named.json()["predictions"][0]["label"] == want_labels[0]
    status = httpx.get(f"{server.rest}/v1/models/{MODEL}").json()["model_version_status"]
    assert [(s["version"], s["state"]) for s in status] == [("1", "AVAILABLE"), ("2", "AVAILABLE"), ("3", "AVAILABLE")]
    meta = httpx.get(f"{server.rest}/v1/models/{MODEL}/metadata").json()
    sig = meta["metadata"]["signature_def"]["signature_def"]["serving_default"]
    assert sig["inputs"]["input"]["dtype"] == "DT_FLOAT" and set(sig["outputs"]) == {"label", "probabilities"}


# -- errors ---------------------------------------------------------------------------------


def v2(datatype: str, data: list, **extra) -> bytes:
    return json.dumps({"inputs": [{"name": "input", "shape": [1, 30], "datatype": datatype, "data": data}], **extra}
                      ).encode()


def triton_error(call) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as err:
        call()
    return err.value


def test_unknown_model_or_version_is_404(client, holdout):
    x = holdout[1][:1]
    err = triton_error(lambda: infer(client, x, model="nope"))
    assert err.status() == "404" and "'nope' is not served here" in err.message()
    err = triton_error(lambda: infer(client, x, version="9"))
    assert err.status() == "404" and "no loaded version 9" in err.message()
    err = triton_error(lambda: infer(client, x, version="beta"))
    assert err.status() == "404" and "no version label 'beta'" in err.message()
    assert triton_error(lambda: client.get_model_metadata("nope")).status() == "404"


def test_client_mistakes_are_400_naming_the_problem(client, holdout):
    x = holdout[1][:2].astype(np.float32)

    def send(name="input", data=x, datatype="FP32"):
        inp = triton.InferInput(name, list(data.shape), datatype)
        inp.set_data_from_numpy(data, binary_data=True)
        return client.infer(MODEL, [inp])

    err = triton_error(lambda: send(name="features"))
    assert err.status() == "400" and "unknown input 'features'" in err.message() and "'input'" in err.message()
    err = triton_error(lambda: send(data=x[:, :29]))
    assert err.status() == "400" and "shape [rows, 30], got [2, 29]" in err.message()
    err = triton_error(lambda: send(data=x.astype(np.float16), datatype="FP16"))
    assert err.status() == "400" and "datatype 'FP16' is not supported" in err.message()
    nan = x.copy()
    nan[1, 4] = np.nan
    err = triton_error(lambda: send(data=nan))
    assert err.status() == "400" and "inputs[0][1].mean smoothness is not a finite number" in err.message()
    err = triton_error(lambda: send(data=np.ones((65, 30), np.float32)))
    assert err.status() == "413" and "limit is 64" in err.message()


@pytest.mark.parametrize(
    ("path", "body", "status", "field", "words"),
    [
        ("/v2/models/breast-cancer/infer", b"{nope", 400, "body", "not valid JSON"),
        ("/v2/models/breast-cancer/infer", b"[1]", 400, "body", "JSON object"),
        ("/v2/models/breast-cancer/infer", b'{"inputs": []}', 400, "inputs", "non-empty list"),
        ("/v2/models/breast-cancer/infer",
         b'{"inputs": [{"name": "input", "shape": [1, 30], "datatype": "FP32", "data": [1, 2]}]}',
         400, "inputs[0].data", "has 2 values; shape [1, 30] needs 30"),
        ("/v2/models/breast-cancer/infer",
         v2("INT64", [1.5] * 30),
         400, "inputs[0].data", "must hold integers"),
        ("/v2/models/breast-cancer/infer",
         v2("FP32", ["1"] * 30),
         400, "inputs[0].data", "must hold numbers"),
        ("/v2/models/breast-cancer/infer",
         v2("FP32", [1e39] * 30),
         400, "inputs[0][0].mean radius", "not a finite number"),
        ("/v2/models/breast-cancer/infer",
         v2("FP32", [1] * 30, outputs=[{"name": "score"}]),
         400, "outputs[0].name", "unknown output 'score'"),
        ("/v2/models/breast-cancer/infer", b'{"inputs": "' + b"x" * 70000 + b'"}', 413, "body", "exceeds the limit"),
        ("/v1/models/breast-cancer:predict", b'{"rows": []}', 400, "body", '"instances"'),
        ("/v1/models/breast-cancer:predict", b'{"instances": [[1, 2]]}', 400, "instances[0]", "2 values"),
        ("/v1/models/breast-cancer:predict", b'{"signature_name": "x", "instances": [[1]]}', 400, "signature_name",
         "unknown signature_name"),
        ("/v1/models/nope:predict", b'{"instances": [[1]]}', 404, "model_name", "not served here"),
        ("/v1/models/breast-cancer/versions/9:predict", b'{"instances": [[1]]}', 404, "model_version", "version 9"),
    ],
)
def test_raw_bad_requests(server, path, body, status, field, words):
    r = httpx.post(server.rest + path, content=body, headers={"content-type": "application/json"})
    assert r.status_code == status, r.text
    err = r.json()
    assert err["field"] == field and words in err["error"], err


def test_metrics_count_requests_by_model_version_protocol_and_status(server, client, holdout):
    infer(client, holdout[1][:1], version="2")
    text = httpx.get(f"{server.rest}/metrics").text
    ok = metric_value(text, "model_server_requests_total", model_name=MODEL, model_version="2", protocol="rest_v2",
                      status="ok")
    assert ok is not None and ok >= 1
    assert metric_value(text, "model_server_requests_total", model_name=MODEL, model_version="2",
                        protocol="rest_v2", status="invalid_input") >= 1
    assert metric_value(text, "model_server_model_version_ready", model_name=MODEL, model_version="1") == 1


def test_chunked_oversized_body_is_refused_without_content_length(server):
    def chunks():
        yield b'{"inputs": "'
        for _ in range(100):
            yield b"x" * 1000
        yield b'"}'

    r = httpx.post(f"{server.rest}/v2/models/{MODEL}/infer", content=chunks())
    assert r.status_code == 413 and r.json()["field"] == "body"
    bad_header = httpx.post(f"{server.rest}/v2/models/{MODEL}/infer", content=b'{"inputs": []}',
                            headers={"Inference-Header-Content-Length": "999"})
    assert bad_header.status_code == 400 and bad_header.json()["field"] == "Inference-Header-Content-Length"
    unknown_path = httpx.post(f"{server.rest}/v2/models/{MODEL}/versions/2/extra/infer", json={})
    assert unknown_path.status_code == 404
