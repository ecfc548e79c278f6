"""The router: routing tables built from configs, the proxy hot path, feedback, persistence.

    router = Router(settings)
    await router.start()          # config (file, or the state file's newer admin config), state, tasks
    ... router.infer(scope, receive, send, model, version)   # the ASGI hot path (see app.py)
    await router.stop()           # stop tasks, save state, close connections

A `RouteTable` is everything one config version needs at request time (policy, variants with
their connection pools and metric children, header names); a config change builds a new table
and swaps one reference, so requests in flight finish on the table they started with and no
request ever sees half a config.

Hot path per request: read the body, read four headers, `policy.choose`, one upstream call
(connection reused), splice `"variant"` and `"request_id"` into the JSON answer, send. The body
is parsed only when the stickiness key comes from it. Fail-over, mirroring and feedback
bookkeeping are branches that cost nothing when not taken.
"""

from __future__ import annotations

import asyncio
import hmac
import itertools
import logging
import os
import re
import secrets
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson

from services.core.errors import InvalidInput, NotFound, ServingError, Unauthorized, Unavailable
from services.core.http import receive_body
from services.router import metrics
from services.router.config import RoutingConfig, RoutingConfigError, VariantConfig, parse_config
from services.router.ejection import OutlierDetector
from services.router.errors import BadGateway, Conflict, Forbidden, PreconditionFailed
from services.router.feedback import PendingStore
from services.router.metrics import VariantMetrics
from services.router.policies import (
    ABTestPolicy,
    InvalidRewardError,
    PolicyStateError,
    RouteRequest,
    RoutingPolicy,
    UnknownVariantError,
    build_policy,
)
from services.router.policies.bandit import BanditPolicy
from services.router.settings import RouterSettings
from services.router.shadow import ShadowMirror
from services.router.state import StateFile, atomic_write
from services.router.upstream import Pool, Response, UpstreamError

log = logging.getLogger("services.router")

Send = Callable[[dict[str, Any]], Awaitable[None]]
Receive = Callable[[], Awaitable[dict[str, Any]]]

_JSON = b"application/json"
_MODEL_VERSION = re.compile(rb'"model_version"\s*:\s*"?([^",}\s]+)')
_REQUEST_ID_OK = re.compile(r"^[\x21-\x7e]{1,128}$")
_LEARNING_KINDS = {"ab", "epsilon_greedy", "ucb1", "thompson"}
_FORWARDED = (b"inference-header-content-length", b"traceparent", b"tracestate")


class _HttpFailure(Exception):
    """An upstream answered 5xx: a failure for fail-over and ejection."""

    def __init__(self, response: Response) -> None:
        super().__init__(f"HTTP {response.status}")
        self.response = response
        self.kind = f"http_{response.status // 100}xx"
        snippet = response.body[:200].decode("utf-8", "replace")
        self.message = f"answered HTTP {response.status}: {snippet}"


class Variant:
    """One variant at run time: config, connection pool, request path, metric children."""

    __slots__ = ("name", "cfg", "pool", "infer_path", "timeout_s", "metrics", "model_version", "model_prefix")

    def __init__(self, name: str, cfg: VariantConfig, pool: Pool, policy_kind: str) -> None:
        self.name = name
        self.cfg = cfg
        self.pool = pool
        base = f"/v2/models/{cfg.model}"
        if cfg.version is not None:
            base += f"/versions/{cfg.version}"
        self.infer_path = f"{base}/infer".encode()
        self.timeout_s = cfg.timeout_s
        self.metrics = VariantMetrics(name, policy_kind)
        self.model_version = f"{cfg.model}:{cfg.version if cfg.version is not None else 'default'}".encode()
        self.model_prefix = f"{cfg.model}:".encode()

    def metadata_path(self, tail: str) -> bytes:
        base = f"/v2/models/{self.cfg.model}"
        if self.cfg.version is not None:
            base += f"/versions/{self.cfg.version}"
        return (base + tail).encode()


class RouteTable:
    """One config version, ready for requests. Never mutated after it is built."""

    def __init__(self, config: RoutingConfig, *, version: int, source: str, text: str, policy: RoutingPolicy,
                 epoch: int, variants: dict[str, Variant]) -> None:
        self.config = config
        self.version = version
        self.hash = config.content_hash()
        self.source = source
        self.text = text
        self.loaded_at = time.time()
        self.policy = policy
        self.kind = config.policy.kind
        self.epoch = epoch
        self.variants = variants
        self.fallback = variants[config.fallback_variant]
        self.learns = self.kind in _LEARNING_KINDS
        self.is_bandit = isinstance(policy, BanditPolicy)
        shadow_names = getattr(policy, "shadows", None) if self.kind == "shadow" else None
        self.shadows = [variants[n] for n in shadow_names] if shadow_names else []
        self.sticky_header = config.sticky.header.encode() if config.sticky.header else None
        self.body_parameter = config.sticky.body_parameter
        self.override_header = config.override_header.encode() if config.override_header else None
        self.public_model = config.model
        self.by_version: dict[str, str] = {}
        for name, v in variants.items():
            if v.cfg.version is not None:
                self.by_version.setdefault(str(v.cfg.version), name)
        self.unrouted = VariantMetrics("", self.kind)
        self.request_seconds = metrics.REQUEST_SECONDS.labels(self.kind)
        self.failure_reward = config.feedback.failure_reward

    def describe(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "hash": self.hash,
            "source": self.source,
            "loaded_at": self.loaded_at,
            "config": self.config.canonical(),
        }


class Router:
    def __init__(self, settings: RouterSettings) -> None:
        self.settings = settings
        self.config_path = Path(settings.routing_config)
        self.table: RouteTable | None = None
        self.pools: dict[str, Pool] = {}
        self.pending = PendingStore(ttl_s=3600.0, max_pending=100_000)
        self.detector = OutlierDetector(
            consecutive_failures=5, base_ejection_s=10.0, max_ejection_s=300.0,
            on_eject=self._on_eject, on_return=self._on_return,
        )
        self.mirror = ShadowMirror(self._send_shadow, queue_size=1000, workers=4, timeout_s=None, sample_rate=1.0,
                                   is_ejected=self.detector.is_ejected)
        self.state_file = StateFile(settings.state_file)
        self.file_hash: str | None = None  # content hash of the config file as last read
        self._file_sig: tuple[int, int, int] | None = None
        self._base_version = 0
        self._dirty = False
        self._tasks: list[asyncio.Task] = []
        self._ids = itertools.count(1)
        self._id_prefix = secrets.token_hex(4)
        self.max_body = settings.max_body_bytes
        self.started = False
        self.grpc: Any = None  # services.router.grpc_proxy.GrpcProxy when ROUTER_GRPC_PORT is set

    # -- life cycle -------------------------------------------------------------------------

    def load(self) -> None:
        """Load the config and the saved state (raises SystemExit naming the problem)."""
        if self.table is None:
            self._load_initial()

    async def start(self) -> None:
        self.load()
        self.mirror.start()
        if self.settings.grpc_port:
            from services.router.grpc_proxy import GrpcProxy  # grpc only when asked for

            self.grpc = GrpcProxy(self, self.settings.host, self.settings.grpc_port,
                                  self.settings.grpc_max_message_bytes)
            await self.grpc.start()
        if self.settings.config_poll_s > 0:
            self._tasks.append(asyncio.create_task(self._poll_config(), name="config-poll"))
        if self.state_file.enabled:
            self._tasks.append(asyncio.create_task(self._save_periodically(), name="state-save"))
        self._tasks.append(asyncio.create_task(self._maintain(), name="maintenance"))
        self.started = True

    async def stop(self) -> None:
        if self.grpc is not None:
            await self.grpc.stop(self.settings.shutdown_grace_s)
            self.grpc = None
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        await self.mirror.stop()
        self.save_state()
        for pool in self.pools.values():
            pool.close()
        self.started = False

    def _load_initial(self) -> None:
        state = self.state_file.load() or {}
        saved = state.get("config") if isinstance(state.get("config"), dict) else None
        file_cfg, file_text, file_error = None, "", None
        try:
            file_text = self.config_path.read_text()
            file_cfg = parse_config(file_text, str(self.config_path))
            self.file_hash = file_cfg.content_hash()
        except (OSError, RoutingConfigError) as exc:
            file_error = exc.message if isinstance(exc, RoutingConfigError) else f"{self.config_path}: {exc}"
        self._file_sig = self._stat_config()
        saved_cfg = None
        if saved and isinstance(saved.get("text"), str):
            try:
                saved_cfg = parse_config(saved["text"], "state file config")
            except RoutingConfigError as exc:
                log.error("config kept in the state file is invalid; ignored", extra={"error": exc.message})
        config, text, source = file_cfg, file_text, "file"
        if saved_cfg is not None and saved is not None:
            if file_cfg is None:
                log.error("routing config file unusable; starting with the last config in force (state file)",
                          extra={"error": file_error, "version": saved.get("version")})
                config, text, source = saved_cfg, saved["text"], str(saved.get("source", "state"))
            elif saved.get("file_hash") == self.file_hash and saved_cfg.content_hash() != self.file_hash:
                # The file has not changed since an admin PUT that could not be written back to it:
                # the admin's config is the newer one.
                config, text, source = saved_cfg, saved["text"], str(saved.get("source", "admin"))
        if config is None:
            raise SystemExit(f"router: cannot start: {file_error}")
        saved_version = saved.get("version") if saved else None
        self._base_version = saved_version if isinstance(saved_version, int) and saved_version > 0 else 0
        same = saved is not None and saved.get("hash") == config.content_hash()
        version = self._base_version if same and self._base_version else self._base_version + 1
        epoch = state.get("policy_epoch", 0) if isinstance(state.get("policy_epoch"), int) else 0
        policy = build_policy(config.policy.kind, list(config.variants), config.policy.params)
        policy_state = state.get("policy")
        kept = "nothing saved"
        if isinstance(policy_state, dict):
            if config.policy.kind in ("canary", "shadow"):
                kept = "stateless (weights come from the config)"
            elif self._carry_state(policy_state, policy, config):
                kept = "restored"
            else:
                kept, epoch = "no: the saved state does not fit", epoch + 1
        feedback = state.get("feedback")
        self._configure_parts(config)
        if isinstance(feedback, dict):
            try:
                self.pending.load(feedback)
            except ValueError as exc:
                log.error("pending feedback in the state file is invalid; dropped", extra={"error": str(exc)})
        self._install(config, text, source, version, policy, epoch, previous=None, state_kept=kept)

    def _carry_state(self, snapshot: dict[str, Any], policy: RoutingPolicy, config: RoutingConfig) -> bool:
        """Load a policy snapshot into a new policy; False (and logged) when it does not fit."""
        if snapshot.get("kind") != policy.kind:
            log.warning("saved policy state is for another policy kind; starting fresh",
                        extra={"saved_kind": snapshot.get("kind"), "kind": policy.kind})
            return False
        names = set(config.variants)
        state = dict(snapshot)
        if isinstance(state.get("arms"), dict):
            if policy.kind == "ab" and set(state["arms"]) != names:
                log.warning("A/B arms changed; the experiment starts fresh",
                            extra={"saved_arms": sorted(state["arms"]), "arms": sorted(names)})
                return False
            dropped = sorted(set(state["arms"]) - names)
            if dropped:
                log.warning("policy state of removed variants dropped", extra={"variants": dropped})
            state["arms"] = {k: v for k, v in state["arms"].items() if k in names}
        try:
            policy.load_state(state)
        except PolicyStateError as exc:
            log.error("saved policy state rejected; starting fresh", extra={"error": str(exc)})
            return False
        return True

    # -- config changes ----------------------------------------------------------------------

    def apply(self, config: RoutingConfig, text: str, source: str) -> tuple[RouteTable, bool]:
        """Make `config` the one in force; (table, changed). Same content: nothing changes."""
        old = self.table
        assert old is not None
        if config.content_hash() == old.hash:
            metrics.CONFIG_RELOADS.labels(source, "unchanged").inc()
            return old, False
        policy = build_policy(config.policy.kind, list(config.variants), config.policy.params)
        epoch, kept = old.epoch, "weights and salt from the new config; sticky keys stay by hash"
        if config.policy.kind != old.kind:
            epoch, kept = old.epoch + 1, "no: the policy kind changed"
        elif config.policy.kind == "shadow":
            kept = "stateless"
        elif config.policy.kind != "canary":
            if self._carry_state(old.policy.state(), policy, config):
                kept = "yes"
            else:
                epoch, kept = old.epoch + 1, "no: the saved state does not fit the new variants"
        self._configure_parts(config)
        table = self._install(config, text, source, old.version + 1, policy, epoch, previous=old, state_kept=kept)
        metrics.CONFIG_RELOADS.labels(source, "applied").inc()
        return table, True

    def _configure_parts(self, config: RoutingConfig) -> None:
        od, fb, sh = config.outlier_detection, config.feedback, config.shadow
        self.detector.reconfigure(consecutive_failures=od.consecutive_failures, base_ejection_s=od.base_ejection_s,
                                  max_ejection_s=od.max_ejection_s, enabled=od.enabled)
        self.pending.reconfigure(fb.ttl_s, fb.max_pending)
        self.mirror.reconfigure(queue_size=sh.queue_size, workers=sh.workers, timeout_s=sh.timeout_s,
                                sample_rate=sh.sample_rate)

    def _install(self, config: RoutingConfig, text: str, source: str, version: int, policy: RoutingPolicy,
                 epoch: int, *, previous: RouteTable | None, state_kept: str) -> RouteTable:
        s = self.settings
        variants = {}
        for name, cfg in config.variants.items():
            pool = self.pools.get(_address(cfg.url))
            if pool is None:
                pool = Pool(cfg.url, connect_timeout_s=s.connect_timeout_s, max_idle=s.upstream_max_idle,
                            idle_timeout_s=s.upstream_idle_timeout_s)
                self.pools[_address(cfg.url)] = pool
            variants[name] = Variant(name, cfg, pool, config.policy.kind)
        if previous is not None:
            for name, old_variant in previous.variants.items():
                new_variant = variants.get(name)
                if new_variant is None or new_variant.cfg.url != old_variant.cfg.url:
                    self.detector.forget(name)  # a new endpoint starts with a clean record
        table = RouteTable(config, version=version, source=source, text=text, policy=policy, epoch=epoch,
                           variants=variants)
        self.table = table
        in_use = {_address(v.cfg.url) for v in variants.values()}
        for address in [a for a in self.pools if a not in in_use]:
            self.pools.pop(address).close()  # idle connections only; requests in flight hold theirs
        metrics.CONFIG_VERSION.set(version)
        self._dirty = True
        fields = {
            "old_version": previous.version if previous else None,
            "new_version": version,
            "old_hash": previous.hash if previous else None,
            "new_hash": table.hash,
            "source": source,
            "route": config.name,
            "policy": config.policy.kind,
            "variants": list(config.variants),
            "fallback": table.fallback.name,
            "policy_state_kept": state_kept,
        }
        log.info("routing config loaded" if previous is None else "routing config changed", extra=fields)
        return table

    def _stat_config(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.config_path)
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def check_config_file(self) -> None:
        """Reload the config file if it changed since the last look (called by the poller)."""
        sig = self._stat_config()
        if sig is None or sig == self._file_sig:
            return
        self._file_sig = sig
        table = self.table
        assert table is not None
        try:
            text = self.config_path.read_text()
            config = parse_config(text, str(self.config_path))
        except (OSError, RoutingConfigError) as exc:
            error = exc.message if isinstance(exc, RoutingConfigError) else f"{self.config_path}: {exc}"
            metrics.CONFIG_RELOADS.labels("file", "rejected").inc()
            log.error("routing config file rejected; the config in force stays",
                      extra={"error": error, "version_in_force": table.version, "path": str(self.config_path)})
            return
        self.file_hash = config.content_hash()
        self.apply(config, text, "file")

    async def _poll_config(self) -> None:
        while True:
            await asyncio.sleep(self.settings.config_poll_s)
            try:
                self.check_config_file()
            except Exception:
                log.exception("config poll failed")

    def admin_put(self, text: str, if_match: str | None) -> dict[str, Any]:
        table = self.table
        assert table is not None
        if if_match is not None and if_match.strip().strip('"') != str(table.version):
            metrics.CONFIG_RELOADS.labels("admin", "rejected").inc()
            raise PreconditionFailed(
                f"If-Match: version {if_match.strip()} is not the version in force ({table.version}); "
                "GET /admin/routing and retry", field="If-Match", version=table.version,
            )
        try:
            config = parse_config(text, "request body")
        except RoutingConfigError as exc:
            metrics.CONFIG_RELOADS.labels("admin", "rejected").inc()
            log.error("routing config from the admin API rejected; the config in force stays",
                      extra={"error": exc.message, "version_in_force": table.version})
            raise
        new, changed = self.apply(config, text, "admin")
        persisted = False
        if changed and self.settings.admin_writes_config:
            try:
                atomic_write(self.config_path, text.encode())
                self._file_sig = self._stat_config()
                self.file_hash = new.hash
                persisted = True
            except OSError as exc:
                log.warning("could not write the config back to its file; kept in the state file",
                            extra={"path": str(self.config_path), "error": str(exc)})
        if changed:
            self.save_state()
        return {**new.describe(), "previous_version": table.version, "changed": changed,
                "written_to_file": persisted}

    # -- persistence ---------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        table = self.table
        assert table is not None
        return {
            "config": {"version": table.version, "hash": table.hash, "source": table.source, "text": table.text,
                       "file_hash": self.file_hash},
            "policy": table.policy.state(),
            "policy_epoch": table.epoch,
            "feedback": self.pending.dump(),
        }

    def save_state(self) -> None:
        if not self.state_file.enabled or self.table is None:
            return
        try:
            self.state_file.save(self.snapshot())
            self._dirty = False
        except OSError as exc:
            log.error("could not save the router state", extra={"path": str(self.state_file.path), "error": str(exc)})

    async def _save_periodically(self) -> None:
        while True:
            await asyncio.sleep(self.settings.state_save_interval_s)
            if self._dirty and self.table is not None:
                # The snapshot is taken on the loop (consistent); the write and fsync happen on a
                # thread so the requests in flight do not wait for the disk.
                snapshot = self.snapshot()
                self._dirty = False
                try:
                    await asyncio.to_thread(self.state_file.save, snapshot)
                except OSError as exc:
                    self._dirty = True
                    log.error("could not save the router state",
                              extra={"path": str(self.state_file.path), "error": str(exc)})

    async def _maintain(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            if self.pending.sweep():
                self._dirty = True
            metrics.PENDING.set(len(self.pending))
            metrics.SHADOW_QUEUE.set(self.mirror.depth)
            for pool in self.pools.values():
                pool.prune()

    # -- ejection callbacks ----------------------------------------------------------------------

    def _on_eject(self, variant: str, cool_down_s: float) -> None:
        metrics.EJECTIONS.labels(variant).inc()
        metrics.EJECTED.labels(variant).set(1)
        log.warning("variant ejected", extra={"variant": variant, "cool_down_s": cool_down_s})

    def _on_return(self, variant: str) -> None:
        metrics.EJECTED.labels(variant).set(0)
        log.info("variant back in rotation", extra={"variant": variant})

    # -- the hot path ----------------------------------------------------------------------------

    async def infer(self, scope: dict[str, Any], receive: Receive, send: Send, model: str,
                    version: str | None) -> None:
        """The inference hot path as a raw ASGI handler: no Starlette request objects, the body forwarded as bytes."""
        headers = scope["headers"]
        try:
            declared = next((v for k, v in headers if k == b"content-length"), None)
            body = await receive_body(receive, declared, self.max_body)
            if body is None:
                raise InvalidInput("client disconnected before sending the body", field="body")
        except ServingError as exc:
            assert self.table is not None
            self.table.unrouted.request(exc.http_status)
            await _send_error(send, exc, self.new_request_id())
            return
        status, out_headers, out_body, after = await self.handle_infer(model, version, headers, body)
        await send({"type": "http.response.start", "status": status, "headers": out_headers})
        await send({"type": "http.response.body", "body": out_body})
        if after is not None:
            after()

    def new_request_id(self) -> str:
        return f"{self._id_prefix}-{next(self._ids):x}"

    async def handle_infer(
        self, model: str, version: str | None, request_headers: list[tuple[bytes, bytes]], body: bytes
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes, Callable[[], None] | None]:
        """Route one inference request: (status, response headers, response body, then-callback).

        The callback (shadow mirroring) is to be called once the response has been sent.
        `request_headers` are lower-case (name, value) byte pairs, as ASGI and httptools give them.
        """
        started = time.perf_counter()
        table = self.table
        assert table is not None
        request_id = override = key = None
        content_type = _JSON
        forwarded = b""
        for name, value in request_headers:
            if name == b"x-request-id":
                request_id = value
            elif name == table.override_header:
                override = value
            elif name == table.sticky_header:
                key = value
            elif name == b"content-type":
                content_type = value
            elif name in _FORWARDED:
                forwarded += name + b": " + value + b"\r\n"
        rid = request_id.decode("latin-1") if request_id else None
        if rid is None or not _REQUEST_ID_OK.match(rid):
            rid = f"{self._id_prefix}-{next(self._ids):x}"
        try:
            if not body:
                raise InvalidInput("request body is empty; send a KServe V2 inference request", field="body")
            if table.public_model is not None and model != table.public_model:
                raise NotFound(f"model {model!r} is not routed here; this router serves {table.public_model!r}",
                               field="model")
            forced = override.decode("latin-1") if override else None
            if version is not None:
                pinned = table.by_version.get(version)
                if pinned is None:
                    raise NotFound(f"version {version!r} is not routed here; routed versions: "
                                   f"{sorted(table.by_version)} (or omit the version)", field="model_version")
                forced = forced or pinned
            sticky = key.decode("latin-1") if key else None
            if sticky is None and table.body_parameter is not None:
                sticky = _body_key(body, table.body_parameter)
            try:
                decision = table.policy.choose(RouteRequest(rid, sticky, forced))
            except UnknownVariantError:
                raise InvalidInput(
                    f"{table.config.override_header}: unknown variant {forced!r}; variants: {list(table.variants)}",
                    field=table.config.override_header or "model_version",
                ) from None
        except ServingError as exc:
            table.unrouted.request(exc.http_status)
            return (*error_parts(exc, rid), None)
        chosen = table.variants[decision.variant]
        chosen.metrics.decision(decision.reason)
        headers = b"x-request-id: " + rid.encode() + b"\r\n" + forwarded
        served, resp, latency, failures = await self._route(table, chosen, body, headers, content_type)
        if table.learns:
            self._dirty = True
            if served is chosen:
                self.pending.add(rid, chosen.name, sticky, table.epoch)
            else:
                self._settle_failed(table, chosen, rid)
        table.policy.on_result(decision, rid, served is chosen, latency)
        if resp is None:
            exc = BadGateway(
                "no variant could answer: " + "; ".join(f"{name}: {why}" for name, why in failures),
                attempts=[{"variant": name, "error": why} for name, why in failures],
            )
            table.unrouted.request(exc.http_status)
            table.request_seconds.observe(time.perf_counter() - started)
            return (*error_parts(exc, rid), None)
        assert served is not None
        status = resp.status
        out_body, out_headers = _annotate(resp, served, rid)
        out_headers.append((b"content-length", str(len(out_body)).encode()))
        served.metrics.request(status)
        table.request_seconds.observe(time.perf_counter() - started)
        after = None
        if table.shadows and status < 400:
            shadows, mirror = table.shadows, self.mirror

            def after() -> None:
                mirror.offer(shadows, body, headers, served.name, status, resp.body, latency, rid)

        return status, out_headers, out_body, after

    async def _route(self, table: RouteTable, chosen: Variant, body: bytes, headers: bytes,
                     content_type: bytes) -> tuple[Variant | None, Response | None, float, list[tuple[str, str]]]:
        """Call the chosen variant, or the fallback when it is ejected or fails."""
        fallback = table.fallback
        detector = self.detector
        first = chosen
        if chosen is not fallback and detector.is_ejected(chosen.name) and not detector.is_ejected(fallback.name):
            metrics.FAILOVER.labels(chosen.name, fallback.name, "ejected").inc()
            first = fallback
        failures: list[tuple[str, str]] = []
        try:
            resp, latency = await self._call(first, body, headers, content_type, first.timeout_s)
            return first, resp, latency, failures
        except (UpstreamError, _HttpFailure) as exc:
            failures.append((first.name, exc.message))
        if first is fallback:
            return None, None, 0.0, failures
        metrics.FAILOVER.labels(first.name, fallback.name, "error").inc()
        try:
            resp, latency = await self._call(fallback, body, headers, content_type, fallback.timeout_s)
            return fallback, resp, latency, failures
        except (UpstreamError, _HttpFailure) as exc:
            failures.append((fallback.name, exc.message))
            return None, None, 0.0, failures

    async def _call(self, variant: Variant, body: bytes, headers: bytes, content_type: bytes,
                    timeout_s: float) -> tuple[Response, float]:
        t0 = time.perf_counter()
        try:
            resp = await variant.pool.request(b"POST", variant.infer_path, body, timeout_s=timeout_s,
                                              headers=headers, content_type=content_type)
        except UpstreamError as exc:
            variant.metrics.upstream_error(exc.kind)
            self.detector.failure(variant.name)
            raise
        latency = time.perf_counter() - t0
        variant.metrics.upstream_seconds.observe(latency)
        if resp.status >= 500:
            failure = _HttpFailure(resp)
            variant.metrics.upstream_error(failure.kind)
            self.detector.failure(variant.name)
            raise failure
        self.detector.success(variant.name)
        return resp, latency

    async def _send_shadow(self, variant: Variant, body: bytes, headers: bytes,
                           timeout_s: float) -> tuple[Response, float]:
        t0 = time.perf_counter()
        try:
            resp = await variant.pool.request(b"POST", variant.infer_path, body, timeout_s=timeout_s,
                                              headers=headers + b"x-shadow: 1\r\n")
        except UpstreamError:
            self.detector.failure(variant.name)
            raise
        if resp.status >= 500:
            self.detector.failure(variant.name)
        else:
            self.detector.success(variant.name)
        return resp, time.perf_counter() - t0

    def _settle_failed(self, table: RouteTable, chosen: Variant, rid: str) -> None:
        if table.is_bandit and table.failure_reward is not None:
            try:
                table.policy.on_reward(chosen.name, table.failure_reward)
            except (InvalidRewardError, UnknownVariantError) as exc:
                log.warning("failure reward not recorded", extra={"variant": chosen.name, "error": str(exc)})
            why = (f"its variant {chosen.name!r} failed and was scored the failure reward "
                   f"{table.failure_reward:g}; the fallback answered")
        else:
            why = f"its variant {chosen.name!r} failed and the fallback answered; not an outcome of {chosen.name!r}"
        self.pending.settle(rid, why)

    # -- model metadata (proxied to the fallback variant) -------------------------------------------

    async def model_metadata(self, model: str, version: str | None, tail: str) -> tuple[int, bytes, bytes]:
        """Metadata / readiness of the variant serving `version` (default: the fallback variant)."""
        table = self.table
        assert table is not None
        if table.public_model is not None and model != table.public_model:
            raise NotFound(f"model {model!r} is not routed here; this router serves {table.public_model!r}",
                           field="model")
        variant = table.fallback
        if version is not None:
            name = table.by_version.get(version)
            if name is None:
                raise NotFound(f"version {version!r} is not routed here; routed versions: {sorted(table.by_version)}",
                               field="model_version")
            variant = table.variants[name]
        try:
            resp = await variant.pool.request(b"GET", variant.metadata_path(tail), timeout_s=variant.timeout_s)
        except UpstreamError as exc:
            raise Unavailable(f"fallback variant {variant.name!r}: {exc.message}") from None
        return resp.status, resp.body, resp.content_type or _JSON

    # -- feedback, reports ------------------------------------------------------------------------

    def feedback(self, body: dict[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(body) - {"request_id", "key", "reward", "outcome"})
        if unknown:
            raise InvalidInput(f"unknown field(s) {unknown}; send request_id (or key) and reward (or outcome)",
                               field=unknown[0])
        request_id, key = body.get("request_id"), body.get("key")
        if (request_id is None) == (key is None):
            raise InvalidInput("send exactly one of request_id and key", field="request_id")
        for field, value in (("request_id", request_id), ("key", key)):
            if value is not None and (not isinstance(value, str) or not value):
                raise InvalidInput(f"{field} must be a non-empty string, got {value!r}", field=field)
        if ("reward" in body) == ("outcome" in body):
            raise InvalidInput("send exactly one of reward and outcome (a number; 0/1 for A/B)", field="reward")
        field = "reward" if "reward" in body else "outcome"
        value = body[field]
        if isinstance(value, bool):
            value = int(value)
        if not isinstance(value, (int, float)):
            raise InvalidInput(f"{field} must be a number, got {value!r}", field=field)
        table = self.table
        assert table is not None
        if not table.learns:
            raise Conflict(f"the policy in force ({table.kind!r}, config version {table.version}) takes no feedback; "
                           "A/B and bandit policies do", field="request_id")
        rid, entry = self.pending.get(request_id, key)
        if entry.epoch != table.epoch:
            self.pending.settle(rid, "its decision was made under an earlier policy")
            raise Conflict(f"request_id {rid!r} was routed under an earlier policy; the one in force "
                           f"(config version {table.version}) cannot learn from it", field="request_id")
        try:
            table.policy.on_reward(entry.variant, value)
        except UnknownVariantError:
            self.pending.settle(rid, f"its variant {entry.variant!r} is no longer routed")
            raise Conflict(f"variant {entry.variant!r} of request_id {rid!r} is no longer routed "
                           f"(config version {table.version})", field="request_id") from None
        except InvalidRewardError as exc:
            raise InvalidInput(str(exc).replace("reward:", f"{field}:", 1), field=field) from None
        self.pending.close(rid)
        self._dirty = True
        return {"request_id": rid, "variant": entry.variant, field: value, "applied": True}

    def experiment(self, name: str) -> dict[str, Any]:
        table = self.table
        assert table is not None
        if name != table.config.name:
            raise NotFound(f"unknown experiment {name!r}; this router runs {table.config.name!r}", field="name")
        policy = table.policy
        report = policy.report() if isinstance(policy, ABTestPolicy) else policy.state()
        return {
            "name": name,
            "policy": table.kind,
            "config_version": table.version,
            "variants": list(table.variants),
            "pending_feedback": self.pending.variants_pending(),
            "report": report,
        }

    def policy_status(self) -> dict[str, Any]:
        table = self.table
        assert table is not None
        return {
            "name": table.config.name,
            "kind": table.kind,
            "config_version": table.version,
            "epoch": table.epoch,
            "state": table.policy.state(),
            "pending_feedback": self.pending.variants_pending(),
            "variants": {
                name: {"url": v.cfg.url, "model": v.cfg.model, "version": v.cfg.version, "timeout_s": v.timeout_s,
                       "fallback": v is table.fallback,
                       **self.detector.snapshot().get(name, {"ejected": False, "consecutive_failures": 0})}
                for name, v in table.variants.items()
            },
        }

    def shadow_summary(self) -> dict[str, Any]:
        table = self.table
        assert table is not None
        return {"policy": table.kind, "config_version": table.version,
                "shadows": [v.name for v in table.shadows], **self.mirror.summary()}

    # -- admin auth --------------------------------------------------------------------------

    def admin_token(self) -> str | None:
        s = self.settings
        if s.admin_token is not None and s.admin_token.get_secret_value():
            return s.admin_token.get_secret_value()
        if s.admin_token_file is not None:
            try:
                token = Path(s.admin_token_file).read_text().strip()
            except OSError as exc:
                log.error("admin token file unreadable; admin API disabled",
                          extra={"path": str(s.admin_token_file), "error": str(exc)})
                return None
            return token or None
        return None

    def check_admin(self, authorization: str | None) -> None:
        token = self.admin_token()
        if token is None:
            raise Forbidden("the admin API is disabled: no admin token is configured "
                            "(set ROUTER_ADMIN_TOKEN or ROUTER_ADMIN_TOKEN_FILE)", field="Authorization")
        if not authorization:
            raise Unauthorized("the admin API needs an 'Authorization: Bearer <token>' header", field="Authorization")
        scheme, _, presented = authorization.partition(" ")
        if scheme.lower() != "bearer" or not presented.strip():
            raise Unauthorized("Authorization must be 'Bearer <token>'", field="Authorization")
        if not hmac.compare_digest(presented.strip().encode(), token.encode()):
            raise Unauthorized("invalid admin token", field="Authorization")


# -- helpers ---------------------------------------------------------------------------------------


def _address(url: str) -> str:
    """Pool key: scheme://host:port/base-path (one pool per distinct upstream)."""
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return f"{parts.scheme}://{parts.hostname}:{port}{parts.path.rstrip('/')}"


def _body_key(body: bytes, parameter: str) -> str | None:
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None  # the model server names the JSON problem
    params = doc.get("parameters") if isinstance(doc, dict) else None
    value = params.get(parameter) if isinstance(params, dict) else None
    if value is None or isinstance(value, (dict, list)):
        return None
    return str(value)


def _annotate(resp: Response, served: Variant, rid: str) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    """The answer with `variant` and `request_id` spliced into its JSON, and the router's headers."""
    body = resp.body
    content_type = resp.content_type or _JSON
    headers = [(b"content-type", content_type), (b"x-request-id", rid.encode()), (b"x-variant", served.name.encode())]
    model_version = served.model_version
    if resp.status < 300:
        header_len = None
        for name, value in resp.headers:
            if name == b"inference-header-content-length":
                header_len = int(value) if value.isdigit() else None
        json_part = body if header_len is None else body[:header_len]
        if header_len is not None or content_type.startswith(_JSON):
            found = _MODEL_VERSION.search(json_part, 0, 400)
            if found is not None:  # the version that actually answered (a label may have moved)
                model_version = served.model_prefix + found.group(1)
            spliced = _splice(json_part, served.name, rid)
            if spliced is not None:
                if header_len is None:
                    body = spliced
                else:
                    body = spliced + body[header_len:]
                    headers.append((b"inference-header-content-length", str(len(spliced)).encode()))
    headers.append((b"x-model-version", model_version))
    return body, headers


def _splice(doc: bytes, variant: str, rid: str) -> bytes | None:
    """Add "variant" and "request_id" as the last members of a JSON object (they win over any
    same-named member for last-wins parsers); None when `doc` is not an object."""
    end = doc.rstrip()
    if not end.endswith(b"}") or not doc.lstrip().startswith(b"{"):
        return None
    fields = b'"variant":' + orjson.dumps(variant) + b',"request_id":' + orjson.dumps(rid) + b"}"
    inner = end[:-1].rstrip()
    if inner.endswith(b"{"):
        return inner + fields
    return inner + b"," + fields


def error_parts(exc: ServingError, rid: str) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """(status, headers, body) of an error answer on the inference path."""
    body = orjson.dumps({**exc.to_dict(), "request_id": rid})
    headers = [(b"content-type", _JSON), (b"x-request-id", rid.encode()), (b"content-length", str(len(body)).encode())]
    return exc.http_status, headers, body


async def _send_error(send: Send, exc: ServingError, rid: str) -> None:
    status, headers, body = error_parts(exc, rid)
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
