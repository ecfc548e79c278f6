"""Baseline: a bare `grpc.aio` TensorFlow Serving `PredictionService/Predict` servicer around ONNX Runtime.

    python -m loadtests.baselines.grpc_aio_server --port 8601 [--repository models/repository] [--model wine]

What a user would write with the TF Serving protos and nothing else: read `inputs["input"]` (float32
`tensor_content`), run ONNX Runtime, answer `label` and `probabilities` as tensors. It uses the
model server's wire-compatible protos (`services/protocols/tfs`) only for the message
classes; none of the server's code. No validation beyond a NOT_FOUND for an unknown model, no
metrics, no health service. One ONNX Runtime thread, as the model server.
"""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

import grpc
import numpy as np
import onnxruntime as ort

from services.protocols.tfs import predict_pb2, prediction_service_pb2_grpc
from services.protocols.tfs.tensors import from_numpy

DEFAULT_REPOSITORY = Path(__file__).resolve().parents[2] / "models" / "repository"


class Predictor(prediction_service_pb2_grpc.PredictionServiceServicer):
    def __init__(self, repository: Path, model: str) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        self.model = model
        self.sessions: dict[int, ort.InferenceSession] = {}
        for version_dir in sorted((repository / model).iterdir()):
            if (version_dir / "model.onnx").exists():
                self.sessions[int(version_dir.name)] = ort.InferenceSession(
                    str(version_dir / "model.onnx"), options, providers=["CPUExecutionProvider"]
                )

    async def Predict(self, request, context):  # noqa: N802 (gRPC method name)
        spec = request.model_spec
        session = self.sessions.get(spec.version.value) if spec.name == self.model else None
        if session is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"model {spec.name} version {spec.version.value} not found")
        tensor = request.inputs["input"]
        shape = [d.size for d in tensor.tensor_shape.dim]
        x = np.frombuffer(tensor.tensor_content, dtype=np.float32).reshape(shape)
        labels, probabilities = session.run(None, {"input": x})
        response = predict_pb2.PredictResponse()
        response.model_spec.CopyFrom(spec)
        response.outputs["label"].CopyFrom(from_numpy(labels))
        response.outputs["probabilities"].CopyFrom(from_numpy(probabilities))
        return response


async def serve(host: str, port: int, repository: Path, model: str) -> None:
    server = grpc.aio.server()
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(Predictor(repository, model), server)
    server.add_insecure_port(f"{host}:{port}")
    await server.start()
    await server.wait_for_termination()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8601)
    parser.add_argument("--repository", type=Path, default=DEFAULT_REPOSITORY)
    parser.add_argument("--model", default="wine")
    args = parser.parse_args()
    asyncio.run(serve(args.host, args.port, args.repository, args.model))


if __name__ == "__main__":
    main()
