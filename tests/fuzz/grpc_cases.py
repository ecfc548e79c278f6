"""gRPC cases: TF Serving Predict / GetModelMetadata and OIP ModelInfer, as messages and as raw bytes.

Raw bytes go through a generic channel (`request_serializer=None`), so the server's own decoding is what
is fuzzed, not the client's."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
import numpy as np
from hypothesis import strategies as st

from services.protocols.oip import open_inference_pb2 as oip
from services.protocols.tfs import (
    get_model_metadata_pb2,
    model_pb2,
    predict_pb2,
    tensor_pb2,
    tensor_shape_pb2,
    types_pb2,
)
from services.protocols.tfs.tensors import from_numpy
from tests.fuzz.strategies import FEATURES, FLOATS, INPUT_NAMES, MODEL, MODEL_NAMES, TEXT, mutated, sometimes

PREDICT = "/tensorflow.serving.PredictionService/Predict"
METADATA = "/tensorflow.serving.PredictionService/GetModelMetadata"
MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"
MODEL_METADATA = "/inference.GRPCInferenceService/ModelMetadata"

INT64 = st.one_of(st.sampled_from([0, -1, 1, 2, 30, 256, 257, 2**31, 8388608, 2**40, 2**62, 2**63 - 1, -(2**63)]),
                  st.integers(-(2**63), 2**63 - 1))
DIMS = st.lists(st.one_of(st.integers(-2, 300), INT64), max_size=4)


def valid_predict(rows: int = 1) -> predict_pb2.PredictRequest:
    req = predict_pb2.PredictRequest(model_spec=model_pb2.ModelSpec(name=MODEL))
    req.inputs["input"].CopyFrom(from_numpy(np.full((rows, FEATURES), 0.5, dtype=np.float32)))
    return req


def valid_infer(rows: int = 1) -> oip.ModelInferRequest:
    req = oip.ModelInferRequest(model_name=MODEL)
    t = req.inputs.add(name="input", datatype="FP32", shape=[rows, FEATURES])
    t.contents.fp32_contents.extend([0.5] * rows * FEATURES)
    return req


@st.composite
def tensor_proto(draw) -> tensor_pb2.TensorProto:
    t = tensor_pb2.TensorProto(dtype=sometimes(draw, types_pb2.DT_FLOAT, st.one_of(st.sampled_from(
        [types_pb2.DT_DOUBLE, types_pb2.DT_INT32, types_pb2.DT_INT64, types_pb2.DT_STRING,
         types_pb2.DT_HALF, types_pb2.DT_BOOL]), st.integers(0, 2**31 - 1))))
    rows = draw(st.one_of(st.integers(0, 4), st.sampled_from([256, 257, 8388608, 2**31])))
    shape = sometimes(draw, [rows, FEATURES], DIMS)
    t.tensor_shape.CopyFrom(tensor_shape_pb2.TensorShapeProto(
        dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=d) for d in shape],
        unknown_rank=draw(st.booleans()) if draw(st.integers(0, 9)) == 0 else False))
    filler = draw(st.sampled_from(["float", "float", "valid", "valid", "double", "int", "int64", "content",
                                   "string", "none"]))
    if filler == "valid":
        t.float_val.extend([0.5] * min(rows * FEATURES, 10_000))
    if filler == "float":
        t.float_val.extend(draw(st.lists(FLOATS.map(lambda x: float(np.float32(x)) if abs(x) < 3.4e38 or x != x
                                                    else x), max_size=70)))
    elif filler == "double":
        t.double_val.extend(draw(st.lists(FLOATS, max_size=70)))
    elif filler == "int":
        t.int_val.extend(draw(st.lists(st.integers(-(2**31), 2**31 - 1), max_size=70)))
    elif filler == "int64":
        t.int64_val.extend(draw(st.lists(INT64, max_size=70)))
    elif filler == "content":
        t.tensor_content = draw(st.binary(max_size=600))
    elif filler == "string":
        t.string_val.extend(draw(st.lists(st.binary(max_size=20), max_size=5)))
    return t


@st.composite
def predict_request(draw) -> predict_pb2.PredictRequest:
    spec = model_pb2.ModelSpec(name=draw(MODEL_NAMES), signature_name=sometimes(draw, "", st.one_of(
        st.just("serving_default"), st.just("x" * 10_000), TEXT)))
    choice = draw(st.integers(0, 5))
    if choice == 1:
        spec.version.value = draw(INT64)
    elif choice == 2:
        spec.version_label = draw(TEXT)
    req = predict_pb2.PredictRequest(model_spec=spec)
    for name in sometimes(draw, ["input"], st.lists(INPUT_NAMES, max_size=3)):
        req.inputs[name].CopyFrom(draw(tensor_proto()))
    req.output_filter.extend(draw(st.lists(TEXT, max_size=2)))
    return req


@st.composite
def metadata_request(draw) -> get_model_metadata_pb2.GetModelMetadataRequest:
    spec = model_pb2.ModelSpec(name=draw(MODEL_NAMES))
    if draw(st.booleans()):
        spec.version.value = draw(INT64)
    return get_model_metadata_pb2.GetModelMetadataRequest(
        model_spec=spec, metadata_field=draw(st.lists(st.one_of(st.just("signature_def"), TEXT), max_size=3)))


OIP_TYPES = st.one_of(st.sampled_from(["FP32", "FP64", "INT32", "INT64", "BOOL", "BYTES", "FP16", "UINT8", ""]),
                      TEXT)


@st.composite
def infer_request(draw) -> oip.ModelInferRequest:
    req = oip.ModelInferRequest(model_name=draw(MODEL_NAMES), model_version=draw(st.one_of(
        st.just(""), st.sampled_from(["1", "2", "0", "-1", "²", "２", "①", "1.0"]), TEXT)), id=draw(TEXT))
    raw = draw(st.booleans())
    for _ in range(sometimes(draw, 1, st.integers(0, 3))):
        rows = draw(st.one_of(st.integers(0, 4), st.sampled_from([256, 257, 8388608, 2**31])))
        t = req.inputs.add(name=sometimes(draw, "input", INPUT_NAMES), datatype=sometimes(draw, "FP32", OIP_TYPES),
                           shape=sometimes(draw, [rows, FEATURES], DIMS))
        if raw and draw(st.booleans()):
            req.raw_input_contents.append(np.full(min(rows * FEATURES, 10_000), 0.5, "<f4").tobytes())
        elif raw:
            req.raw_input_contents.append(draw(st.binary(max_size=600)))
        else:
            which = sometimes(draw, "fp32", st.sampled_from(["fp64", "int", "int64", "bool", "bytes"]))
            values = {"fp32": st.lists(st.floats(width=32, allow_nan=True), max_size=130),
                      "fp64": st.lists(FLOATS, max_size=130),
                      "int": st.lists(st.integers(-(2**31), 2**31 - 1), max_size=130),
                      "int64": st.lists(INT64, max_size=130), "bool": st.lists(st.booleans(), max_size=130),
                      "bytes": st.lists(st.binary(max_size=20), max_size=10)}[which]
            getattr(t.contents, f"{which}_contents").extend(draw(values))
    if draw(st.integers(0, 4)) == 0:  # raw contents that do not match the inputs' count
        req.raw_input_contents.append(draw(st.binary(max_size=64)))
    for name in draw(st.lists(st.one_of(st.sampled_from(["label", "probabilities"]), INPUT_NAMES), max_size=2)):
        req.outputs.add(name=name)
    return req


def raw_bytes(valid: bytes) -> st.SearchStrategy[bytes]:
    """Random bytes and mutations of a valid serialized request."""
    return st.one_of(st.binary(max_size=400), mutated(valid))


def unary(channel: grpc.Channel, method: str) -> Callable[[bytes, Any], Any]:
    """A raw-bytes unary call: the request goes out exactly as given, the answer stays bytes."""
    call = channel.unary_unary(method, request_serializer=None, response_deserializer=None)
    return lambda payload, metadata=(): call(payload, timeout=30, metadata=metadata)


def metadata_request_valid() -> get_model_metadata_pb2.GetModelMetadataRequest:
    return get_model_metadata_pb2.GetModelMetadataRequest(model_spec=model_pb2.ModelSpec(name=MODEL),
                                                          metadata_field=["signature_def"])
