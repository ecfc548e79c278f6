"""Conversions between TensorFlow Serving ``TensorProto`` messages and numpy arrays.

Why this module exists: the model server must read and write tensors exactly as
TensorFlow's ``tf.make_ndarray`` / ``tf.make_tensor_proto`` do, without
importing TensorFlow. Only the numeric dtypes our models use are supported;
anything else is refused with a ``ValueError`` whose message names the
problem, so the server can turn it into a gRPC ``INVALID_ARGUMENT``.

Encoding rules followed (they are TensorFlow's):

* ``tensor_content`` holds the whole tensor as row-major little-endian bytes
  and, when non-empty, wins over the typed ``*_val`` fields.
* Otherwise the typed field for the dtype holds the values. A single value
  with a larger shape means "every element has this value": that is what
  ``tf.make_tensor_proto(1.5, shape=[2, 2])`` sends, so we must accept it.
* An empty ``tensor_shape`` is a scalar (one element).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from services.protocols.tfs import tensor_pb2, tensor_shape_pb2, types_pb2


@dataclass(frozen=True)
class _DtypeCodec:
    """How one TensorFlow dtype maps onto numpy and onto the TensorProto fields."""

    numpy_dtype: np.dtype
    value_field: str  # the typed repeated field TensorFlow uses for this dtype
    name: str


# Little-endian numpy dtypes on purpose: tensor_content is little-endian on the
# wire whatever the host byte order is.
_CODECS: dict[int, _DtypeCodec] = {
    types_pb2.DT_FLOAT: _DtypeCodec(np.dtype("<f4"), "float_val", "DT_FLOAT"),
    types_pb2.DT_DOUBLE: _DtypeCodec(np.dtype("<f8"), "double_val", "DT_DOUBLE"),
    types_pb2.DT_INT32: _DtypeCodec(np.dtype("<i4"), "int_val", "DT_INT32"),
    types_pb2.DT_INT64: _DtypeCodec(np.dtype("<i8"), "int64_val", "DT_INT64"),
}
_DT_BY_NUMPY: dict[np.dtype, int] = {codec.numpy_dtype.newbyteorder("="): dt for dt, codec in _CODECS.items()}

SUPPORTED_DTYPES: tuple[str, ...] = tuple(codec.name for codec in _CODECS.values())


def dtype_name(dtype: int) -> str:
    """Readable name of a DataType number, for error messages."""
    try:
        return str(types_pb2.DataType.Name(dtype))
    except ValueError:
        # Open enum: a newer client may send a number this file does not list.
        return f"DataType({dtype})"


def _shape_of(proto: tensor_pb2.TensorProto) -> tuple[int, ...]:
    shape = proto.tensor_shape
    if shape.unknown_rank:
        raise ValueError("tensor_shape has unknown_rank set; a tensor with values needs a fully known shape")
    dims = tuple(dim.size for dim in shape.dim)
    if any(size < 0 for size in dims):
        raise ValueError(
            f"tensor_shape {list(dims)} has a negative (unknown) dimension; a tensor needs a fully known shape"
        )
    return dims


class TensorTooLarge(ValueError):
    """The declared shape holds more values than the caller accepts (checked before any allocation)."""


def to_numpy(proto: tensor_pb2.TensorProto, max_elements: int | None = None) -> np.ndarray:
    """Decode a TensorProto into a numpy array of its declared dtype and shape.

    Raises ValueError for an unsupported dtype, an unknown shape, or a value
    count (or byte length) that does not match the declared shape; TensorTooLarge
    when the shape declares more than `max_elements` values. The check comes
    before any allocation: TensorFlow's one-value "splat" form lets a 49-byte
    message declare a gigabyte.
    """
    codec = _CODECS.get(proto.dtype)
    if codec is None:
        raise ValueError(
            f"unsupported tensor dtype {dtype_name(proto.dtype)}; supported: {', '.join(SUPPORTED_DTYPES)}"
        )
    shape = _shape_of(proto)
    count = math.prod(shape)
    if max_elements is not None and count > max_elements:
        raise TensorTooLarge(f"tensor_shape {list(shape)} declares {count} values; at most {max_elements} are accepted")

    if proto.tensor_content:
        content = proto.tensor_content
        expected_bytes = count * codec.numpy_dtype.itemsize
        if len(content) != expected_bytes:
            raise ValueError(
                f"{codec.name} tensor of shape {list(shape)} needs {expected_bytes} bytes of tensor_content "
                f"({count} x {codec.numpy_dtype.itemsize}), got {len(content)}"
            )
        # frombuffer shares the message's immutable bytes; astype makes a
        # writable native-order copy so callers may modify the result freely.
        flat = np.frombuffer(content, dtype=codec.numpy_dtype).astype(codec.numpy_dtype.newbyteorder("="))
        return flat.reshape(shape)

    values: Sequence[float] | Sequence[int] = getattr(proto, codec.value_field)
    native = codec.numpy_dtype.newbyteorder("=")
    if len(values) == count:
        return np.array(values, dtype=native).reshape(shape)
    if len(values) == 1 and count > 1:
        # TensorFlow's compact "splat" form: one value fills the whole shape.
        return np.full(shape, values[0], dtype=native)

    misplaced = _other_populated_fields(proto, codec.value_field)
    hint = f"; values found in {', '.join(misplaced)} instead, which do not belong to {codec.name}" if misplaced else ""
    raise ValueError(
        f"{codec.name} tensor of shape {list(shape)} needs {count} value(s) in {codec.value_field} "
        f"(or tensor_content), got {len(values)}{hint}"
    )


_VALUE_FIELDS: tuple[str, ...] = (
    "half_val",
    "float_val",
    "double_val",
    "int_val",
    "string_val",
    "scomplex_val",
    "int64_val",
    "bool_val",
    "dcomplex_val",
    "uint32_val",
    "uint64_val",
)


def _other_populated_fields(proto: tensor_pb2.TensorProto, expected: str) -> list[str]:
    # Only computed on the error path, to make a wrong-field mistake obvious.
    return [name for name in _VALUE_FIELDS if name != expected and len(getattr(proto, name))]


def from_numpy(array: np.ndarray | Sequence[object] | float | int) -> tensor_pb2.TensorProto:
    """Encode a numpy array (or array-like) as a TensorProto using tensor_content.

    tensor_content is one bytes copy instead of one Python object per element,
    which is what makes large responses cheap; TensorFlow's own
    ``make_tensor_proto`` uses it for numeric arrays too.
    """
    arr = np.asarray(array)
    dtype_enum = _DT_BY_NUMPY.get(arr.dtype.newbyteorder("="))
    if dtype_enum is None:
        raise ValueError(
            f"unsupported numpy dtype {arr.dtype}; supported: "
            + ", ".join(f"{codec.numpy_dtype.newbyteorder('=').name} ({codec.name})" for codec in _CODECS.values())
        )
    codec = _CODECS[dtype_enum]
    # ascontiguousarray fixes Fortran-ordered/strided views; astype fixes byte order.
    raw = np.ascontiguousarray(arr).astype(codec.numpy_dtype, copy=False).tobytes()
    return tensor_pb2.TensorProto(
        dtype=dtype_enum,  # type: ignore[arg-type]  # the stub types the enum as a wrapper class
        tensor_shape=_shape_proto(arr.shape),
        tensor_content=raw,
    )


def _shape_proto(shape: tuple[int, ...]) -> tensor_shape_pb2.TensorShapeProto:
    return tensor_shape_pb2.TensorShapeProto(dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=size) for size in shape])
