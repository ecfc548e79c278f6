"""Where the consuming application's predictions come from.

The app has one HTTP API (`services/apps/api.py`) and three shapes that differ only in their
backend:

- `LocalBackend` (embedded): the model in-process, loaded from the packaged artifact;
- a remote backend (model-as-service): calls a model server over gRPC or REST;
- a hot-swapping backend (model-as-data): models arrive over Kafka and are swapped in.

A backend answers with the version that actually computed the rows, so a response is always
labelled truthfully even while versions change underneath.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np

from services.core.card import ModelCard
from services.core.contract import InputContract
from services.core.runtime import OnnxModel


@dataclass(frozen=True)
class BackendResult:
    labels: np.ndarray
    probabilities: np.ndarray
    model_name: str
    model_version: int


class Backend(ABC):
    """A source of predictions for one model contract."""

    @property
    @abstractmethod
    def ready(self) -> bool:
        """True once predictions can be served."""

    @property
    @abstractmethod
    def card(self) -> ModelCard:
        """The card of the model currently served (its contract validates requests)."""

    @abstractmethod
    async def predict(self, x: np.ndarray) -> BackendResult:
        """Predict a validated float32 matrix."""

    async def start(self) -> None:
        """Acquire resources (load a model, open channels). Called once before serving."""

    async def stop(self) -> None:
        """Release resources. Called once at shutdown."""


class LocalBackend(Backend):
    """The embedded shape: one ONNX model in this process."""

    def __init__(self, model: OnnxModel) -> None:
        self.model = model

    @property
    def ready(self) -> bool:
        return self.model.ready

    @property
    def card(self) -> ModelCard:
        return self.model.card

    async def start(self) -> None:
        await self.model.load()

    async def stop(self) -> None:
        await self.model.unload()

    async def predict(self, x: np.ndarray) -> BackendResult:
        p = self.model.predict_sync(x)
        return BackendResult(p.labels, p.probabilities, self.model.name, self.model.version)


class PredictionSink(ABC):
    """Receives every answered prediction, e.g. the Kafka prediction log.

    `record` runs on the request path after the answer is computed: it must never block or
    raise (queue and return). `start`/`stop` follow the app's lifespan.
    """

    @abstractmethod
    def record(self, request_id: str, x: np.ndarray, result: BackendResult, latency_s: float) -> None:
        """Take one answered request: its validated input, the result and its latency so far."""

    async def start(self) -> None:
        """Acquire resources before the first request."""

    async def stop(self) -> None:
        """Flush what can be flushed and release resources at shutdown."""


class ContractCache:
    """One `InputContract` per card, rebuilt only when the served card changes."""

    def __init__(self, **options) -> None:
        self._options = options
        self._card: ModelCard | None = None
        self._contract: InputContract | None = None

    def for_card(self, card: ModelCard) -> InputContract:
        if card is not self._card:
            self._contract = InputContract(card, **self._options)
            self._card = card
        assert self._contract is not None
        return self._contract
