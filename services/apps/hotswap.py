"""The model-as-data backend: model versions arrive over Kafka and are hot-swapped in.

    backend = HotSwapBackend(follower)      # a ModelFollower of services/kafka/follower.py

The follower does the work (verify the signed message, then the model lifecycle of
services/core/lifecycle.py: contract, load, integration check of the holdout set, warm up,
ready, swap, drain, unload; refusals counted in `model_rejections_total{reason}`, logged and
written to `model-events`). This backend is the app's side of it: the API predicts with whichever
version the follower's slot holds, and /readyz follows the follower's readiness.

The app's input path, which the integration check exercises, is `Version.score` on the version
`version_builder` makes: the rows by feature name through the `InputContract` (as
services/apps/api.py validates a request) and the same in-process prediction as `predict`.

A request leases the version serving now and predicts without yielding in between, so each
response is computed entirely by one version and names it; the swap's drain waits for leases
still held before the old version is unloaded.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from services.apps.backend import Backend, BackendResult
from services.core.card import ModelCard
from services.core.contract import InputContract
from services.core.errors import Unavailable
from services.core.lifecycle import Version
from services.core.runtime import OnnxModel
from services.kafka.follower import ModelFollower


def version_builder(max_batch_size: int) -> Callable[[OnnxModel], Version]:
    """How the app serves a loaded model: its contract, as services/apps/api.py validates requests."""

    def build(model: OnnxModel) -> Version:
        return Version(model, InputContract(model.card, max_batch_size=max_batch_size))

    return build


class HotSwapBackend(Backend):
    def __init__(self, follower: ModelFollower[Version]) -> None:
        self.follower = follower
        self.model_name = follower.model_name

    @property
    def ready(self) -> bool:
        return self.follower.ready

    @property
    def card(self) -> ModelCard:
        version = self.follower.slot.current
        if version is None:
            raise Unavailable("no model version has been accepted yet")
        return version.card

    @property
    def model(self) -> OnnxModel | None:
        version = self.follower.slot.current
        return version.model if version is not None else None

    async def start(self) -> None:
        await self.follower.start()

    async def stop(self) -> None:
        await self.follower.stop()

    async def predict(self, x: np.ndarray) -> BackendResult:
        # No await inside the lease: the version that computed the rows is the one the response names.
        with self.follower.slot.lease() as version:
            p = version.model.predict_sync(x)
            return BackendResult(p.labels, p.probabilities, version.name, version.version)
