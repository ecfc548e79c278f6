"""Request bodies every load generator here sends, built once from a model's holdout set.

The same rows go to every target, encoded for its protocol:

- KServe V2 / Open Inference Protocol JSON (the model server's REST, MLServer, the FastAPI baseline):
  ``{"inputs": [{"name": "input", "shape": [n, f], "datatype": "FP32", "data": [...]}]}``
- the app's ``/predict``: ``{"instances": [[...], ...]}``
- TensorFlow Serving ``PredictRequest`` (gRPC): ``inputs["input"]`` as a float32 ``TensorProto``
  in ``tensor_content``, serialized once (``tfs_predict_request``).
- Open Inference Protocol ``ModelInferRequest`` (gRPC; the model server and MLServer): one FP32
  input with its bytes in ``raw_input_contents``, as ``tritonclient.grpc`` sends it
  (``oip_infer_request``).

Rows cycle through the holdout set, so an n-row request is the first n holdout rows repeated as
needed. Values are the holdout's float32 values written as the CSV has them.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_REPOSITORY = REPO_ROOT / "models" / "repository"


@dataclass(frozen=True)
class ModelRef:
    name: str
    version: int

    def __str__(self) -> str:
        return f"{self.name} v{self.version}"


@cache
def holdout_rows(name: str, version: int, repository: Path = DEFAULT_REPOSITORY) -> tuple[list[str], list[list[float]]]:
    """(feature names, rows) of a model version's holdout set; rows as Python floats, label dropped."""
    path = repository / name / str(version) / "holdout.csv"
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: run `make models`")
    with path.open() as f:
        reader = csv.reader(f)
        header = next(reader)
        rows = [[float(v) for v in r[:-1]] for r in reader]
    return header[:-1], rows


@cache
def holdout_labels(name: str, version: int, repository: Path = DEFAULT_REPOSITORY) -> list[int]:
    """The true class of every holdout row (the CSV's last column), in row order."""
    path = repository / name / str(version) / "holdout.csv"
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: run `make models`")
    with path.open() as f:
        reader = csv.reader(f)
        next(reader)
        return [int(float(r[-1])) for r in reader]


def labels_for(model: ModelRef, n: int, offset: int = 0, repository: Path = DEFAULT_REPOSITORY) -> list[int]:
    """True labels of the n rows starting at holdout row `offset` (cycling), as `rows_for` sends them."""
    labels = holdout_labels(model.name, model.version, repository)
    return [labels[(offset + i) % len(labels)] for i in range(n)]


def rows_for(model: ModelRef, n: int, repository: Path = DEFAULT_REPOSITORY, offset: int = 0) -> list[list[float]]:
    _, rows = holdout_rows(model.name, model.version, repository)
    return [rows[(offset + i) % len(rows)] for i in range(n)]


def holdout_size(model: ModelRef, repository: Path = DEFAULT_REPOSITORY) -> int:
    return len(holdout_labels(model.name, model.version, repository))


def v2_infer_path(model: ModelRef) -> str:
    return f"/v2/models/{model.name}/versions/{model.version}/infer"


def v2_infer_body(model: ModelRef, n: int, repository: Path = DEFAULT_REPOSITORY, offset: int = 0) -> bytes:
    rows = rows_for(model, n, repository, offset)
    tensor = {
        "name": "input",
        "shape": [n, len(rows[0])],
        "datatype": "FP32",
        "data": [v for row in rows for v in row],
    }
    return json.dumps({"inputs": [tensor]}, separators=(",", ":")).encode()


def app_predict_body(model: ModelRef, n: int, repository: Path = DEFAULT_REPOSITORY, offset: int = 0) -> bytes:
    return json.dumps({"instances": rows_for(model, n, repository, offset)}, separators=(",", ":")).encode()


def instances_json(model: ModelRef, n: int, repository: Path = DEFAULT_REPOSITORY, offset: int = 0) -> bytes:
    """The `instances` array of a stream-scoring request record (rows in contract order), as JSON."""
    return json.dumps(rows_for(model, n, repository, offset), separators=(",", ":")).encode()


TFS_PREDICT_METHOD = "/tensorflow.serving.PredictionService/Predict"


def tfs_predict_request(model: ModelRef, n: int, repository: Path = DEFAULT_REPOSITORY, offset: int = 0):
    """A TF Serving PredictRequest message (our wire-compatible protos; no TensorFlow)."""
    from services.protocols.tfs import predict_pb2
    from services.protocols.tfs.tensors import from_numpy

    x = np.asarray(rows_for(model, n, repository, offset), dtype=np.float32)
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model.name
    request.model_spec.version.value = model.version
    request.inputs["input"].CopyFrom(from_numpy(x))
    return request


OIP_INFER_METHOD = "/inference.GRPCInferenceService/ModelInfer"


def oip_infer_request(model: ModelRef, n: int, repository: Path = DEFAULT_REPOSITORY):
    """An Open Inference Protocol ModelInferRequest (our wire-compatible protos)."""
    from services.protocols.oip import open_inference_pb2

    x = np.asarray(rows_for(model, n, repository), dtype="<f4")
    request = open_inference_pb2.ModelInferRequest(model_name=model.name, model_version=str(model.version),
                                                   raw_input_contents=[x.tobytes()])
    request.inputs.add(name="input", datatype="FP32", shape=x.shape)
    return request


def check_v2_response(body: bytes, rows: int) -> list[int]:
    """The predicted labels of a KServe V2 response; ValueError unless it carries `rows` of them."""
    data = json.loads(body)
    outputs = {o["name"]: o for o in data.get("outputs", [])}
    label = outputs.get("label")
    if label is None or label["shape"][0] != rows or len(label.get("data", [])) != rows:
        raise ValueError(f"V2 response without {rows} labels: {body[:200]!r}")
    return [int(v) for v in label["data"]]


def check_app_response(body: bytes, rows: int) -> list[int]:
    """The predicted labels of a /predict response; ValueError unless it carries `rows` of them."""
    data = json.loads(body)
    labels = data.get("labels", [])
    if len(labels) != rows:
        raise ValueError(f"/predict response without {rows} labels: {body[:200]!r}")
    return [int(v) for v in labels]


def tfs_labels(response, rows: int) -> list[int]:
    """The predicted labels of a PredictResponse message; ValueError unless it carries `rows` of them."""
    from services.protocols.tfs.tensors import to_numpy

    if "label" not in response.outputs:
        raise ValueError(f"PredictResponse without labels: outputs {sorted(response.outputs)}")
    labels = to_numpy(response.outputs["label"]).reshape(-1)
    if labels.shape[0] != rows:
        raise ValueError(f"PredictResponse with {labels.shape[0]} labels for {rows} rows")
    return [int(v) for v in labels]


def check_tfs_response(raw: bytes, rows: int) -> None:
    from services.protocols.tfs import predict_pb2
    from services.protocols.tfs.tensors import to_numpy

    response = predict_pb2.PredictResponse.FromString(raw)
    if "label" not in response.outputs or to_numpy(response.outputs["label"]).shape[0] != rows:
        raise ValueError(f"PredictResponse without {rows} labels: outputs {sorted(response.outputs)}")


def check_oip_response(raw: bytes, rows: int) -> None:
    """Raise ValueError unless a ModelInferResponse carries `rows` labels (raw or typed contents:
    the model server answers raw, MLServer typed)."""
    from services.protocols.oip import open_inference_pb2
    from services.protocols.oip.tensors import output_arrays

    outputs = output_arrays(open_inference_pb2.ModelInferResponse.FromString(raw))
    if "label" not in outputs or outputs["label"].shape[0] != rows:
        raise ValueError(f"ModelInferResponse without {rows} labels: outputs {sorted(outputs)}")


def feedback_id(headers) -> str | None:
    """What names a router's answer in `POST /feedback`: its signed `x-feedback-token`, which any
    router replica accepts, else `x-request-id` (a request id the client chose itself is known only
    to the replica that answered)."""
    return headers.get("x-feedback-token") or headers.get("x-request-id")
