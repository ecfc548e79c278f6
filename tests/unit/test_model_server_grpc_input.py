"""The gRPC Predict input fast path (float32 tensor_content read in place) must read exactly what
the general `to_numpy` reads, and fall back to it (and its error messages) for everything else."""

from __future__ import annotations

import numpy as np
import pytest

from services.model_server import grpc_tfs
from services.protocols.tfs import predict_pb2, types_pb2
from services.protocols.tfs.tensors import from_numpy, to_numpy


@pytest.mark.parametrize("array", [
    np.arange(30, dtype=np.float32).reshape(1, 30),
    np.arange(64 * 13, dtype=np.float32).reshape(64, 13),
    np.arange(6, dtype=np.float64).reshape(2, 3),   # not float32: the general path
    np.arange(6, dtype=np.int64).reshape(2, 3),
    np.arange(6, dtype=np.float32).reshape(1, 2, 3),  # not 2-D: the general path (and its error later)
])
def test_input_fast_path_reads_what_to_numpy_reads(array):
    proto = from_numpy(array)
    got = grpc_tfs._input_array(proto, 10**6)
    want = to_numpy(proto)
    assert got.dtype == want.dtype and got.shape == want.shape
    np.testing.assert_array_equal(got, want)


def test_input_fast_path_refuses_a_short_tensor_content_with_to_numpy_message():
    proto = from_numpy(np.zeros((2, 3), np.float32))
    proto.tensor_content = proto.tensor_content[:-4]
    with pytest.raises(ValueError, match="needs 24 bytes of tensor_content"):
        grpc_tfs._input_array(proto, 10**6)


def test_typed_float_values_still_work():
    proto = predict_pb2.PredictRequest().inputs["input"]
    proto.dtype = types_pb2.DT_FLOAT
    proto.tensor_shape.dim.add().size = 2
    proto.tensor_shape.dim.add().size = 2
    proto.float_val.extend([1.0, 2.0, 3.0, 4.0])
    np.testing.assert_array_equal(grpc_tfs._input_array(proto, 10**6), [[1, 2], [3, 4]])


def test_a_declared_shape_over_the_limit_is_refused_before_allocation():
    from services.protocols.tfs import tensor_pb2, tensor_shape_pb2, types_pb2
    from services.protocols.tfs.tensors import TensorTooLarge

    dims = [tensor_shape_pb2.TensorShapeProto.Dim(size=2**31), tensor_shape_pb2.TensorShapeProto.Dim(size=30)]
    proto = tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, float_val=[1.0],
                                   tensor_shape=tensor_shape_pb2.TensorShapeProto(dim=dims))
    with pytest.raises(TensorTooLarge, match="declares 64424509440 values; at most 7680"):
        grpc_tfs._input_array(proto, 7680)
