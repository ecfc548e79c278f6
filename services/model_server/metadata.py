"""What the Open Inference Protocol (KServe V2) front-ends say about the server and a model version.

REST (`rest.py`, `/v2`, `/v2/models/{m}`) and gRPC (`grpc_oip.py`, ServerMetadata, ModelMetadata)
answer from the same facts, so they cannot drift apart.
"""

from __future__ import annotations

from typing import Any

from services.model_server.repository import Registry, Servable

SERVER_NAME = "serving-patterns-model-server"
SERVER_VERSION = "0.1.0"
PLATFORM = "onnxruntime_onnx"
# Every model here answers these two outputs, in this order, with these datatypes.
OUTPUT_DATATYPES = {"label": "INT64", "probabilities": "FP32"}
OUTPUTS = tuple(OUTPUT_DATATYPES)


def v2_metadata(registry: Registry, servable: Servable) -> dict[str, Any]:
    """Model metadata as the V2 REST API's JSON; gRPC's ModelMetadataResponse holds the same
    fields except `parameters`, which that message does not have."""
    card = servable.card
    loaded = sorted(registry.model(servable.name).versions)
    return {
        "name": servable.name,
        "versions": [str(v) for v in loaded],
        "platform": PLATFORM,
        "inputs": [{"name": card.input.name, "datatype": "FP32", "shape": [-1, card.n_features]}],
        "outputs": [
            {"name": "label", "datatype": OUTPUT_DATATYPES["label"], "shape": [-1]},
            {"name": "probabilities", "datatype": OUTPUT_DATATYPES["probabilities"],
             "shape": [-1, len(card.classes)]},
        ],
        "parameters": {"version": servable.version_str, "task": card.task, "classes": card.classes,
                       "feature_names": card.input.feature_names, "passed_gate": servable.passed_gate},
    }


def cached_v2_metadata(registry: Registry, servable: Servable) -> dict[str, Any]:
    """`v2_metadata`, computed again only when the model's set of loaded versions changes."""
    versions = registry.model(servable.name).versions  # replaced wholesale on every change
    cached = servable.cache.get("v2_metadata")
    if cached is None or cached[0] is not versions:
        cached = servable.cache["v2_metadata"] = (versions, v2_metadata(registry, servable))
    return cached[1]
