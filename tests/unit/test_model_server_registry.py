"""The model registry in-process: version policy, labels, hot add/remove, refused loads, config reloads."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import REGISTRY

from services.core.errors import NotFound
from services.model_server.repository import AVAILABLE, END, Registry
from services.model_server.settings import ModelServerSettings
from tests.integration.model_server_helpers import add_version, copy_repository


def registry_for(repo: Path, **settings) -> Registry:
    return Registry(ModelServerSettings(model_repository=repo, poll_interval_s=0, **settings))


def loads(name: str, outcome: str) -> float:
    return REGISTRY.get_sample_value("model_server_model_loads_total", {"model_name": name, "outcome": outcome}) or 0.0


def run(coro):
    return asyncio.run(coro)


def test_default_policy_loads_the_two_newest_and_serves_the_newest_that_passed_its_gate(tmp_path):
    repo = copy_repository(tmp_path / "repo")

    async def scenario():
        reg = registry_for(repo)
        await reg.start()
        try:
            bc = reg.model("breast-cancer")
            assert sorted(bc.versions) == [2, 3]
            assert reg.resolve("breast-cancer").version == 2  # v3 failed its gate: only by number
            assert reg.resolve("breast-cancer", 3).version == 3
            assert reg.ready
            with pytest.raises(NotFound, match="no loaded version 1"):
                reg.resolve("breast-cancer", 1)
            with pytest.raises(NotFound, match="not served here"):
                reg.resolve("nope")
            x = np.zeros((2, 30), np.float32)
            labels, proba = await reg.resolve("breast-cancer").predict(x)
            assert labels.shape == (2,) and proba.shape == (2, 2)
        finally:
            await reg.stop()
        assert not reg.ready and all(s.state == END for s in reg.model("wine").statuses.values())

    run(scenario())


def test_labels_from_config_yaml_resolve_and_keep_their_versions_loaded(tmp_path):
    repo = copy_repository(tmp_path / "repo", {"breast-cancer": [1, 2, 3]})
    (repo / "breast-cancer" / "config.yaml").write_text("version_policy: {latest: 1}\nlabels: {stable: 1, canary: 3}\n")

    async def scenario():
        reg = registry_for(repo)
        await reg.start()
        try:
            entry = reg.model("breast-cancer")
            assert sorted(entry.versions) == [1, 3]  # latest:1 -> 3, plus the labelled 1
            assert reg.resolve("breast-cancer", label="stable").version == 1
            assert reg.resolve("breast-cancer", label="canary").version == 3
            assert reg.resolve("breast-cancer").version == 1  # newest loaded that passed its gate
            with pytest.raises(NotFound, match="no version label 'beta'"):
                reg.resolve("breast-cancer", label="beta")
            # Relabel at run time: stable moves to 2, which gets loaded; 1 is unloaded.
            cfg = repo / "breast-cancer" / "config.yaml"
            cfg.write_text("version_policy: {latest: 1}\nlabels: {stable: 2, canary: 3}\n")
            os.utime(cfg, ns=(1, 1))  # a distinct mtime even on coarse file systems
            await reg.sync()
            assert sorted(entry.versions) == [2, 3]
            assert reg.resolve("breast-cancer", label="stable").version == 2
            assert entry.statuses[1].state == END
        finally:
            await reg.stop()

    run(scenario())


def test_hot_add_loads_new_versions_and_unloads_the_oldest_by_policy(tmp_path):
    repo = copy_repository(tmp_path / "repo", {"wine": [1]})

    async def scenario():
        reg = registry_for(repo)
        await reg.start()
        try:
            old = reg.resolve("wine")
            assert old.version == 1
            add_version(repo, "wine", 2)
            await reg.sync()
            assert reg.resolve("wine").version == 2 and sorted(reg.model("wine").versions) == [1, 2]
            add_version(repo, "wine", 3)
            await reg.sync()
            entry = reg.model("wine")
            assert sorted(entry.versions) == [2, 3]
            assert entry.statuses[1].state == END and entry.statuses[3].state == AVAILABLE
            assert reg.resolve("wine").version == 2  # v3 failed its gate
            assert not old.model.ready  # unloaded
            # A half-copied version (no card yet) is invisible.
            (repo / "wine" / "4").mkdir()
            (repo / "wine" / "4" / "model.onnx").write_bytes(b"partial")
            await reg.sync()
            assert 4 not in entry.statuses
        finally:
            await reg.stop()

    run(scenario())


def test_a_refused_load_leaves_the_serving_versions_alone_and_is_counted(tmp_path):
    repo = copy_repository(tmp_path / "repo", {"breast-cancer": [1, 2]})
    failed_before = loads("breast-cancer", "failed")

    async def scenario():
        reg = registry_for(repo)
        await reg.start()
        try:
            bad = add_version(repo, "breast-cancer", 3)
            (bad / "model.onnx").write_bytes((bad / "model.onnx").read_bytes() + b"tampered")
            await reg.sync()
            entry = reg.model("breast-cancer")
            assert sorted(entry.versions) == [1, 2]  # nothing unloaded for a version that never came up
            assert entry.statuses[3].state == END and "sha256" in entry.statuses[3].error
            assert entry.statuses[3].grpc_code.name == "INTERNAL"
            assert reg.resolve("breast-cancer").version == 2
            await reg.sync()  # not retried while the card is unchanged
            assert loads("breast-cancer", "failed") == failed_before + 1
            # A card claiming another version is refused too.
            wrong = repo / "breast-cancer" / "7"
            wrong.mkdir()
            for f in (repo / "breast-cancer" / "2").iterdir():
                (wrong / f.name).write_bytes(f.read_bytes())
            await reg.sync()
            assert "says 'breast-cancer' v7" in entry.statuses[7].error and entry.statuses[7].reason == "name"
            assert sorted(entry.versions) == [1, 2]
        finally:
            await reg.stop()

    run(scenario())


def test_batching_config_change_reloads_in_place_and_removal_unloads(tmp_path):
    repo = copy_repository(tmp_path / "repo", {"wine": [2], "breast-cancer": [2]})

    async def scenario():
        reg = registry_for(repo)
        await reg.start()
        try:
            assert reg.resolve("wine").batcher is None
            (repo / "wine" / "config.yaml").write_text(json.dumps({"batching": {"enabled": True, "max_rows": 8}}))
            await reg.sync()
            servable = reg.resolve("wine")
            assert servable.batcher is not None and servable.batcher.max_rows == 8
            labels, _ = await servable.predict(np.ones((3, 13), np.float32))
            assert labels.shape == (3,)
            # Removing a model's directory unloads it and forgets it.
            for f in (repo / "wine" / "2").iterdir():
                f.unlink()
            (repo / "wine" / "2").rmdir()
            await reg.sync()
            with pytest.raises(NotFound):
                reg.resolve("wine")
            assert reg.resolve("breast-cancer").version == 2
        finally:
            await reg.stop()

    run(scenario())


def test_a_bad_config_file_keeps_the_previous_config(tmp_path):
    repo = copy_repository(tmp_path / "repo", {"wine": [1, 2]})
    (repo / "wine" / "config.yaml").write_text("labels: {stable: 1}\n")

    async def scenario():
        reg = registry_for(repo)
        await reg.start()
        try:
            assert reg.resolve("wine", label="stable").version == 1
            cfg = repo / "wine" / "config.yaml"
            cfg.write_text("labels: {stable: one}\n")
            os.utime(cfg, ns=(2, 2))
            await reg.sync()
            assert reg.resolve("wine", label="stable").version == 1
        finally:
            await reg.stop()

    run(scenario())


def _flip_holdout_labels(version_dir: Path, n: int) -> None:
    header, *rows = (version_dir / "holdout.csv").read_text().splitlines()
    for i in range(n):
        values = rows[i].split(",")
        values[-1] = str(1 - int(values[-1]))
        rows[i] = ",".join(values)
    (version_dir / "holdout.csv").write_text("\n".join([header, *rows]) + "\n")


def test_a_version_whose_holdout_disagrees_with_its_card_is_refused_as_skew(tmp_path):
    """The integration check in the registry: real v2 artifacts, one with its holdout labels altered and
    one with its card's accuracy altered, are scored through the server's own input path (contract and
    batcher), refused as skew, and the serving version stays; a corrected copy is taken on the next scan."""
    repo = copy_repository(tmp_path / "repo", {"breast-cancer": [1]})
    (repo / "breast-cancer" / "config.yaml").write_text("version_policy: {latest: 1}\nbatching: {enabled: true}\n")
    failed_before = loads("breast-cancer", "failed")

    async def scenario():
        reg = registry_for(repo)
        await reg.start()
        try:
            entry = reg.model("breast-cancer")
            _flip_holdout_labels(add_version(repo, "breast-cancer", 2), 4)  # no poller here: sync() scans
            await reg.sync()
            status = entry.statuses[2]
            assert (status.state, status.reason) == (END, "skew") and "training/serving skew" in status.error
            assert sorted(entry.versions) == [1] and reg.resolve("breast-cancer").version == 1
            assert loads("breast-cancer", "failed") == failed_before + 1

            # The card's claim altered instead (and the holdout set restored): refused the same way.
            add_version(repo, "breast-cancer", 2)
            card_path = repo / "breast-cancer" / "2" / "model-card.json"
            card = json.loads(card_path.read_text())
            card["metrics"]["accuracy"] = 0.99
            card_path.write_text(json.dumps(card))
            os.utime(card_path, ns=(3, 3))
            await reg.sync()
            assert entry.statuses[2].reason == "skew" and "claims 0.990000" in entry.statuses[2].error
            assert sorted(entry.versions) == [1]

            add_version(repo, "breast-cancer", 2)  # the real release: a new card, so a fresh try
            os.utime(card_path, ns=(4, 4))
            await reg.sync()
            assert entry.statuses[2].state == AVAILABLE and reg.resolve("breast-cancer").version == 2
            assert entry.statuses[1].state == END
        finally:
            await reg.stop()

    run(scenario())
