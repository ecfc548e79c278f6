"""The real model server called with the OFFICIAL TensorFlow Serving client (`tensorflow-serving-api`).

This process holds TensorFlow's protos only; the server runs in its own process (the project's
.venv, with our wire-compatible protos and no TensorFlow). Reference answers come from ONNX
Runtime in a helper process of that same .venv. Run in the compat environment:

    .venv-compat/bin/python -m pytest tests/compat --confcutdir=tests/compat

MODEL_SERVER_PYTHON names the interpreter that runs the server (default: the project's .venv).
Without TensorFlow / tensorflow-serving-api the module is skipped.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
tf = pytest.importorskip("tensorflow", reason="needs TensorFlow (the .venv-compat environment)")
pytest.importorskip("tensorflow_serving.apis.predict_pb2", reason="needs tensorflow-serving-api")

import grpc  # noqa: E402
from tensorflow_serving.apis import (  # noqa: E402
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]
REPOSITORY = REPO_ROOT / "models" / "repository"
SERVER_PYTHON = os.environ.get("MODEL_SERVER_PYTHON") or str(REPO_ROOT / ".venv" / "bin" / "python")
MODEL = "breast-cancer"
TIMEOUT_S = 10.0

_REFERENCE = """
import json, sys
import numpy as np, onnxruntime as ort
repo, model, version = sys.argv[1], sys.argv[2], sys.argv[3]
rows = np.loadtxt(f"{repo}/{model}/{version}/holdout.csv", delimiter=",", skiprows=1, dtype=np.float64)[:, :-1]
sess = ort.InferenceSession(f"{repo}/{model}/{version}/model.onnx", providers=["CPUExecutionProvider"])
labels, proba = sess.run(["label", "probabilities"], {"input": rows.astype(np.float32)})
print(json.dumps({"x": rows.tolist(), "labels": labels.tolist(), "proba": proba.tolist()}))
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def reference() -> dict:
    if not (REPOSITORY / MODEL / "2" / "model.onnx").exists():
        pytest.fail("the model repository is missing: run `make models`")
    out = subprocess.run([SERVER_PYTHON, "-c", _REFERENCE, str(REPOSITORY), MODEL, "2"], capture_output=True,
                         text=True, timeout=120, check=True)
    data = json.loads(out.stdout)
    return {k: np.asarray(v) for k, v in data.items()}


@pytest.fixture(scope="module")
def address(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The real model server on a private repository copy (labels stable=1, canary=2); always stopped."""
    repo = tmp_path_factory.mktemp("repo") / "repository"
    shutil.copytree(REPOSITORY, repo)
    (repo / MODEL / "config.yaml").write_text("labels: {stable: 1, canary: 2}\n")
    grpc_port, rest_port = _free_port(), _free_port()
    log_path = tmp_path_factory.mktemp("logs") / "model-server.log"
    env = {**os.environ, "MODEL_SERVER_MODEL_REPOSITORY": str(repo), "MODEL_SERVER_GRPC_PORT": str(grpc_port),
           "MODEL_SERVER_PORT": str(rest_port), "MODEL_SERVER_MAX_BATCH_SIZE": "64"}
    with log_path.open("wb") as log:
        proc = subprocess.Popen([SERVER_PYTHON, "-m", "services.model_server"], cwd=REPO_ROOT, env=env,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    address = f"127.0.0.1:{grpc_port}"
    try:
        _wait_ready(proc, address, log_path)
        yield address
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)


def _wait_ready(proc: subprocess.Popen, address: str, log_path: Path) -> None:
    deadline = time.monotonic() + 60
    with grpc.insecure_channel(address) as channel:
        stub = model_service_pb2_grpc.ModelServiceStub(channel)
        request = get_model_status_pb2.GetModelStatusRequest()
        request.model_spec.name = MODEL
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                break
            try:
                if stub.GetModelStatus(request, timeout=1).model_version_status:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.1)
    raise RuntimeError(f"model server not ready (exit {proc.poll()}):\n{log_path.read_text(errors='replace')[-3000:]}")


@pytest.fixture(scope="module")
def channel(address: str) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(address) as ch:
        yield ch


@pytest.fixture(scope="module")
def predict_stub(channel):
    return prediction_service_pb2_grpc.PredictionServiceStub(channel)


def _request(x, *, version: int | None = None, label: str | None = None, name: str = "input",
             model: str = MODEL) -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    if version is not None:
        request.model_spec.version.value = version
    if label is not None:
        request.model_spec.version_label = label
    request.inputs[name].CopyFrom(tf.make_tensor_proto(x))
    return request


def test_predict_holdout_with_make_tensor_proto_equals_onnx_runtime(predict_stub, reference):
    x = reference["x"].astype(np.float32)
    labels, proba = [], []
    for start in range(0, len(x), 50):
        response = predict_stub.Predict(_request(x[start : start + 50]), timeout=TIMEOUT_S)
        assert response.model_spec.name == MODEL and response.model_spec.version.value == 2
        labels.append(tf.make_ndarray(response.outputs["label"]))
        proba.append(tf.make_ndarray(response.outputs["probabilities"]))
    np.testing.assert_array_equal(np.concatenate(labels), reference["labels"])
    np.testing.assert_allclose(np.concatenate(proba), reference["proba"], rtol=0, atol=1e-6)


def test_python_lists_float64_and_labels(predict_stub, reference):
    rows = reference["x"][:3]
    # make_tensor_proto of a nested list of Python floats: DT_FLOAT in float_val, not tensor_content
    listed = predict_stub.Predict(_request(rows.astype(np.float32).tolist()), timeout=TIMEOUT_S)
    np.testing.assert_array_equal(tf.make_ndarray(listed.outputs["label"]), reference["labels"][:3])
    as_double = predict_stub.Predict(_request(rows.astype(np.float64), label="canary"), timeout=TIMEOUT_S)
    assert as_double.model_spec.version.value == 2
    np.testing.assert_array_equal(tf.make_ndarray(as_double.outputs["label"]), reference["labels"][:3])
    stable = predict_stub.Predict(_request(rows.astype(np.float32), label="stable"), timeout=TIMEOUT_S)
    assert stable.model_spec.version.value == 1


def test_metadata_unpacks_into_the_official_signature_def_map(predict_stub):
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    request.model_spec.name = MODEL
    response = predict_stub.GetModelMetadata(request, timeout=TIMEOUT_S)
    sigs = get_model_metadata_pb2.SignatureDefMap()
    assert response.metadata["signature_def"].Unpack(sigs)
    sig = sigs.signature_def["serving_default"]
    assert sig.method_name == "tensorflow/serving/predict"
    assert tf.TensorShape(sig.inputs["input"].tensor_shape).as_list() == [None, 30]
    assert tf.dtypes.as_dtype(sig.outputs["label"].dtype) == tf.int64
    assert tf.dtypes.as_dtype(sig.outputs["probabilities"].dtype) == tf.float32


def test_model_status(channel):
    stub = model_service_pb2_grpc.ModelServiceStub(channel)
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = MODEL
    statuses = stub.GetModelStatus(request, timeout=TIMEOUT_S).model_version_status
    available = get_model_status_pb2.ModelVersionStatus.AVAILABLE
    assert [(s.version, s.state) for s in statuses] == [(1, available), (2, available), (3, available)]


@pytest.mark.parametrize(
    ("kwargs", "x", "code", "words"),
    [
        ({"model": "nope"}, np.zeros((1, 30), np.float32), grpc.StatusCode.NOT_FOUND, "not served here"),
        ({"version": 9}, np.zeros((1, 30), np.float32), grpc.StatusCode.NOT_FOUND, "no loaded version 9"),
        ({"name": "x"}, np.zeros((1, 30), np.float32), grpc.StatusCode.INVALID_ARGUMENT, "'input'"),
        ({}, np.zeros((1, 29), np.float32), grpc.StatusCode.INVALID_ARGUMENT, "shape [rows, 30]"),
        ({}, np.array([["a"] * 30]), grpc.StatusCode.INVALID_ARGUMENT, "DT_STRING"),
        ({}, np.full((1, 30), np.nan, np.float32), grpc.StatusCode.INVALID_ARGUMENT, "not a finite number"),
        ({}, np.zeros((65, 30), np.float32), grpc.StatusCode.RESOURCE_EXHAUSTED, "limit is 64"),
    ],
)
def test_errors_arrive_as_grpc_status_codes(predict_stub, kwargs, x, code, words):
    with pytest.raises(grpc.RpcError) as err:
        predict_stub.Predict(_request(x, **kwargs), timeout=TIMEOUT_S)
    assert err.value.code() == code and words in err.value.details(), err.value.details()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))
