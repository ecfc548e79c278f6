"""Open Inference Protocol tensors <-> numpy, and the strict version-number check."""

from __future__ import annotations

import numpy as np
import pytest

from services.model_server.dispatch import version_number
from services.protocols.oip import open_inference_pb2 as pb
from services.protocols.oip.tensors import TensorError, add_output, input_arrays, output_arrays

CONTENTS = {"FP32": "fp32_contents", "FP64": "fp64_contents", "INT32": "int_contents", "INT64": "int64_contents"}


def request(array: np.ndarray, datatype: str, raw: bool) -> pb.ModelInferRequest:
    req = pb.ModelInferRequest(model_name="m")
    tensor = req.inputs.add(name="input", datatype=datatype, shape=array.shape)
    if raw:
        req.raw_input_contents.append(array.astype(array.dtype.newbyteorder("<")).tobytes())
    else:
        getattr(tensor.contents, CONTENTS[datatype]).extend(array.ravel().tolist())
    return req


@pytest.mark.parametrize("datatype, dtype", [("FP32", np.float32), ("FP64", np.float64), ("INT32", np.int32),
                                             ("INT64", np.int64)])
@pytest.mark.parametrize("raw", [True, False])
def test_inputs_read_back_exactly(datatype, dtype, raw):
    array = (np.arange(12).reshape(3, 4) * 1.5).astype(dtype)
    (got,) = input_arrays(request(array, datatype, raw))
    assert got.dtype == array.dtype and got.shape == (3, 4)
    np.testing.assert_array_equal(got, array)


def test_outputs_round_trip_as_raw_contents():
    response = pb.ModelInferResponse()
    add_output(response, "label", np.array([1, 0, 2]))
    add_output(response, "probabilities", np.full((3, 2), 0.5, np.float32))
    assert [(o.name, o.datatype, list(o.shape)) for o in response.outputs] == [
        ("label", "INT64", [3]), ("probabilities", "FP32", [3, 2])]
    assert not response.outputs[0].HasField("contents") and len(response.raw_output_contents) == 2
    got = output_arrays(response)
    np.testing.assert_array_equal(got["label"], [1, 0, 2])
    np.testing.assert_array_equal(got["probabilities"], np.full((3, 2), 0.5))


def bad(req: pb.ModelInferRequest) -> TensorError:
    with pytest.raises(TensorError) as err:
        input_arrays(req)
    return err.value


def test_errors_name_the_field():
    x = np.zeros((2, 3), np.float32)
    fp16 = request(x, "FP32", raw=True)
    fp16.inputs[0].datatype = "FP16"
    assert bad(fp16).field == "inputs[0].datatype" and "'FP16' is not supported" in str(bad(fp16))
    short = request(x, "FP32", raw=True)
    short.raw_input_contents[0] = short.raw_input_contents[0][:-1]
    assert bad(short).field == "raw_input_contents[0]" and "needs 24 bytes" in str(bad(short))
    negative = request(x, "FP32", raw=False)
    negative.inputs[0].shape[0] = -1
    assert bad(negative).field == "inputs[0].shape"
    misplaced = request(x, "FP32", raw=False)
    misplaced.inputs[0].datatype = "FP64"
    err = bad(misplaced)
    assert err.field == "inputs[0].contents.fp64_contents" and "found in fp32_contents" in str(err)
    both = request(x, "FP32", raw=False)
    both.raw_input_contents.append(x.tobytes())
    assert "both contents and raw_input_contents[0]" in str(bad(both))
    empty = request(x, "FP32", raw=True)
    empty.inputs[0].contents.SetInParent()  # present but empty beside raw bytes: fine (MLServer sends that)
    np.testing.assert_array_equal(input_arrays(empty)[0], x)
    extra = request(x, "FP32", raw=True)
    extra.raw_input_contents.append(b"")
    assert bad(extra).field == "raw_input_contents"


def test_raw_view_is_read_only():
    (got,) = input_arrays(request(np.ones((1, 2), np.float32), "FP32", raw=True))
    assert not got.flags.writeable  # nothing may write into the request's bytes


@pytest.mark.parametrize("raw, want", [("0", 0), ("12", 12), ("007", 7), ("9" * 18, int("9" * 18)),
                                       ("", None), ("²", None), ("٣", None), ("1.0", None), ("-1", None),
                                       (" 1", None), ("+1", None), ("9" * 19, None), ("9" * 5000, None)])
def test_version_number_takes_ascii_digits_only(raw, want):
    assert version_number(raw) == want
