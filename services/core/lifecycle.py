"""The one model lifecycle every service runs: load -> verify -> integration check -> warm up ->
ready -> swap -> drain -> unload.

    lifecycle = Lifecycle(RuntimeOptions(), skew_tolerance=0.005)
    new = await lifecycle.prepare(artifact, build)      # ready, or raises a refusal
    await slot.swap(new)                                # serves; the old version drains, then unloads

`prepare` (MLServer's registry order: a version is loaded and ready before it replaces anything):

1. **load + verify**: the card names the version expected (`identity`) and is compatible with
   the contracts the caller names (`references`: the inputs its clients send, the version
   serving now); `OnnxModel.load()` (off the event loop) checks the ONNX bytes' sha256 against
   the card and the graph's input and outputs against the card's contract;
2. **integration check**: the holdout set travels with the model (`holdout.csv` beside
   `model.onnx`; inside the signed model message). Its rows go, by feature name as a client
   sends them, through the service's own input path (`Version.score`: the same contract
   validation and runtime predict that serve requests, in requests of the contract's batch
   limit), and the accuracy they reach is compared with the accuracy the card claims for the
   same rows. A difference beyond `skew_tolerance` is training/serving skew: the version is
   refused (`Skew`). The range policy is left out: it guards live traffic against drift, and
   holdout rows may lie outside the training range by design;
3. **warm up**: one prediction on the training means through `Version.infer`, output shapes
   checked against the card;
4. **ready**: `version.ready` turns true; the caller swaps it in.

A refusal raises an `ArtifactError` whose `code` is the reason every service records (metric
label, `model-events` record, GetModelStatus error, log): `name`, `contract`, `checksum`,
`load`, `holdout`, `skew` here, `malformed` and `signature` for model messages
(`services/kafka/messages.py`). Nothing half-prepared is left behind, whatever serves keeps
serving, and the lifecycle logs the refusal once (`log_refusal`); the caller counts it and
writes its own rejection record.

**Swap, drain, unload.** A `Version` counts the requests using it (`lease()`, thread-safe: the
scoring worker predicts on its Kafka thread). `Slot.swap(new)` replaces the served reference in
one assignment, then closes the old version: no new lease is granted, the leases held are waited
for (up to `drain_timeout_s`), then the model is unloaded. The model server's registry holds
several versions per model and swaps its own maps, then closes the versions leaving them the
same way (`Version.close`).
"""

from __future__ import annotations

import asyncio
import csv
import io
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, TypeVar

import numpy as np

from services.core.card import ModelCard
from services.core.contract import InputContract
from services.core.errors import ArtifactError, ClientError, IntegrityError, ServingError, Unavailable
from services.core.runtime import CARD_FILE, MODEL_FILE, OnnxModel, RuntimeOptions

log = logging.getLogger(__name__)

HOLDOUT_FILE = "holdout.csv"
LABEL_COLUMN = "label"
HOLDOUT_METRIC = "accuracy"
DEFAULT_SKEW_TOLERANCE = 0.005
"""Absolute accuracy difference tolerated between the card's claim and the consumer's own scoring.
One row of the 143-row breast-cancer holdout is 0.007: any disagreement there is skew."""
DEFAULT_DRAIN_TIMEOUT_S = 30.0


# -- why a version is refused (leaves of services.core.errors; `code` is the recorded reason) ------


class NameMismatch(ArtifactError):
    code = "name"


class ContractMismatch(ArtifactError):
    code = "contract"


class ChecksumMismatch(IntegrityError):
    code = "checksum"


class LoadFailed(ArtifactError):
    code = "load"


class HoldoutUnusable(ArtifactError):
    code = "holdout"


class Skew(ArtifactError):
    code = "skew"


def log_refusal(name: str, version: int | None, exc: ServingError, source: str) -> None:
    """The one log line of a refused version, whichever step and service refused it."""
    log.warning(
        "model version refused; what serves now keeps serving",
        extra={"model_name": name, "model_version": version, "reason": exc.code, "detail": exc.message,
               "source": source},
    )


# -- artifacts and their holdout sets ---------------------------------------------------------------


@dataclass(frozen=True)
class Artifact:
    """One model version as bytes, from a repository directory or a model message."""

    card: ModelCard
    onnx_bytes: bytes
    holdout_csv: bytes | None
    source: str

    @classmethod
    def from_dir(cls, path: Path) -> Artifact:
        """Reads `model-card.json`, `model.onnx` and `holdout.csv` (blocking: call off the loop)."""
        try:
            card = ModelCard.from_file(path / CARD_FILE)
        except ArtifactError as exc:
            raise LoadFailed(exc.message) from exc
        try:
            onnx_bytes = (path / MODEL_FILE).read_bytes()
        except OSError as exc:
            raise LoadFailed(f"cannot read {path / MODEL_FILE}: {exc.strerror}") from exc
        try:
            holdout: bytes | None = (path / HOLDOUT_FILE).read_bytes()
        except FileNotFoundError:
            holdout = None  # refused by the integration check, which says why
        except OSError as exc:
            raise HoldoutUnusable(f"cannot read {path / HOLDOUT_FILE}: {exc.strerror}") from exc
        return cls(card, onnx_bytes, holdout, str(path))


@dataclass(frozen=True)
class Holdout:
    """The rows a model's holdout metrics were measured on: features by name, and the true labels."""

    feature_names: list[str]
    x: np.ndarray  # float64 [rows, features], as written (float32 values, exactly)
    y: np.ndarray  # int64 [rows], class indices

    @classmethod
    def parse(cls, raw: bytes, source: str = "holdout set") -> Holdout:
        try:
            reader = csv.reader(io.StringIO(raw.decode()))
            header = next(reader)
            rows = [[float(v) for v in row] for row in reader if row]
        except (UnicodeDecodeError, StopIteration, ValueError, csv.Error) as exc:
            raise HoldoutUnusable(f"{source}: the holdout set is not a numeric CSV with a header: {exc}") from exc
        if len(header) < 2 or header[-1] != LABEL_COLUMN:
            raise HoldoutUnusable(f"{source}: the holdout set's last column must be {LABEL_COLUMN!r}")
        if not rows or any(len(r) != len(header) for r in rows):
            raise HoldoutUnusable(f"{source}: the holdout set has no rows or rows of uneven length")
        data = np.array(rows, dtype=np.float64)
        return cls(header[:-1], data[:, :-1], data[:, -1].astype(np.int64))

    def instances(self) -> list[dict[str, float]]:
        """The rows as a client sends them: objects keyed by feature name."""
        names = self.feature_names
        return [dict(zip(names, row, strict=True)) for row in self.x.tolist()]


# -- one loaded version, as a service serves it -----------------------------------------------------


class Version:
    """A loaded model version with its input contract and the requests using it right now.

    Services subclass it for what they serve with: `infer` is the prediction (the model server
    goes through its batcher), `score` the input path the integration check exercises.
    """

    def __init__(self, model: OnnxModel, contract: InputContract) -> None:
        self.model = model
        self.card: ModelCard = model.card
        self.name = model.card.name
        self.version = model.card.version
        self.contract = contract
        self.ready = False
        self._lock = threading.Lock()
        self._in_flight = 0
        self._retired = False

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def try_enter(self) -> bool:
        """Count one more request on this version; False once it is retired (being closed)."""
        with self._lock:
            if self._retired:
                return False
            self._in_flight += 1
            return True

    def leave(self) -> None:
        with self._lock:
            self._in_flight -= 1

    @contextmanager
    def lease(self) -> Iterator[Version]:
        if not self.try_enter():
            raise Unavailable(f"model {self.name} v{self.version} is being unloaded; retry")
        try:
            yield self
        finally:
            self.leave()

    async def infer(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Validated float32 rows -> (labels int64 [rows], probabilities float32 [rows, classes])."""
        p = self.model.predict_sync(x)
        return p.labels, p.probabilities

    async def score(self, instances: list[dict[str, float]]) -> np.ndarray:
        """Rows as a client sends them -> labels, through this service's input path."""
        labels, _ = await self.infer(self.contract.rows_to_array(instances))
        return labels

    def retire(self) -> None:
        """Grant no new lease from now on."""
        with self._lock:
            self._retired = True
            self.ready = False

    async def close(self, drain_timeout_s: float = DEFAULT_DRAIN_TIMEOUT_S) -> None:
        """Retire, wait for the requests still using this version, unload."""
        self.retire()
        deadline = time.monotonic() + drain_timeout_s
        # Polling, not an event: leases are returned from other threads (the scoring worker).
        while self._in_flight > 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.005)
        if self._in_flight > 0:
            log.warning("requests still running on a version past the drain timeout; unloading anyway",
                        extra={"model_name": self.name, "model_version": self.version,
                               "in_flight": self._in_flight, "drain_timeout_s": drain_timeout_s})
        await self.model.unload()


V = TypeVar("V", bound=Version)


class Slot(Generic[V]):
    """The one version a consumer serves at a time (the streaming app, the scoring worker).

    Swapped on the event loop only; leased from any thread.
    """

    def __init__(self, drain_timeout_s: float = DEFAULT_DRAIN_TIMEOUT_S) -> None:
        self.current: V | None = None
        self.drain_timeout_s = drain_timeout_s

    @contextmanager
    def lease(self) -> Iterator[V]:
        """The version serving now, held until the block ends (the swap's drain waits for it)."""
        while True:
            version = self.current
            if version is None:
                raise Unavailable("no model version is serving yet")
            if version.try_enter():
                break
            # Retired between the read and the enter: its successor is already `current`.
        try:
            yield version
        finally:
            version.leave()

    async def swap(self, new: V) -> V | None:
        """Serve `new` from now on (one assignment); then drain and unload the old version."""
        old, self.current = self.current, new
        if old is not None and old is not new:
            await old.close(self.drain_timeout_s)
        return old

    async def close(self) -> None:
        old, self.current = self.current, None
        if old is not None:
            await old.close(self.drain_timeout_s)


# -- the lifecycle ----------------------------------------------------------------------------------


class Lifecycle:
    """Prepares model versions for one service: load, verify, integration check, warm up, ready."""

    def __init__(self, options: RuntimeOptions | None = None, *,
                 skew_tolerance: float = DEFAULT_SKEW_TOLERANCE) -> None:
        self.options = options or RuntimeOptions()
        self.skew_tolerance = skew_tolerance

    async def load_dir(self, path: Path, build: Callable[[OnnxModel], V], *,
                       identity: tuple[str, int] | None = None) -> V:
        """`prepare` for a repository directory (read off the event loop)."""
        try:
            artifact = await asyncio.to_thread(Artifact.from_dir, path)
        except ServingError as exc:
            log_refusal(identity[0] if identity else path.parent.name, identity[1] if identity else None, exc,
                        str(path))
            raise
        return await self.prepare(artifact, build, identity=identity)

    async def prepare(
        self,
        artifact: Artifact,
        build: Callable[[OnnxModel], V],
        *,
        identity: tuple[str, int] | None = None,
        references: Sequence[tuple[str, ModelCard | None]] = (),
    ) -> V:
        """A ready version of `artifact`, built by `build(model)` once the model is loaded; or a
        refusal (`ArtifactError`, logged) with nothing left loaded."""
        card = artifact.card
        try:
            return await self._prepare(artifact, build, identity, references)
        except ServingError as exc:
            refusal = exc if isinstance(exc, ArtifactError) else LoadFailed(f"{artifact.source}: {exc.message}")
        except Exception as exc:  # a bug or a runtime error nobody typed must still be a clean refusal
            log.exception("unexpected error while preparing a model version")
            refusal = LoadFailed(f"{artifact.source}: unexpected error: {exc!r}")
        log_refusal(card.name, card.version, refusal, artifact.source)
        raise refusal

    async def _prepare(self, artifact: Artifact, build: Callable[[OnnxModel], V],
                       identity: tuple[str, int] | None, references: Sequence[tuple[str, ModelCard | None]]) -> V:
        card, source = artifact.card, artifact.source
        if identity is not None and (card.name, card.version) != identity:
            raise NameMismatch(
                f"{source}: the card says {card.name!r} v{card.version}, where it was found says {identity[0]!r} "
                f"v{identity[1]}"
            )
        for what, reference in references:
            if reference is not None and (why := card.compatible_with(reference)) is not None:
                raise ContractMismatch(f"{card.name} v{card.version} cannot replace {what}: {why}")
        model = OnnxModel(card, artifact.onnx_bytes, self.options, source=source)
        try:
            await model.load()
        except IntegrityError as exc:
            raise ChecksumMismatch(exc.message) from exc
        except ArtifactError as exc:
            raise LoadFailed(exc.message) from exc
        try:
            version = build(model)
        except BaseException:
            await model.unload()
            raise
        try:
            await self.check_holdout(version, artifact)
            await self.warm_up(version)
        except BaseException:
            await version.close(0)
            raise
        version.ready = True
        return version

    async def check_holdout(self, version: Version, artifact: Artifact) -> float:
        """The integration check: the holdout accuracy through `version.score`, against the card's claim."""
        card, source = artifact.card, artifact.source
        if artifact.holdout_csv is None:
            raise HoldoutUnusable(f"{source}: no holdout set travels with the model; the integration check "
                                  "cannot run")
        claimed = card.metrics.get(HOLDOUT_METRIC)
        if claimed is None:
            raise HoldoutUnusable(f"{source}: the card claims no holdout {HOLDOUT_METRIC} to check against")
        holdout = Holdout.parse(artifact.holdout_csv, source)
        instances = holdout.instances()
        step = max(1, version.contract.max_batch_size)
        labels = []
        for start in range(0, len(instances), step):
            chunk = instances[start : start + step]
            try:
                got = np.asarray(await version.score(chunk))
            except ClientError as exc:
                raise Skew(f"{source}: this service's input path refuses the holdout rows "
                           f"{start}..{start + len(chunk) - 1}: {exc.message}") from exc
            if got.shape != (len(chunk),):
                raise LoadFailed(f"{source}: {len(chunk)} holdout rows gave labels of shape {list(got.shape)}")
            labels.append(got)
        measured = float(np.mean(np.concatenate(labels) == holdout.y))
        if abs(measured - claimed) > self.skew_tolerance:
            raise Skew(
                f"{source}: holdout {HOLDOUT_METRIC} through this service's input path is {measured:.6f}, the card "
                f"claims {claimed:.6f} ({len(holdout.y)} rows; tolerance {self.skew_tolerance:g}): training/serving "
                "skew"
            )
        return measured

    async def warm_up(self, version: Version) -> None:
        card = version.card
        if len(card.features) != card.n_features:
            raise LoadFailed(f"{version.model.source}: the card lists {len(card.features)} feature stats for "
                             f"{card.n_features} features")
        x = np.array([[f.mean for f in card.features]], dtype=np.float32)
        try:
            labels, proba = await version.infer(x)
        except ServingError as exc:
            raise LoadFailed(f"{version.model.source}: warm-up prediction failed: {exc.message}") from exc
        except Exception as exc:  # ONNX Runtime's own errors on a graph that loads but cannot run
            raise LoadFailed(f"{version.model.source}: warm-up prediction failed: {exc}") from exc
        if proba.shape != (1, len(card.classes)) or labels.shape != (1,):
            raise LoadFailed(
                f"{version.model.source}: warm-up prediction has shapes labels {list(labels.shape)}, probabilities "
                f"{list(proba.shape)}; the card promises {len(card.classes)} classes"
            )

