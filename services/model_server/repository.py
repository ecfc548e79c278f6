"""The model registry: which model versions are loaded, and how a request finds one.

    registry = Registry(settings)
    await registry.start()                       # first scan + load, then a poll task
    servable = registry.resolve("wine", version=None, label=None)   # dict lookups only
    labels, probabilities = await servable.predict(x)

Every `poll_interval_s` the registry re-scans `<repo>/<model>/<version>/` (a version counts once
its `model-card.json` exists) and `<repo>/<model>/config.yaml`, then for each model:

1. the version policy picks the versions to serve (`latest:N` the N highest numbers, `all`,
   `specific:[...]`); versions a label points to are kept too, so labels always resolve;
2. each missing version goes through the model lifecycle (services/core/lifecycle.py), off the
   event loop where it blocks: load and verify (sha256, graph vs card, card name/version vs
   directory), the integration check (the version's `holdout.csv` scored through this server's
   input path, the `InputContract` and the version's batcher or inline predict, its accuracy
   against the card's claim), warm up; then it is marked AVAILABLE;
3. the served set is swapped in one assignment (requests in flight keep the object they hold);
4. versions no longer wanted are removed and closed: no new request, their batching queues and
   requests in flight drained, then unloaded.

A version the lifecycle refuses is logged (reason = the error's code: `checksum`, `load`,
`skew`, ...), counted (`model_server_model_loads_total{outcome="failed"}`), reported by
GetModelStatus, and left out of the policy until its card changes, so the versions already
serving keep serving. Without a version, a request gets the newest *loaded* version that passed
its quality gate (models/thresholds.yaml); a gate-failed version is served only when asked for
by number or label.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from services.core.contract import InputContract, RangePolicy
from services.core.errors import NotFound, ServingError, Unavailable
from services.core.lifecycle import DEFAULT_DRAIN_TIMEOUT_S, Lifecycle, Version
from services.core.repository import list_models, list_versions
from services.core.repository import passed_gate as card_passed_gate
from services.core.runtime import CARD_FILE, OnnxModel, RuntimeOptions
from services.model_server import metrics
from services.model_server.batching import Batcher
from services.model_server.config import (
    CONFIG_FILE,
    BatchingConfig,
    ConfigError,
    ModelConfig,
    VersionPolicy,
    read_model_config,
)
from services.model_server.settings import ModelServerSettings

log = logging.getLogger(__name__)

# TF Serving's ModelVersionStatus.State names (and wire numbers, in grpc_server.py).
LOADING, AVAILABLE, UNLOADING, END = "LOADING", "AVAILABLE", "UNLOADING", "END"


class Servable(Version):
    """One loaded model version: the model, its input contract, metrics children, maybe a batcher."""

    def __init__(self, model: OnnxModel, contract: InputContract, passed_gate: bool, batching: BatchingConfig,
                 batcher: Batcher | None, version_metrics: metrics.VersionMetrics) -> None:
        super().__init__(model, contract)
        self.version_str = str(self.version)
        self.passed_gate = passed_gate
        self.batching = batching  # the config it was built with; a change reloads it
        self.batcher = batcher
        self.metrics = version_metrics
        self.check_ranges = contract.range_policy is not RangePolicy.OFF
        # Protocol front-ends cache per-version responses here (metadata, signature_def, ...).
        self.cache: dict[str, Any] = {}

    async def predict(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Validated float32 rows -> (labels int64 [rows], probabilities float32 [rows, classes])."""
        if self.check_ranges:
            findings = self.contract.check_ranges(x)  # raises under `reject`
            if findings:
                self.metrics.out_of_range.inc(len(findings))
        if not self.try_enter():
            raise Unavailable(f"model {self.name} v{self.version} is being unloaded; retry")
        try:
            if self.batcher is not None:
                return await self.batcher.submit(x)
            # Batching off: ONNX Runtime inline on the loop. A row costs ~6-12 µs; a thread hop costs more.
            started = time.perf_counter()
            p = self.model.predict_sync(x)
            m = self.metrics
            m.inference.observe(time.perf_counter() - started)
            m.batch_size.observe(x.shape[0])
            return p.labels, p.probabilities
        finally:
            self.leave()

    async def infer(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        # The lifecycle's integration check and warm-up: the serving computation, batcher included.
        if self.batcher is not None:
            return await self.batcher.submit(x)
        return await super().infer(x)

    async def close(self, drain_timeout_s: float = DEFAULT_DRAIN_TIMEOUT_S) -> None:
        self.retire()
        if self.batcher is not None:
            await self.batcher.close()  # runs what is queued
        await super().close(drain_timeout_s)


@dataclass
class VersionStatus:
    state: str
    error: str = ""
    """Why the last load failed; empty when fine."""
    grpc_code: grpc.StatusCode = grpc.StatusCode.OK
    """The failure as a canonical code (TF Serving's StatusProto.error_code uses the same numbers)."""
    reason: str = ""
    """Why the lifecycle refused the version: the error's code (`checksum`, `load`, `skew`, ...)."""


@dataclass
class ModelEntry:
    name: str
    config: ModelConfig
    config_mtime: float | None = None
    versions: dict[int, Servable] = field(default_factory=dict)  # replaced wholesale, never mutated
    default: Servable | None = None
    statuses: dict[int, VersionStatus] = field(default_factory=dict)
    failed: dict[int, float] = field(default_factory=dict)  # version -> card mtime that failed to load

    @property
    def ready(self) -> bool:
        return bool(self.versions)

    def resolve(self, version: int | None = None, label: str | None = None) -> Servable:
        if label is not None:
            target = self.config.labels.get(label)
            if target is None:
                known = sorted(self.config.labels)
                raise NotFound(f"model {self.name!r} has no version label {label!r} (labels: {known})",
                               field="version_label")
            servable = self.versions.get(target)
            if servable is None:
                raise NotFound(
                    f"label {label!r} of model {self.name!r} points to version {target}, which is not loaded "
                    f"(loaded: {sorted(self.versions)})",
                    field="version_label",
                )
            return servable
        if version is None:
            if self.default is None:
                why = "no version is loaded" if not self.versions else "no loaded version passed its quality gate"
                raise NotFound(f"model {self.name!r}: {why}; ask for a version by number "
                               f"(loaded: {sorted(self.versions)})", field="model_version")
            return self.default
        servable = self.versions.get(version)
        if servable is None:
            raise NotFound(f"model {self.name!r} has no loaded version {version} (loaded: {sorted(self.versions)})",
                           field="model_version")
        return servable


def defaults_from(settings: ModelServerSettings) -> ModelConfig:
    return ModelConfig(
        policy=VersionPolicy.parse(settings.version_policy),
        labels={},
        batching=BatchingConfig(
            enabled=settings.batching,
            max_rows=settings.batch_max_rows,
            max_delay_s=settings.batch_max_delay_ms / 1e3,
            max_queue=settings.batch_max_queue,
            in_thread=settings.batch_in_thread,
        ),
    )


def _mtime(path: Path) -> float | None:
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return None


class Registry:
    """All models of one repository; mutated only on the event loop, read by every request."""

    def __init__(self, settings: ModelServerSettings, executor: Executor | None = None) -> None:
        self.settings = settings
        self.repo = Path(settings.model_repository)
        self.defaults = defaults_from(settings)
        self.runtime = RuntimeOptions(settings.intra_op_threads, settings.inter_op_threads)
        self.lifecycle = Lifecycle(self.runtime, skew_tolerance=settings.skew_tolerance)
        self.executor = executor  # the batch worker thread, shared by every batcher
        self.models: dict[str, ModelEntry] = {}
        self.started = False
        self.listeners: list[Callable[[], None]] = []  # called after every scan (gRPC health follows readiness)
        self._lock = asyncio.Lock()
        self._poller: asyncio.Task | None = None

    # -- reading (every request) ---------------------------------------------------------

    @property
    def ready(self) -> bool:
        """Ready once the first scan is done and at least one model version serves."""
        return self.started and any(entry.versions for entry in self.models.values())

    def model(self, name: str) -> ModelEntry:
        entry = self.models.get(name)
        if entry is None:
            raise NotFound(f"model {name!r} is not served here (models: {sorted(self.models)})", field="model_name")
        return entry

    def resolve(self, name: str, version: int | None = None, label: str | None = None) -> Servable:
        entry = self.models.get(name)
        if entry is None:
            raise NotFound(f"model {name!r} is not served here (models: {sorted(self.models)})", field="model_name")
        return entry.resolve(version, label)

    # -- life cycle ----------------------------------------------------------------------

    async def start(self) -> None:
        await self.sync()
        self.started = True
        if self.settings.poll_interval_s > 0:
            self._poller = asyncio.create_task(self._poll(), name="repository poller")

    async def stop(self) -> None:
        """Stop polling, drain every batching queue, unload everything."""
        if self._poller is not None:
            self._poller.cancel()
            try:
                await self._poller
            except asyncio.CancelledError:
                pass
        async with self._lock:
            for entry in self.models.values():
                old = entry.versions
                entry.versions, entry.default = {}, None
                for servable in old.values():
                    await self._unload(entry, servable, reason="server stopping")

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.settings.poll_interval_s)
            try:
                await self.sync()
            except Exception as exc:  # a scan must never kill the poller
                log.error("repository scan failed", exc_info=exc, extra={"repository": str(self.repo)})

    async def sync(self) -> None:
        """One scan of the repository: load, swap and unload until every model matches its policy."""
        async with self._lock:
            scan = await asyncio.to_thread(self._scan)
            for name, (on_disk, config_mtime) in scan.items():
                entry = self.models.get(name)
                if entry is None:
                    entry = self.models[name] = ModelEntry(name, self.defaults)
                self._refresh_config(entry, config_mtime)
                await self._sync_model(entry, on_disk)
            for name in [n for n in self.models if n not in scan]:
                entry = self.models[name]
                await self._sync_model(entry, {})
                if not entry.versions:
                    del self.models[name]
                    log.info("model removed from the repository", extra={"model_name": name})
        for listener in self.listeners:
            listener()

    def _scan(self) -> dict[str, tuple[dict[int, float | None], float | None]]:
        """{model: ({version: card mtime}, config mtime)}; runs on a worker thread."""
        found = {}
        for name in list_models(self.repo):
            model_dir = self.repo / name
            versions = {v: _mtime(model_dir / str(v) / CARD_FILE) for v in list_versions(self.repo, name)}
            found[name] = (versions, _mtime(model_dir / CONFIG_FILE))
        return found

    def _refresh_config(self, entry: ModelEntry, config_mtime: float | None) -> None:
        if config_mtime == entry.config_mtime and entry.config_mtime is not None:
            return
        if config_mtime is None and entry.config_mtime is None:
            return
        path = self.repo / entry.name / CONFIG_FILE
        try:
            entry.config = read_model_config(path, self.defaults)
        except ConfigError as exc:
            log.error("model config refused; keeping the previous one", extra={"model_name": entry.name,
                                                                                 "error": str(exc)})
        else:
            log.info("model config read", extra={"model_name": entry.name, "policy": entry.config.policy.describe(),
                                                  "labels": entry.config.labels})
        entry.config_mtime = config_mtime

    def _wanted(self, entry: ModelEntry, on_disk: dict[int, float | None]) -> set[int]:
        candidates = [v for v, mtime in on_disk.items() if entry.failed.get(v, -1) != mtime]
        wanted = entry.config.policy.select(candidates)
        wanted |= {v for v in entry.config.labels.values() if v in candidates}
        return wanted

    async def _sync_model(self, entry: ModelEntry, on_disk: dict[int, float | None]) -> None:
        for v in [v for v in entry.failed if v not in on_disk]:
            del entry.failed[v]  # removed from disk: a new copy gets a fresh try
        batching_changed = any(s.batching != entry.config.batching for s in entry.versions.values())
        # Load until the wanted set is loaded; each pass loads or fails at least one version.
        while True:
            wanted = self._wanted(entry, on_disk)
            missing = sorted(wanted - set(entry.versions), reverse=True)  # newest first
            if not missing:
                break
            version = missing[0]
            servable = await self._load(entry, version, on_disk[version])
            if servable is not None:
                # Mark ready and swap: new dict, one assignment; readers never see a half state.
                entry.versions = {**entry.versions, version: servable}
                entry.default = self._default(entry.versions)
        wanted = self._wanted(entry, on_disk)
        leaving = [s for v, s in entry.versions.items() if v not in wanted]
        entry.versions = {v: s for v, s in entry.versions.items() if v in wanted}  # the swap
        if batching_changed:  # reload in place with the new batching config, one version at a time
            for v in list(entry.versions):
                servable = await self._load(entry, v, on_disk[v])
                if servable is not None:
                    leaving.append(entry.versions[v])
                    entry.versions = {**entry.versions, v: servable}
        entry.default = self._default(entry.versions)
        for servable in leaving:
            await self._unload(entry, servable, reason=f"version policy {entry.config.policy.describe()}")

    @staticmethod
    def _default(versions: dict[int, Servable]) -> Servable | None:
        passing = [v for v, s in versions.items() if s.passed_gate]
        return versions[max(passing)] if passing else None

    async def _load(self, entry: ModelEntry, version: int, card_mtime: float | None) -> Servable | None:
        entry.statuses[version] = VersionStatus(LOADING)
        path = self.repo / entry.name / str(version)
        t0 = time.perf_counter()
        try:
            servable = await self._build(entry, path, version)
        except ServingError as exc:  # the lifecycle logged it
            entry.failed[version] = card_mtime if card_mtime is not None else -2
            entry.statuses[version] = VersionStatus(END, exc.message, exc.grpc_code, exc.code)
            metrics.MODEL_LOADS.labels(entry.name, "failed").inc()
            return None
        entry.statuses[version] = VersionStatus(AVAILABLE)
        servable.metrics.set_ready(True)
        metrics.MODEL_LOADS.labels(entry.name, "loaded").inc()
        log.info("model version loaded", extra={
            "model_name": entry.name, "model_version": version, "load_ms": round((time.perf_counter() - t0) * 1e3, 1),
            "batching": servable.batcher is not None, "passed_gate": servable.passed_gate})
        return servable

    async def _build(self, entry: ModelEntry, path: Path, version: int) -> Servable:
        try:
            passed_gate = await asyncio.to_thread(card_passed_gate, self.repo, entry.name, version)
        except (OSError, ValueError):
            passed_gate = False  # an unreadable card: the lifecycle refuses the version and says why
        s = self.settings
        cfg = entry.config.batching

        def build(model: OnnxModel) -> Servable:
            contract = InputContract(model.card, max_batch_size=s.max_batch_size, range_policy=s.range_policy,
                                     range_margin=s.range_margin)
            version_metrics = metrics.VersionMetrics(entry.name, version)
            batcher = None
            if cfg.enabled:
                batcher = Batcher(model, cfg, version_metrics, self.executor, s.retry_after_s)
                batcher.start()
            return Servable(model, contract, passed_gate, cfg, batcher, version_metrics)

        return await self.lifecycle.load_dir(path, build, identity=(entry.name, version))

    async def _unload(self, entry: ModelEntry, servable: Servable, reason: str) -> None:
        version = servable.version
        entry.statuses[version] = VersionStatus(UNLOADING)
        servable.metrics.set_ready(False)
        await servable.close()  # drains its batching queue first
        if entry.versions.get(version) is None:
            entry.statuses[version] = VersionStatus(END)
        else:  # replaced by a reload of the same version
            entry.statuses[version] = VersionStatus(AVAILABLE)
            entry.versions[version].metrics.set_ready(True)
        metrics.MODEL_LOADS.labels(entry.name, "unloaded").inc()
        log.info("model version unloaded", extra={"model_name": entry.name, "model_version": version,
                                                   "reason": reason})
