"""Worker process that answers questions using ONLY our generated modules.

Why a separate process: our modules and TensorFlow's both define
``tensorflow.TensorProto``, ``tensorflow.serving.ModelSpec`` and friends in
protobuf's default descriptor pool, and the pool refuses a second definition
of a symbol ("duplicate symbol"), whatever the .proto file is called. So the
test process holds the official classes and asks this process what OUR side
makes of the same bytes.

Protocol: one JSON list of operations on stdin, one JSON list of results (same
order) on stdout. Bytes travel as base64.

* ``{"op": "reserialize", "type": FULL_NAME, "data": B64}`` -> parse with our
  class, return ``data`` (deterministic re-serialization) and ``text``
  (text format, which spells every field by NAME, so equal text means equal
  names, not just equal numbers).
* ``{"op": "to_numpy", "data": B64}`` -> ``{"npy": B64}`` (numpy .npy bytes) or
  ``{"error": MESSAGE}`` when tensors.to_numpy raises ValueError.
* ``{"op": "from_numpy", "npy": B64}`` -> ``{"data": B64}`` of a TensorProto.
* ``{"op": "describe"}`` -> ``{"files": [B64 FileDescriptorProto, ...]}`` for
  every one of our .proto files, for field-by-field comparison.

Run: ``python -m tests.compat.ours_codec < ops.json``.
"""

from __future__ import annotations

import base64
import io
import json
import sys
from typing import Any

import numpy as np
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, text_format

# Importing every module registers all our messages in the default pool.
from services.protocols.tfs import (
    error_codes_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_pb2,
    model_service_pb2,
    predict_pb2,
    prediction_service_pb2,
    signature_def_pb2,
    status_pb2,
    tensor_pb2,
    tensor_shape_pb2,
    types_pb2,
)
from services.protocols.tfs.tensors import from_numpy, to_numpy

_OUR_MODULES = (
    types_pb2,
    tensor_shape_pb2,
    tensor_pb2,
    signature_def_pb2,
    error_codes_pb2,
    status_pb2,
    model_pb2,
    predict_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    prediction_service_pb2,
    model_service_pb2,
)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text.encode("ascii"))


def _reserialize(op: dict[str, Any]) -> dict[str, Any]:
    descriptor = descriptor_pool.Default().FindMessageTypeByName(op["type"])
    message = message_factory.GetMessageClass(descriptor)()
    message.ParseFromString(_unb64(op["data"]))
    return {
        "data": _b64(message.SerializeToString(deterministic=True)),
        "text": text_format.MessageToString(message),
    }


def _to_numpy(op: dict[str, Any]) -> dict[str, Any]:
    proto = tensor_pb2.TensorProto.FromString(_unb64(op["data"]))
    try:
        array = to_numpy(proto)
    except ValueError as err:
        return {"error": str(err)}
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return {"npy": _b64(buffer.getvalue())}


def _from_numpy(op: dict[str, Any]) -> dict[str, Any]:
    array = np.load(io.BytesIO(_unb64(op["npy"])), allow_pickle=False)
    return {"data": _b64(from_numpy(array).SerializeToString())}


def _describe(op: dict[str, Any]) -> dict[str, Any]:
    files = []
    for module in _OUR_MODULES:
        proto = descriptor_pb2.FileDescriptorProto()
        module.DESCRIPTOR.CopyToProto(proto)
        files.append(_b64(proto.SerializeToString()))
    return {"files": files}


_OPS = {"reserialize": _reserialize, "to_numpy": _to_numpy, "from_numpy": _from_numpy, "describe": _describe}


def main() -> None:
    ops = json.load(sys.stdin)
    json.dump([_OPS[op["op"]](op) for op in ops], sys.stdout)


if __name__ == "__main__":
    main()
