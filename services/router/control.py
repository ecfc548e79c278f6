"""The control plane: which routing config is in force, how it changes, and what a restart keeps.

    control.load()                       at start: the config file (or the state file's newer admin
                                         config), the saved policy state and pending feedback
    control.check_config_file()          the poller: re-read the file when its mtime/size/inode changed
    control.admin_put(text, if_match)    PUT /admin/routing: validated YAML, If-Match on the version
    control.apply(config, text, source)  build the next table and install it (same content: nothing)
    control.save_state()                 the state file, written atomically

Each accepted change gets the next version. A change that keeps the policy kind carries the
policy's learned state over (`RoutingPolicy.carries_state` / `carry_over`); a new kind starts a
new policy generation (epoch), so feedback for earlier decisions is refused.
"""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path
from typing import Any

from services.core.files import atomic_write
from services.router import metrics
from services.router.config import RoutingConfig, RoutingConfigError, parse_config
from services.router.dispatch import Dispatcher
from services.router.errors import PreconditionFailed
from services.router.policies import PolicyStateError, RoutingPolicy, build_policy
from services.router.settings import RouterSettings
from services.router.state import StateFile
from services.router.table import RouteTable, build_table
from services.router.upstream import Pools

log = logging.getLogger("services.router")


class Control:
    def __init__(self, settings: RouterSettings, dispatcher: Dispatcher, pools: Pools) -> None:
        self.settings = settings
        self.dispatcher = dispatcher
        self.pools = pools
        self.config_path = Path(settings.routing_config)
        self.state_file = StateFile(settings.state_file)
        self.file_hash: str | None = None
        """Content hash of the config file as last read."""
        self._file_sig: tuple[int, int, int] | None = None

    @property
    def table(self) -> RouteTable:
        table = self.dispatcher.table
        assert table is not None, "control.load() first"
        return table

    # -- start -----------------------------------------------------------------------------------

    def load(self) -> None:
        """Load the config and the saved state (raises SystemExit naming the problem)."""
        if self.dispatcher.table is not None:
            return
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
        base_version = saved_version if isinstance(saved_version, int) and saved_version > 0 else 0
        same = saved is not None and saved.get("hash") == config.content_hash()
        version = base_version if same and base_version else base_version + 1
        epoch = state.get("policy_epoch", 0) if isinstance(state.get("policy_epoch"), int) else 0
        policy = build_policy(config.policy.kind, list(config.variants), config.policy.params)
        policy_state = state.get("policy")
        kept = "nothing saved"
        if isinstance(policy_state, dict):
            if not policy.carries_state:
                kept = "stateless (its state comes from the config)"
            elif _carry(policy_state, policy):
                kept = "restored"
            else:
                kept, epoch = "no: the saved state does not fit", epoch + 1
        self._install(config, text, source, version, policy, epoch, previous=None, state_kept=kept)
        feedback = state.get("feedback")
        if isinstance(feedback, dict):
            try:
                self.dispatcher.pending.load(feedback)
            except ValueError as exc:
                log.error("pending feedback in the state file is invalid; dropped", extra={"error": str(exc)})

    # -- changes ---------------------------------------------------------------------------------

    def apply(self, config: RoutingConfig, text: str, source: str) -> tuple[RouteTable, bool]:
        """Make `config` the one in force; (table, changed). Same content: nothing changes."""
        old = self.table
        if config.content_hash() == old.hash:
            metrics.CONFIG_RELOADS.labels(source, "unchanged").inc()
            return old, False
        policy = build_policy(config.policy.kind, list(config.variants), config.policy.params)
        epoch = old.epoch
        if policy.kind != old.kind:
            epoch, kept = old.epoch + 1, "no: the policy kind changed"
        elif not policy.carries_state:
            kept = "its state comes from the new config (sticky keys stay by hash)"
        elif _carry(old.policy.state(), policy):
            kept = "yes"
        else:
            epoch, kept = old.epoch + 1, "no: the saved state does not fit the new variants"
        table = self._install(config, text, source, old.version + 1, policy, epoch, previous=old, state_kept=kept)
        metrics.CONFIG_RELOADS.labels(source, "applied").inc()
        return table, True

    def _install(self, config: RoutingConfig, text: str, source: str, version: int, policy: RoutingPolicy,
                 epoch: int, *, previous: RouteTable | None, state_kept: str) -> RouteTable:
        table = build_table(config, version=version, source=source, text=text, policy=policy, epoch=epoch,
                            pools=self.pools)
        self.dispatcher.install(table)
        self.pools.retain(v.cfg.url for v in table.variants.values())
        metrics.CONFIG_VERSION.set(version)
        fields = {
            "old_version": previous.version if previous else None,
            "new_version": version,
            "old_hash": previous.hash if previous else None,
            "new_hash": table.hash,
            "source": source,
            "route": config.name,
            "policy": table.kind,
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
        try:
            text = self.config_path.read_text()
            config = parse_config(text, str(self.config_path))
        except (OSError, RoutingConfigError) as exc:
            error = exc.message if isinstance(exc, RoutingConfigError) else f"{self.config_path}: {exc}"
            metrics.CONFIG_RELOADS.labels("file", "rejected").inc()
            log.error("routing config file rejected; the config in force stays",
                      extra={"error": error, "version_in_force": self.table.version, "path": str(self.config_path)})
            return
        self.file_hash = config.content_hash()
        self.apply(config, text, "file")

    async def poll_config(self) -> None:
        while True:
            await asyncio.sleep(self.settings.config_poll_s)
            try:
                self.check_config_file()
            except Exception:
                log.exception("config poll failed")

    def admin_put(self, text: str, if_match: str | None) -> dict[str, Any]:
        """PUT /admin/routing: validate, apply, write back to the file (when allowed), save state."""
        table = self.table
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

    # -- persistence -------------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        table = self.table
        return {
            "config": {"version": table.version, "hash": table.hash, "source": table.source, "text": table.text,
                       "file_hash": self.file_hash},
            "policy": table.policy.state(),
            "policy_epoch": table.epoch,
            "feedback": self.dispatcher.pending.dump(),
        }

    def save_state(self) -> None:
        if not self.state_file.enabled or self.dispatcher.table is None:
            return
        try:
            self.state_file.save(self.snapshot())
            self.dispatcher.dirty = False
        except OSError as exc:
            log.error("could not save the router state", extra={"path": str(self.state_file.path), "error": str(exc)})

    async def save_periodically(self) -> None:
        dispatcher = self.dispatcher
        while True:
            await asyncio.sleep(self.settings.state_save_interval_s)
            if dispatcher.dirty and dispatcher.table is not None:
                # The snapshot is taken on the loop (consistent); the write and fsync happen on a
                # thread so the requests in flight do not wait for the disk.
                snapshot = self.snapshot()
                dispatcher.dirty = False
                try:
                    await asyncio.to_thread(self.state_file.save, snapshot)
                except OSError as exc:
                    dispatcher.dirty = True
                    log.error("could not save the router state",
                              extra={"path": str(self.state_file.path), "error": str(exc)})


def _carry(snapshot: dict[str, Any], policy: RoutingPolicy) -> bool:
    """Load what a policy of the same kind learned into `policy`; False (and logged) when it does not fit."""
    if snapshot.get("kind") != policy.kind:
        log.warning("saved policy state is for another policy kind; starting fresh",
                    extra={"saved_kind": snapshot.get("kind"), "kind": policy.kind})
        return False
    try:
        policy.carry_over(snapshot)
    except PolicyStateError as exc:
        log.warning("saved policy state does not fit; starting fresh", extra={"error": str(exc)})
        return False
    saved = snapshot.get("variants")
    dropped = sorted({v for v in saved if isinstance(v, str)} - set(policy.variants)) if isinstance(saved, list) else []
    if dropped:
        log.warning("policy state of removed variants dropped", extra={"variants": dropped})
    return True
