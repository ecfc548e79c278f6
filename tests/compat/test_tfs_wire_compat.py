"""Wire compatibility of our TF Serving protos with the official ``tensorflow-serving-api``.

What is proven here, with the OFFICIAL client classes on this side and OUR
generated modules on the other side of a process boundary:

1. A real gRPC server built on our stubs (``tests/compat/echo_server.py``, run
   as a subprocess on a free 127.0.0.1 port) answers the official
   ``PredictionServiceStub`` / ``ModelServiceStub`` correctly: float32/float64/
   int64/int32 tensors round-trip (both ``tensor_content`` and typed value
   fields), model_spec version and version_label are understood, metadata
   unpacks from ``Any`` into the official ``SignatureDefMap``, model status
   reads back, and errors arrive as the right gRPC status codes.
2. Bytes serialized by the official messages parse in ours and serialize back
   to the very same bytes and the same text format (text format spells field
   NAMES, so names are checked as well as numbers); fields we deliberately
   omit survive as unknown fields.
3. Field by field, every message, enum and service method we define matches
   the official descriptor, and the only differences are the documented
   omissions.
4. ``tensors.to_numpy`` / ``from_numpy`` agree with ``tf.make_ndarray`` /
   ``tf.make_tensor_proto``.

Why subprocesses: our modules and TensorFlow's register the same symbols
(``tensorflow.TensorProto``, ...) in protobuf's default descriptor pool, which
rejects duplicates ("duplicate symbol"), so this process must never import our
``*_pb2`` modules. Everything on "our" side runs in ``python -m
tests.compat.echo_server`` or ``python -m tests.compat.ours_codec``.

Environment: needs TensorFlow and ``tensorflow-serving-api`` (see the README in
services/protocols/tfs); without them the whole module is skipped.
Our side runs with this interpreter unless TFS_COMPAT_OURS_PYTHON names another
one (for instance the serving venv, to prove the runtime needs no TensorFlow).
"""

from __future__ import annotations

import base64
import importlib.util
import io
import json
import os
import selectors
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

if importlib.util.find_spec("tensorflow_serving") is not None and any(
    name.startswith("services.protocols.tfs.") and name.endswith("_pb2") for name in sys.modules
):
    raise RuntimeError(
        "our tfs_proto *_pb2 modules are already imported in this pytest process, so TensorFlow's protos "
        "cannot be loaded next to them (duplicate descriptor-pool symbols); run tests/compat on its own: "
        "pytest tests/compat --confcutdir=tests/compat"
    )

# Keep TensorFlow's C++ start-up banner out of the test output; must precede the import.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
tf = pytest.importorskip("tensorflow", reason="compat tests need TensorFlow (the .venv-compat environment)")
pytest.importorskip("tensorflow_serving.apis.predict_pb2", reason="compat tests need tensorflow-serving-api")

import grpc  # noqa: E402 - after the skip guards on purpose
from google.protobuf import descriptor_pb2, descriptor_pool, text_format  # noqa: E402
from google.protobuf.message import Message  # noqa: E402
from tensorflow.core.framework import (  # noqa: E402
    tensor_pb2,
    tensor_shape_pb2,
    types_pb2,
)
from tensorflow.core.protobuf import meta_graph_pb2, struct_pb2  # noqa: E402
from tensorflow_serving.apis import (  # noqa: E402
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_pb2,
    model_service_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2,
    prediction_service_pb2_grpc,
    status_pb2,
)

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]
OURS_PYTHON = os.environ.get("TFS_COMPAT_OURS_PYTHON") or sys.executable
RPC_TIMEOUT_S = 10.0
SERVER_START_TIMEOUT_S = 60.0


# --------------------------------------------------------------------------- helpers: our side


def _ours_env() -> dict[str, str]:
    env = dict(os.environ)
    # The repository root makes `services` and `tests.compat` importable in the child.
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    return env


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text.encode("ascii"))


def run_ours(ops: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Run a batch of operations in the ours_codec worker and return its answers."""
    done = subprocess.run(
        [OURS_PYTHON, "-m", "tests.compat.ours_codec"],
        input=json.dumps(ops),
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        env=_ours_env(),
        timeout=120,
    )
    if done.returncode != 0:
        pytest.fail(f"ours_codec worker failed (exit {done.returncode}):\n{done.stderr}", pytrace=False)
    results: list[dict[str, Any]] = json.loads(done.stdout)
    return results


def _npy(array: np.ndarray) -> str:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return _b64(buffer.getvalue())


def _from_npy(text: str) -> np.ndarray:
    array: np.ndarray = np.load(io.BytesIO(_unb64(text)), allow_pickle=False)
    return array


# --------------------------------------------------------------------------- fixtures: the server


def _wait_for_port(proc: subprocess.Popen[str], stderr_path: Path) -> int:
    assert proc.stdout is not None
    deadline = time.monotonic() + SERVER_START_TIMEOUT_S
    with selectors.DefaultSelector() as selector:
        selector.register(proc.stdout, selectors.EVENT_READ)
        while time.monotonic() < deadline:
            if not selector.select(timeout=0.2):
                if proc.poll() is not None:
                    break
                continue
            line = proc.stdout.readline()
            if line.startswith("LISTENING "):
                return int(line.split()[1])
            if not line and proc.poll() is not None:
                break
    raise RuntimeError(
        f"echo server did not report its port (exit code {proc.poll()}):\n{stderr_path.read_text(errors='replace')}"
    )


def _stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
    for stream in (proc.stdin, proc.stdout):
        if stream is not None:
            stream.close()


@pytest.fixture(scope="module")
def server_address(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Start the echo server (our stubs) in a subprocess; it is always stopped."""
    stderr_path = tmp_path_factory.mktemp("echo_server") / "stderr.log"
    with stderr_path.open("w") as stderr:
        # stdin stays open as a lifeline: the server exits when it closes.
        proc = subprocess.Popen(
            [OURS_PYTHON, "-m", "tests.compat.echo_server", "--host", "127.0.0.1", "--port", "0"],
            cwd=REPO_ROOT,
            env=_ours_env(),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
        )
    try:
        port = _wait_for_port(proc, stderr_path)
        yield f"127.0.0.1:{port}"
    finally:
        _stop(proc)


@pytest.fixture(scope="module")
def channel(server_address: str) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(server_address) as chan:
        grpc.channel_ready_future(chan).result(timeout=RPC_TIMEOUT_S)
        yield chan


@pytest.fixture(scope="module")
def prediction_stub(channel: grpc.Channel) -> prediction_service_pb2_grpc.PredictionServiceStub:
    return prediction_service_pb2_grpc.PredictionServiceStub(channel)


@pytest.fixture(scope="module")
def model_stub(channel: grpc.Channel) -> model_service_pb2_grpc.ModelServiceStub:
    return model_service_pb2_grpc.ModelServiceStub(channel)


def _spec(name: str = "echo", *, version: int | None = None, label: str | None = None) -> model_pb2.ModelSpec:
    spec = model_pb2.ModelSpec(name=name)
    if version is not None:
        spec.version.value = version
    if label is not None:
        spec.version_label = label
    return spec


def _predict(
    stub: prediction_service_pb2_grpc.PredictionServiceStub,
    inputs: dict[str, tensor_pb2.TensorProto],
    spec: model_pb2.ModelSpec | None = None,
    output_filter: list[str] | None = None,
) -> predict_pb2.PredictResponse:
    request = predict_pb2.PredictRequest(model_spec=spec or _spec(), output_filter=output_filter or [])
    for name, tensor in inputs.items():
        request.inputs[name].CopyFrom(tensor)
    response: predict_pb2.PredictResponse = stub.Predict(request, timeout=RPC_TIMEOUT_S)
    return response


# --------------------------------------------------------------------------- 1. live gRPC with the official client


@pytest.mark.parametrize(
    "array",
    [
        np.arange(6, dtype=np.float32).reshape(2, 3) / 3,
        np.array([[1e-300, -2.5], [np.pi, 1e300]], dtype=np.float64),
        # Beyond 2**53: would lose precision if anything went through a float.
        np.array([2**61 + 1, -(2**61) - 3, 0], dtype=np.int64),
        np.array([[7, -8]], dtype=np.int32),
        np.array(3.25, dtype=np.float32),  # scalar: TF sends it in float_val, not tensor_content
        np.zeros((0, 3), dtype=np.float32),  # empty batch
    ],
    ids=["float32", "float64", "int64", "int32", "float32-scalar", "float32-empty"],
)
def test_predict_round_trips_tensors_from_make_tensor_proto(
    prediction_stub: prediction_service_pb2_grpc.PredictionServiceStub, array: np.ndarray
) -> None:
    response = _predict(prediction_stub, {"x": tf.make_tensor_proto(array)})

    out = tf.make_ndarray(response.outputs["x"])
    assert out.dtype == array.dtype
    assert out.shape == array.shape
    np.testing.assert_array_equal(out, array * array.dtype.type(2))


def test_predict_reads_typed_value_fields_and_splat(
    prediction_stub: prediction_service_pb2_grpc.PredictionServiceStub,
) -> None:
    def shape(*dims: int) -> tensor_shape_pb2.TensorShapeProto:
        return tensor_shape_pb2.TensorShapeProto(dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=d) for d in dims])

    inputs = {
        "f": tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, tensor_shape=shape(2, 2), float_val=[1, 2, 3, 4]),
        "d": tensor_pb2.TensorProto(dtype=types_pb2.DT_DOUBLE, tensor_shape=shape(3), double_val=[0.5, -1, 2]),
        "l": tensor_pb2.TensorProto(dtype=types_pb2.DT_INT64, tensor_shape=shape(2), int64_val=[2**40, -5]),
        "i": tensor_pb2.TensorProto(dtype=types_pb2.DT_INT32, tensor_shape=shape(1, 2), int_val=[-1, 9]),
        # tf.make_tensor_proto(1.5, shape=[2, 3]) sends ONE value meaning "fill".
        "splat": tf.make_tensor_proto(1.5, shape=[2, 3]),
    }
    assert len(inputs["splat"].float_val) == 1, "TensorFlow no longer uses the splat encoding here"

    response = _predict(prediction_stub, inputs)

    expected = {
        "f": np.array([[2, 4], [6, 8]], dtype=np.float32),
        "d": np.array([1, -2, 4], dtype=np.float64),
        "l": np.array([2**41, -10], dtype=np.int64),
        "i": np.array([[-2, 18]], dtype=np.int32),
        "splat": np.full((2, 3), 3.0, dtype=np.float32),
    }
    assert sorted(response.outputs) == sorted(expected)
    for name, want in expected.items():
        got = tf.make_ndarray(response.outputs[name])
        assert got.dtype == want.dtype, name
        np.testing.assert_array_equal(got, want, err_msg=name)


def test_predict_honours_output_filter(prediction_stub: prediction_service_pb2_grpc.PredictionServiceStub) -> None:
    inputs = {
        "a": tf.make_tensor_proto(np.array([1.0, 2.0], dtype=np.float32)),
        "b": tf.make_tensor_proto(np.array([3, 4], dtype=np.int64)),
    }
    response = _predict(prediction_stub, inputs, output_filter=["b"])
    assert list(response.outputs) == ["b"]
    np.testing.assert_array_equal(tf.make_ndarray(response.outputs["b"]), [6, 8])


@pytest.mark.parametrize(
    ("spec", "resolved_version"),
    [
        (_spec(version=1), 1),
        (_spec(version=2), 2),
        (_spec(label="stable"), 1),
        (_spec(label="canary"), 2),
        (_spec(), 2),  # neither: latest
    ],
    ids=["version-1", "version-2", "label-stable", "label-canary", "latest"],
)
def test_model_spec_version_and_label_reach_the_server(
    prediction_stub: prediction_service_pb2_grpc.PredictionServiceStub, spec: model_pb2.ModelSpec, resolved_version: int
) -> None:
    response = _predict(prediction_stub, {"x": tf.make_tensor_proto(np.ones(2, np.float32))}, spec=spec)

    # Like TF Serving, the answer names the version actually used, as an Int64Value.
    assert response.model_spec.name == "echo"
    assert response.model_spec.WhichOneof("version_choice") == "version"
    assert response.model_spec.version.value == resolved_version
    assert response.model_spec.signature_name == "serving_default"


@pytest.mark.parametrize(
    ("inputs", "spec", "code", "fragment"),
    [
        ({"x": tf.make_tensor_proto(np.ones(1, np.float32))}, _spec("nope"), grpc.StatusCode.NOT_FOUND, "'nope'"),
        ({"x": tf.make_tensor_proto(np.ones(1, np.float32))}, _spec(label="beta"), grpc.StatusCode.NOT_FOUND, "'beta'"),
        ({"x": tf.make_tensor_proto(np.ones(1, np.float32))}, _spec(version=9), grpc.StatusCode.NOT_FOUND, "9"),
        (
            {"s": tf.make_tensor_proto(np.array([b"a", b"b"]))},
            _spec(),
            grpc.StatusCode.INVALID_ARGUMENT,
            "unsupported tensor dtype DT_STRING",
        ),
        (
            {
                "m": tensor_pb2.TensorProto(
                    dtype=types_pb2.DT_FLOAT,
                    tensor_shape=tensor_shape_pb2.TensorShapeProto(
                        dim=[
                            tensor_shape_pb2.TensorShapeProto.Dim(size=2),
                            tensor_shape_pb2.TensorShapeProto.Dim(size=2),
                        ]
                    ),
                    float_val=[1, 2, 3],
                )
            },
            _spec(),
            grpc.StatusCode.INVALID_ARGUMENT,
            "needs 4 value(s) in float_val",
        ),
        (
            {
                "c": tensor_pb2.TensorProto(
                    dtype=types_pb2.DT_DOUBLE,
                    tensor_shape=tensor_shape_pb2.TensorShapeProto(dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=2)]),
                    tensor_content=b"\x00" * 12,
                )
            },
            _spec(),
            grpc.StatusCode.INVALID_ARGUMENT,
            "needs 16 bytes of tensor_content",
        ),
    ],
    ids=["unknown-model", "unknown-label", "unknown-version", "string-dtype", "count-mismatch", "content-length"],
)
def test_bad_requests_get_grpc_status_with_a_clear_message(
    prediction_stub: prediction_service_pb2_grpc.PredictionServiceStub,
    inputs: dict[str, tensor_pb2.TensorProto],
    spec: model_pb2.ModelSpec,
    code: grpc.StatusCode,
    fragment: str,
) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        _predict(prediction_stub, inputs, spec=spec)
    assert caught.value.code() == code
    assert fragment in caught.value.details()


def test_get_model_metadata_unpacks_into_official_signature_def_map(
    prediction_stub: prediction_service_pb2_grpc.PredictionServiceStub,
) -> None:
    request = get_model_metadata_pb2.GetModelMetadataRequest(model_spec=_spec(), metadata_field=["signature_def"])
    response = prediction_stub.GetModelMetadata(request, timeout=RPC_TIMEOUT_S)

    assert response.model_spec.name == "echo"
    assert response.model_spec.version.value == 2
    packed = response.metadata["signature_def"]
    assert packed.type_url == "type.googleapis.com/tensorflow.serving.SignatureDefMap"
    signatures = get_model_metadata_pb2.SignatureDefMap()
    assert packed.Unpack(signatures), "Any did not unpack into the official SignatureDefMap"

    signature = signatures.signature_def["serving_default"]
    assert signature.method_name == "tensorflow/serving/predict"
    for alias, tensor_name in (("x", "x:0"), ("y", "y:0")):
        info = signature.inputs[alias] if alias == "x" else signature.outputs[alias]
        assert info.name == tensor_name
        assert info.dtype == types_pb2.DT_FLOAT
        assert [d.size for d in info.tensor_shape.dim] == [-1, 3]


def test_get_model_metadata_rejects_unsupported_fields(
    prediction_stub: prediction_service_pb2_grpc.PredictionServiceStub,
) -> None:
    request = get_model_metadata_pb2.GetModelMetadataRequest(model_spec=_spec(), metadata_field=["graph"])
    with pytest.raises(grpc.RpcError) as caught:
        prediction_stub.GetModelMetadata(request, timeout=RPC_TIMEOUT_S)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "metadata_field" in caught.value.details()


def test_get_model_status_all_versions_and_one_version(model_stub: model_service_pb2_grpc.ModelServiceStub) -> None:
    state = get_model_status_pb2.ModelVersionStatus

    every = model_stub.GetModelStatus(
        get_model_status_pb2.GetModelStatusRequest(model_spec=_spec()), timeout=RPC_TIMEOUT_S
    )
    assert [(s.version, s.state) for s in every.model_version_status] == [(1, state.END), (2, state.AVAILABLE)]
    for version_status in every.model_version_status:
        assert version_status.status.error_code == 0  # tensorflow.error.OK
        assert version_status.status.error_message == ""

    one = model_stub.GetModelStatus(
        get_model_status_pb2.GetModelStatusRequest(model_spec=_spec(label="canary")), timeout=RPC_TIMEOUT_S
    )
    assert [(s.version, s.state) for s in one.model_version_status] == [(2, state.AVAILABLE)]


def test_methods_we_left_out_are_unimplemented(
    prediction_stub: prediction_service_pb2_grpc.PredictionServiceStub,
) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        prediction_stub.Classify(classification_pb2.ClassificationRequest(model_spec=_spec()), timeout=RPC_TIMEOUT_S)
    assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED


# --------------------------------------------------------------------------- 2. byte-level round trips


def _shape(*dims: int, names: tuple[str, ...] = ()) -> tensor_shape_pb2.TensorShapeProto:
    return tensor_shape_pb2.TensorShapeProto(
        dim=[
            tensor_shape_pb2.TensorShapeProto.Dim(size=d, name=names[i] if i < len(names) else "")
            for i, d in enumerate(dims)
        ]
    )


def _signature_def_map() -> get_model_metadata_pb2.SignatureDefMap:
    dense = meta_graph_pb2.TensorInfo(name="x:0", dtype=types_pb2.DT_FLOAT, tensor_shape=_shape(-1, 4))
    sparse = meta_graph_pb2.TensorInfo(
        coo_sparse=meta_graph_pb2.TensorInfo.CooSparse(
            values_tensor_name="v:0", indices_tensor_name="i:0", dense_shape_tensor_name="s:0"
        ),
        dtype=types_pb2.DT_INT64,
        tensor_shape=tensor_shape_pb2.TensorShapeProto(unknown_rank=True),
    )
    signature = meta_graph_pb2.SignatureDef(
        inputs={"x": dense, "ids": sparse},
        outputs={"y": meta_graph_pb2.TensorInfo(name="y:0", dtype=types_pb2.DT_DOUBLE, tensor_shape=_shape(-1))},
        method_name="tensorflow/serving/predict",
        defaults={"x": tf.make_tensor_proto(np.zeros(4, np.float32))},
    )
    return get_model_metadata_pb2.SignatureDefMap(signature_def={"serving_default": signature, "other": signature})


def known_field_samples() -> dict[str, Message]:
    """Official messages that use only fields our subset defines."""
    metadata_response = get_model_metadata_pb2.GetModelMetadataResponse(model_spec=_spec("m", version=3))
    metadata_response.metadata["signature_def"].Pack(_signature_def_map())
    every_value_field = tensor_pb2.TensorProto(
        dtype=types_pb2.DT_HALF,
        tensor_shape=_shape(2, 3, names=("batch", "features")),
        version_number=1,
        half_val=[15360, 16384],
        float_val=[1.5, -0.0, float("inf")],
        double_val=[2.5e-310],
        int_val=[-3, 2**31 - 1],
        string_val=[b"abc", b"\x00\xff", b""],
        scomplex_val=[1, 2],
        int64_val=[-(2**63)],
        bool_val=[True, False],
        dcomplex_val=[3, 4],
        uint32_val=[2**32 - 1],
        uint64_val=[2**64 - 1],
        float8_val=b"\x01\x02",
    )
    return {
        "predict_request_version": predict_pb2.PredictRequest(
            model_spec=model_pb2.ModelSpec(name="m", version={"value": 7}, signature_name="serving_default"),
            inputs={
                "f32": tf.make_tensor_proto(np.arange(6, dtype=np.float32).reshape(2, 3)),
                "i64": tf.make_tensor_proto(np.array([1, -(2**62)], dtype=np.int64)),
                "f64_vals": tensor_pb2.TensorProto(
                    dtype=types_pb2.DT_DOUBLE, tensor_shape=_shape(2), double_val=[1, 2]
                ),
            },
            output_filter=["y", "z"],
        ),
        "predict_request_label": predict_pb2.PredictRequest(
            model_spec=_spec("m", label="canary"), inputs={"x": tf.make_tensor_proto(1.5, shape=[4])}
        ),
        "predict_request_version_zero": predict_pb2.PredictRequest(model_spec=_spec("m", version=0)),
        "predict_response": predict_pb2.PredictResponse(
            model_spec=_spec("m", version=7),
            outputs={"y": tf.make_tensor_proto(np.array([[0.25, 0.75]], dtype=np.float64))},
        ),
        "tensor_every_value_field": every_value_field,
        "tensor_shape_unknown_rank": tensor_shape_pb2.TensorShapeProto(unknown_rank=True),
        "metadata_request": get_model_metadata_pb2.GetModelMetadataRequest(
            model_spec=_spec("m", version=3), metadata_field=["signature_def"]
        ),
        "metadata_response": metadata_response,
        "signature_def_map": _signature_def_map(),
        "status_request": get_model_status_pb2.GetModelStatusRequest(model_spec=_spec("m", label="stable")),
        "status_response": get_model_status_pb2.GetModelStatusResponse(
            model_version_status=[
                get_model_status_pb2.ModelVersionStatus(
                    version=1, state=get_model_status_pb2.ModelVersionStatus.END, status=status_pb2.StatusProto()
                ),
                get_model_status_pb2.ModelVersionStatus(
                    version=2,
                    state=get_model_status_pb2.ModelVersionStatus.LOADING,
                    status=status_pb2.StatusProto(error_code=5, error_message="model file missing"),
                ),
            ]
        ),
    }


def unknown_field_samples() -> dict[str, Message]:
    """Official messages that use fields our subset omits on purpose."""
    request = predict_pb2.PredictRequest(model_spec=_spec("m"), inputs={"x": tf.make_tensor_proto(np.ones(2))})
    request.client_id = b"tenant-42"
    request.request_options.client_id = b"tenant-42"
    request.request_options.max_cache_length = 128
    request.predict_streamed_options.request_state = predict_pb2.PredictStreamedOptions.SPLIT
    request.predict_streamed_options.split_dimensions["x"] = 0
    composite = meta_graph_pb2.TensorInfo(
        composite_tensor=meta_graph_pb2.TensorInfo.CompositeTensor(
            type_spec=struct_pb2.TypeSpecProto(type_spec_class=struct_pb2.TypeSpecProto.RAGGED_TENSOR_SPEC),
            components=[meta_graph_pb2.TensorInfo(name="values:0", dtype=types_pb2.DT_FLOAT)],
        ),
        dtype=types_pb2.DT_FLOAT,
    )
    variant = tensor_pb2.TensorProto(
        dtype=types_pb2.DT_VARIANT,
        variant_val=[tensor_pb2.VariantTensorDataProto(type_name="t", metadata=b"m")],
    )
    ref_dtype = tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT_REF, float_val=[1.0])
    return {
        "predict_request_streaming_options": request,
        "tensor_info_composite": composite,
        "tensor_variant_val": variant,
        "tensor_ref_dtype": ref_dtype,
    }


@pytest.fixture(scope="module")
def reserialized() -> dict[str, dict[str, Any]]:
    """Every sample parsed and re-serialized by our classes, in one worker run."""
    samples = {**known_field_samples(), **unknown_field_samples()}
    ops = [
        {"op": "reserialize", "type": msg.DESCRIPTOR.full_name, "data": _b64(msg.SerializeToString(deterministic=True))}
        for msg in samples.values()
    ]
    return dict(zip(samples, run_ours(ops), strict=True))


@pytest.mark.parametrize("name", sorted(known_field_samples()))
def test_official_bytes_round_trip_through_ours_unchanged(name: str, reserialized: dict[str, dict[str, Any]]) -> None:
    official = known_field_samples()[name]
    ours = reserialized[name]

    assert _unb64(ours["data"]) == official.SerializeToString(deterministic=True)
    # Text format prints names; unknown (unmodelled) fields would be missing from it.
    assert ours["text"] == text_format.MessageToString(official)
    assert type(official).FromString(_unb64(ours["data"])) == official


@pytest.mark.parametrize("name", sorted(unknown_field_samples()))
def test_fields_we_omit_survive_a_round_trip_through_ours(name: str, reserialized: dict[str, dict[str, Any]]) -> None:
    official = unknown_field_samples()[name]
    assert type(official).FromString(_unb64(reserialized[name]["data"])) == official


# --------------------------------------------------------------------------- 3. descriptors, field by field

# Upstream fields, enum values and methods our subset leaves out on purpose (see the .proto headers).
EXPECTED_OMITTED_FIELDS = {
    "tensorflow.TensorProto.resource_handle_val",
    "tensorflow.TensorProto.variant_val",
    "tensorflow.TensorInfo.composite_tensor",
    "tensorflow.serving.PredictRequest.predict_streamed_options",
    "tensorflow.serving.PredictRequest.client_id",
    "tensorflow.serving.PredictRequest.request_options",
}
EXPECTED_OMITTED_METHODS = {
    "tensorflow.serving.PredictionService.Classify",
    "tensorflow.serving.PredictionService.Regress",
    "tensorflow.serving.PredictionService.MultiInference",
    "tensorflow.serving.ModelService.HandleReloadConfigRequest",
}
FIELD_ATTRIBUTES = ("name", "number", "label", "type", "type_name", "json_name", "proto3_optional")


@pytest.fixture(scope="module")
def our_files() -> list[descriptor_pb2.FileDescriptorProto]:
    # Make sure the official definitions of everything we compare against are loaded.
    assert prediction_service_pb2.DESCRIPTOR and model_service_pb2.DESCRIPTOR
    (answer,) = run_ours([{"op": "describe"}])
    return [descriptor_pb2.FileDescriptorProto.FromString(_unb64(data)) for data in answer["files"]]


def _walk_messages(prefix: str, messages: Any) -> Iterator[tuple[str, descriptor_pb2.DescriptorProto]]:
    for message in messages:
        full_name = f"{prefix}.{message.name}"
        yield full_name, message
        yield from _walk_messages(full_name, message.nested_type)


def _official_message(full_name: str) -> descriptor_pb2.DescriptorProto:
    proto = descriptor_pb2.DescriptorProto()
    descriptor_pool.Default().FindMessageTypeByName(full_name).CopyToProto(proto)
    return proto


def _field_signature(
    message: descriptor_pb2.DescriptorProto, field: descriptor_pb2.FieldDescriptorProto
) -> dict[str, Any]:
    signature = {attr: getattr(field, attr) for attr in FIELD_ATTRIBUTES}
    signature["oneof"] = message.oneof_decl[field.oneof_index].name if field.HasField("oneof_index") else None
    signature["packed"] = field.options.packed if field.options.HasField("packed") else None
    return signature


def test_our_file_names_do_not_collide_with_tensorflow(our_files: list[descriptor_pb2.FileDescriptorProto]) -> None:
    pool = descriptor_pool.Default()
    for file in our_files:
        assert file.name.startswith("serving_patterns/tfs/")
        with pytest.raises(KeyError):
            pool.FindFileByName(file.name)


def test_every_field_matches_the_official_definition(our_files: list[descriptor_pb2.FileDescriptorProto]) -> None:
    omitted: set[str] = set()
    compared = 0
    for file in our_files:
        for full_name, ours in _walk_messages(file.package, file.message_type):
            official = _official_message(full_name)
            assert ours.options.map_entry == official.options.map_entry, full_name
            official_fields = {f.number: f for f in official.field}
            for field in ours.field:
                assert field.number in official_fields, f"{full_name}.{field.name} is not upstream"
                assert _field_signature(ours, field) == _field_signature(official, official_fields[field.number]), (
                    f"{full_name}.{field.name}"
                )
                compared += 1
            our_numbers = {f.number for f in ours.field}
            omitted |= {f"{full_name}.{f.name}" for f in official.field if f.number not in our_numbers}
            for reserved in ours.reserved_range:
                assert any(r.start <= reserved.start and reserved.end <= r.end for r in official.reserved_range)
    assert omitted == EXPECTED_OMITTED_FIELDS
    assert compared > 50, "suspiciously few fields compared"


def test_every_enum_value_matches_the_official_definition(
    our_files: list[descriptor_pb2.FileDescriptorProto],
) -> None:
    pool = descriptor_pool.Default()
    enums = [(f"{file.package}.{e.name}", e) for file in our_files for e in file.enum_type]
    enums += [
        (f"{full_name}.{e.name}", e)
        for file in our_files
        for full_name, message in _walk_messages(file.package, file.message_type)
        for e in message.enum_type
    ]
    assert {name for name, _ in enums} >= {
        "tensorflow.DataType",
        "tensorflow.error.Code",
        "tensorflow.serving.ModelVersionStatus.State",
    }
    for full_name, ours in enums:
        official = {v.name: v.number for v in pool.FindEnumTypeByName(full_name).values}
        mine = {v.name: v.number for v in ours.value}
        assert mine.items() <= official.items(), full_name
        left_out = set(official) - set(mine)
        # Only DataType leaves values out, and only the graph-internal *_REF ones.
        assert all(name.endswith("_REF") for name in left_out), f"{full_name}: {sorted(left_out)}"


def test_every_method_matches_the_official_service(our_files: list[descriptor_pb2.FileDescriptorProto]) -> None:
    pool = descriptor_pool.Default()
    omitted: set[str] = set()
    for file in our_files:
        for service in file.service:
            full_name = f"{file.package}.{service.name}"
            official_service = descriptor_pb2.ServiceDescriptorProto()
            pool.FindServiceByName(full_name).CopyToProto(official_service)
            official = {m.name: m for m in official_service.method}
            for method in service.method:
                want = official[method.name]
                assert (method.input_type, method.output_type) == (want.input_type, want.output_type)
                assert (method.client_streaming, method.server_streaming) == (
                    want.client_streaming,
                    want.server_streaming,
                )
            omitted |= {f"{full_name}.{name}" for name in set(official) - {m.name for m in service.method}}
    assert omitted == EXPECTED_OMITTED_METHODS


# --------------------------------------------------------------------------- 4. tensors.py against TensorFlow

NUMERIC_ARRAYS = {
    "float32-2d": np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 4),
    "float64-3d": np.arange(24, dtype=np.float64).reshape(2, 3, 4) / 7,
    "int64": np.array([2**62, -(2**62), 1], dtype=np.int64),
    "int32": np.array([[2**31 - 1], [-(2**31)]], dtype=np.int32),
    "float32-scalar": np.array(1.25, dtype=np.float32),
    "int64-single": np.array([5], dtype=np.int64),
    "float64-empty": np.zeros((0,), dtype=np.float64),
}


def test_to_numpy_matches_make_ndarray() -> None:
    protos = {name: tf.make_tensor_proto(array) for name, array in NUMERIC_ARRAYS.items()}
    protos["splat"] = tf.make_tensor_proto(-2.0, shape=[3, 2])
    protos["int32-int_val"] = tensor_pb2.TensorProto(
        dtype=types_pb2.DT_INT32, tensor_shape=_shape(3), int_val=[1, 2, 3]
    )

    results = run_ours([{"op": "to_numpy", "data": _b64(p.SerializeToString())} for p in protos.values()])

    for (name, proto), result in zip(protos.items(), results, strict=True):
        assert "npy" in result, f"{name}: {result.get('error')}"
        ours, want = _from_npy(result["npy"]), tf.make_ndarray(proto)
        assert ours.dtype == want.dtype and ours.shape == want.shape, name
        np.testing.assert_array_equal(ours, want, err_msg=name)


def test_to_numpy_errors_name_the_problem() -> None:
    cases = {
        "unsupported tensor dtype DT_STRING": tf.make_tensor_proto(np.array([b"x"])),
        "unsupported tensor dtype DT_BOOL": tf.make_tensor_proto(np.array([True, False])),
        "needs 6 value(s) in float_val (or tensor_content), got 2": tensor_pb2.TensorProto(
            dtype=types_pb2.DT_FLOAT, tensor_shape=_shape(2, 3), float_val=[1, 2]
        ),
        "values found in double_val instead": tensor_pb2.TensorProto(
            dtype=types_pb2.DT_FLOAT, tensor_shape=_shape(2), double_val=[1, 2]
        ),
        "needs 24 bytes of tensor_content (3 x 8), got 16": tensor_pb2.TensorProto(
            dtype=types_pb2.DT_INT64, tensor_shape=_shape(3), tensor_content=b"\x00" * 16
        ),
        "unknown_rank": tensor_pb2.TensorProto(
            dtype=types_pb2.DT_FLOAT, tensor_shape=tensor_shape_pb2.TensorShapeProto(unknown_rank=True)
        ),
        "negative (unknown) dimension": tensor_pb2.TensorProto(
            dtype=types_pb2.DT_FLOAT, tensor_shape=_shape(-1, 2), float_val=[1, 2]
        ),
    }
    results = run_ours([{"op": "to_numpy", "data": _b64(p.SerializeToString())} for p in cases.values()])
    for fragment, result in zip(cases, results, strict=True):
        assert fragment in result.get("error", ""), f"expected {fragment!r}, got {result}"


def test_from_numpy_matches_make_tensor_proto() -> None:
    arrays = dict(NUMERIC_ARRAYS)
    # Layouts TF normalises too: column-major and big-endian input arrays.
    arrays["float32-fortran"] = np.asfortranarray(np.arange(6, dtype=np.float32).reshape(2, 3))
    arrays["int64-bigendian"] = np.array([1, 2**40, -3], dtype=">i8")

    results = run_ours([{"op": "from_numpy", "npy": _npy(array)} for array in arrays.values()])

    for (name, array), result in zip(arrays.items(), results, strict=True):
        ours = tensor_pb2.TensorProto.FromString(_unb64(result["data"]))
        decoded = tf.make_ndarray(ours)
        assert decoded.dtype == array.dtype.newbyteorder("="), name
        np.testing.assert_array_equal(decoded, array, err_msg=name)
        if array.size > 1:
            # TF itself uses tensor_content for multi-element numeric arrays: byte-identical encoding.
            official = tf.make_tensor_proto(np.ascontiguousarray(array.astype(array.dtype.newbyteorder("="))))
            assert ours.SerializeToString(deterministic=True) == official.SerializeToString(deterministic=True), name
