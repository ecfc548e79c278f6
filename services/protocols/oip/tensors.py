"""Open Inference Protocol tensors <-> numpy: inputs of a `ModelInferRequest`, outputs of a response.

An input tensor's values travel in one of two ways (the protocol's rule, which Triton enforces):

* `ModelInferRequest.raw_input_contents[i]`: the i-th input as row-major little-endian bytes
  (tritonclient.grpc always sends this). Either every input has an entry there, or none does.
* `InferInputTensor.contents`: the typed repeated field for the datatype (`fp32_contents`, ...).

Only the numeric datatypes our models can take are read (FP32, FP64, INT32, INT64); anything else,
a shape that does not match the value count or byte length, or contents in the wrong typed field
raises `TensorError`, a ValueError naming the request field, which the server answers
INVALID_ARGUMENT. Outputs are written as `raw_output_contents`, as Triton does: one bytes copy per
tensor instead of one Python object per element.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from services.protocols.oip import open_inference_pb2 as pb

InferInputTensor = pb.ModelInferRequest.InferInputTensor
InferOutputTensor = pb.ModelInferResponse.InferOutputTensor


class TensorError(ValueError):
    """A tensor the server cannot read; `field` names where in the request the problem is."""

    def __init__(self, message: str, field: str) -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class _Datatype:
    numpy_dtype: np.dtype  # little-endian: the wire's byte order whatever the host's
    contents_field: str


_DATATYPES: dict[str, _Datatype] = {
    "FP32": _Datatype(np.dtype("<f4"), "fp32_contents"),
    "FP64": _Datatype(np.dtype("<f8"), "fp64_contents"),
    "INT32": _Datatype(np.dtype("<i4"), "int_contents"),
    "INT64": _Datatype(np.dtype("<i8"), "int64_contents"),
}
_BY_NUMPY: dict[np.dtype, str] = {d.numpy_dtype.newbyteorder("="): name for name, d in _DATATYPES.items()}
SUPPORTED_DATATYPES: tuple[str, ...] = tuple(_DATATYPES)
_CONTENTS_FIELDS = tuple(f.name for f in pb.InferTensorContents.DESCRIPTOR.fields)


def input_arrays(request: pb.ModelInferRequest) -> list[np.ndarray]:
    """Every input tensor of the request as an array of its datatype and shape, in request order."""
    raw = request.raw_input_contents
    inputs = request.inputs
    if raw and len(raw) != len(inputs):
        raise TensorError(f"raw_input_contents has {len(raw)} entries for {len(inputs)} input(s); "
                          "send one per input, or none and use each input's contents", "raw_input_contents")
    return [to_numpy(tensor, raw[i] if raw else None, field=f"inputs[{i}]", raw_field=f"raw_input_contents[{i}]")
            for i, tensor in enumerate(inputs)]


def to_numpy(tensor: InferInputTensor, raw: bytes | None, field: str = "inputs[0]",
             raw_field: str = "raw_input_contents[0]") -> np.ndarray:
    """One input tensor's values (`raw` bytes, or its typed contents when `raw` is None)."""
    datatype = _DATATYPES.get(tensor.datatype)
    if datatype is None:
        raise TensorError(f"{field}.datatype {tensor.datatype!r} is not supported; use one of "
                          f"{', '.join(SUPPORTED_DATATYPES)}", f"{field}.datatype")
    shape = tuple(tensor.shape)
    if any(d < 0 for d in shape):
        raise TensorError(f"{field}.shape {list(shape)} has a negative dimension", f"{field}.shape")
    count = math.prod(shape)
    dtype = datatype.numpy_dtype
    # numpy refuses a shape whose non-zero dimensions span more bytes than it can index, even with no
    # elements at all ([0, 2**61]): name the shape instead of letting reshape raise its own error.
    if math.prod(d for d in shape if d) * dtype.itemsize > np.iinfo(np.intp).max:
        raise TensorError(f"{field}.shape {list(shape)} is too large for any tensor", f"{field}.shape")
    if raw is not None:
        # An empty `contents` beside raw bytes is harmless (MLServer's responses carry one); values in both are not.
        if tensor.HasField("contents") and any(len(getattr(tensor.contents, f)) for f in _CONTENTS_FIELDS):
            raise TensorError(f"{field} has values in both contents and {raw_field}; send one",
                              f"{field}.contents")
        if len(raw) != count * dtype.itemsize:
            raise TensorError(f"{field}: {tensor.datatype} shape {list(shape)} needs {count * dtype.itemsize} "
                              f"bytes in {raw_field} ({count} x {dtype.itemsize}), got {len(raw)}", raw_field)
        # Read-only view of the message's bytes; a big-endian host would need a swap, which astype makes.
        arr = np.frombuffer(raw, dtype=dtype)
        return (arr if dtype.isnative else arr.astype(dtype.newbyteorder("="))).reshape(shape)
    values = getattr(tensor.contents, datatype.contents_field)
    if len(values) != count:
        misplaced = [f for f in _CONTENTS_FIELDS
                     if f != datatype.contents_field and len(getattr(tensor.contents, f))]
        hint = f"; values found in {', '.join(misplaced)} instead" if misplaced else ""
        raise TensorError(f"{field}: {tensor.datatype} shape {list(shape)} needs {count} value(s) in "
                          f"contents.{datatype.contents_field}, got {len(values)}{hint}",
                          f"{field}.contents.{datatype.contents_field}")
    return np.array(values, dtype=dtype.newbyteorder("=")).reshape(shape)


def datatype_of(array: np.ndarray) -> str:
    """The protocol's datatype name for a numpy array's dtype."""
    name = _BY_NUMPY.get(array.dtype.newbyteorder("="))
    if name is None:
        raise ValueError(f"numpy dtype {array.dtype} has no Open Inference Protocol datatype here; "
                         f"supported: {', '.join(SUPPORTED_DATATYPES)}")
    return name


def add_output(response: pb.ModelInferResponse, name: str, array: np.ndarray) -> None:
    """Append `array` to the response as output `name`, its values in raw_output_contents."""
    datatype = datatype_of(array)
    response.outputs.add(name=name, datatype=datatype, shape=array.shape)
    response.raw_output_contents.append(
        np.ascontiguousarray(array).astype(_DATATYPES[datatype].numpy_dtype, copy=False).tobytes())


def output_arrays(response: pb.ModelInferResponse) -> dict[str, np.ndarray]:
    """{output name: array} of a response (raw or typed contents), for clients and tests."""
    raw = response.raw_output_contents
    out = {}
    for i, tensor in enumerate(response.outputs):
        # InferOutputTensor has the same fields as InferInputTensor where it matters here.
        out[tensor.name] = to_numpy(tensor, raw[i] if raw else None, field=f"outputs[{i}]",  # type: ignore[arg-type]
                                    raw_field=f"raw_output_contents[{i}]")
    return out
