"""ONNX Runtime model: load an artifact, verify it, predict, unload.

`OnnxModel` follows MLServer's `MLModel` shape: async `load()`, `predict()` and `unload()`,
plus `predict_sync()` for callers already on a worker thread or where a 10 µs model call is
cheaper than a thread hop (the common case for the models here).

Loading checks, in order: the card parses; the ONNX bytes hash to the card's sha256; the
session's input and outputs match the card's contract. Any failure raises an `ArtifactError`
and nothing is half-loaded. Models only ever come from ONNX bytes: no pickle on this path.

Services do not drive this by hand: the model lifecycle (services/core/lifecycle.py) loads an
`OnnxModel`, checks it against its holdout set, warms it up, swaps it in and unloads it.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from services.core.card import ModelCard
from services.core.errors import ArtifactError, IntegrityError, Unavailable

CARD_FILE = "model-card.json"
MODEL_FILE = "model.onnx"


@dataclass(frozen=True)
class RuntimeOptions:
    intra_op_threads: int = 1
    """Threads inside one operator. 1 suits small models and leaves cores to the server."""
    inter_op_threads: int = 1
    """Threads across independent operators."""


@dataclass(frozen=True)
class Prediction:
    labels: np.ndarray  # int64 [rows]
    probabilities: np.ndarray  # float32 [rows, classes]


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def verify_checksum(onnx_bytes: bytes, card: ModelCard, source: str) -> None:
    actual = sha256_hex(onnx_bytes)
    if not hmac.compare_digest(actual, card.sha256):
        raise IntegrityError(
            f"{source}: sha256 of the ONNX bytes is {actual}, the model card says {card.sha256}; refusing to load"
        )


class OnnxModel:
    """One model version in ONNX Runtime."""

    def __init__(self, card: ModelCard, onnx_bytes: bytes, options: RuntimeOptions | None = None,
                 source: str = "") -> None:
        self.card = card
        self.options = options or RuntimeOptions()
        self.source = source or f"{card.name} v{card.version}"
        self._bytes: bytes | None = onnx_bytes
        self._session: ort.InferenceSession | None = None
        self._outputs = ["label", "probabilities"]

    @classmethod
    def from_dir(cls, path: Path, options: RuntimeOptions | None = None) -> OnnxModel:
        card = ModelCard.from_file(path / CARD_FILE)
        try:
            onnx_bytes = (path / MODEL_FILE).read_bytes()
        except OSError as exc:
            raise ArtifactError(f"cannot read {path / MODEL_FILE}: {exc.strerror}") from exc
        return cls(card, onnx_bytes, options, source=str(path))

    @property
    def name(self) -> str:
        return self.card.name

    @property
    def version(self) -> int:
        return self.card.version

    @property
    def ready(self) -> bool:
        return self._session is not None

    async def load(self) -> None:
        # Session creation for a large forest takes tens of ms: keep the event loop free.
        await asyncio.to_thread(self.load_sync)

    def load_sync(self) -> None:
        if self._bytes is None:
            raise ArtifactError(f"{self.source}: model was unloaded; build a new OnnxModel")
        verify_checksum(self._bytes, self.card, self.source)
        so = ort.SessionOptions()
        so.intra_op_num_threads = self.options.intra_op_threads
        so.inter_op_num_threads = self.options.inter_op_threads
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        try:
            session = ort.InferenceSession(self._bytes, sess_options=so, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own untyped errors for corrupt models
            raise ArtifactError(f"{self.source}: ONNX Runtime cannot load the model: {exc}") from exc
        self._check_session(session)
        self._session = session
        self._bytes = None  # the session holds what it needs

    def _check_session(self, session: ort.InferenceSession) -> None:
        inputs = session.get_inputs()
        spec = self.card.input
        if len(inputs) != 1 or inputs[0].name != spec.name:
            raise ArtifactError(
                f"{self.source}: the ONNX graph's inputs {[i.name for i in inputs]} do not match "
                f"the card's input {spec.name!r}"
            )
        width = inputs[0].shape[-1]
        if isinstance(width, int) and width != self.card.n_features:
            raise ArtifactError(
                f"{self.source}: the ONNX graph takes {width} features, the card lists {self.card.n_features}"
            )
        names = {o.name for o in session.get_outputs()}
        if not set(self._outputs) <= names:
            raise ArtifactError(f"{self.source}: the ONNX graph lacks outputs {set(self._outputs) - names}")

    def predict_sync(self, x: np.ndarray) -> Prediction:
        session = self._session
        if session is None:
            raise Unavailable(f"model {self.card.name} v{self.card.version} is not loaded")
        labels, proba = session.run(self._outputs, {self.card.input.name: x})
        return Prediction(labels=labels, probabilities=proba)

    async def predict(self, x: np.ndarray) -> Prediction:
        return self.predict_sync(x)

    async def unload(self) -> None:
        self._session = None
