"""Baseline: the minimal FastAPI + uvicorn endpoint a user would write around ONNX Runtime.

    python -m loadtests.baselines.fastapi_app --port 8600 [--repository models/repository] [--model wine]

Speaks the KServe V2 infer call (`POST /v2/models/{name}/versions/{version}/infer`, FP32 `data`
with `shape`) so the benchmark sends it the same bytes as the model server and MLServer. It loads
every version of `--model` at start-up. Deliberately bare: no validation beyond what numpy and
ONNX Runtime do themselves, no metrics, no logging per request. It is not careless either: orjson
in and out, uvloop + httptools, no access log, one ONNX Runtime thread (as the model server), so
the comparison is with a *good* minimal endpoint.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import onnxruntime as ort
import orjson
import uvicorn
from fastapi import FastAPI, HTTPException, Request, Response

DEFAULT_REPOSITORY = Path(__file__).resolve().parents[2] / "models" / "repository"


def load_sessions(repository: Path, model: str) -> dict[str, ort.InferenceSession]:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    sessions = {}
    for version_dir in sorted((repository / model).iterdir()):
        if (version_dir / "model.onnx").exists():
            sessions[version_dir.name] = ort.InferenceSession(
                str(version_dir / "model.onnx"), options, providers=["CPUExecutionProvider"]
            )
    return sessions


def create_app(repository: Path, model: str) -> FastAPI:
    sessions = load_sessions(repository, model)
    app = FastAPI()

    @app.post("/v2/models/{name}/versions/{version}/infer")
    async def infer(name: str, version: str, request: Request) -> Response:
        session = sessions.get(version) if name == model else None
        if session is None:
            raise HTTPException(404, f"model {name} version {version} not found")
        body = orjson.loads(await request.body())
        tensor = body["inputs"][0]
        x = np.asarray(tensor["data"], dtype=np.float32).reshape(tensor["shape"])
        labels, probabilities = session.run(None, {"input": x})
        payload = {
            "model_name": name,
            "model_version": version,
            "outputs": [
                {"name": "label", "shape": list(labels.shape), "datatype": "INT64", "data": labels.ravel()},
                {"name": "probabilities", "shape": list(probabilities.shape), "datatype": "FP32",
                 "data": probabilities.ravel()},
            ],
        }
        return Response(orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY), media_type="application/json")

    @app.get("/v2/health/ready")
    async def ready() -> dict:
        return {"ready": True}

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8600)
    parser.add_argument("--repository", type=Path, default=DEFAULT_REPOSITORY)
    parser.add_argument("--model", default="wine")
    args = parser.parse_args()
    uvicorn.run(
        create_app(args.repository, args.model), host=args.host, port=args.port, loop="uvloop", http="httptools",
        access_log=False, log_level="warning",
    )


if __name__ == "__main__":
    main()
