"""The one model lifecycle (services/core/lifecycle.py) with real artifacts and ONNX Runtime:
refusals leave the served version alone, the swap drains leases before unloading, and the
integration check refuses a version whose holdout set disagrees with its card (skew)."""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import threading

import numpy as np
import pytest

from services.core.contract import InputContract
from services.core.errors import Unavailable
from services.core.lifecycle import (
    Artifact,
    ChecksumMismatch,
    HoldoutUnusable,
    Lifecycle,
    LoadFailed,
    NameMismatch,
    Skew,
    Slot,
    Version,
)
from services.core.runtime import OnnxModel

MODEL = "breast-cancer"


def build(model: OnnxModel) -> Version:
    return Version(model, InputContract(model.card, max_batch_size=32))


def copy_version(model_repo, tmp_path, version: int, name: str = MODEL):
    dst = tmp_path / name / str(version)
    shutil.copytree(model_repo / name / str(version), dst)
    return dst


def flip_labels(path, n: int) -> None:
    header, *rows = (path / "holdout.csv").read_text().splitlines()
    for i in range(n):
        values = rows[i].split(",")
        values[-1] = str(1 - int(values[-1]))
        rows[i] = ",".join(values)
    (path / "holdout.csv").write_text("\n".join([header, *rows]) + "\n")


def edit_card(path, **changes) -> None:
    card = json.loads((path / "model-card.json").read_text())
    for key, value in changes.items():
        if key == "accuracy":
            card["metrics"]["accuracy"] = value
        else:
            card[key] = value
    (path / "model-card.json").write_text(json.dumps(card))


def test_prepare_loads_checks_warms_and_marks_ready(model_repo):
    version = asyncio.run(Lifecycle().load_dir(model_repo / MODEL / "2", build, identity=(MODEL, 2)))
    assert version.ready and version.model.ready and version.version == 2
    labels, proba = asyncio.run(version.infer(np.zeros((3, 30), np.float32)))
    assert labels.shape == (3,) and proba.shape == (3, 2)


def test_the_check_scores_the_holdout_through_the_versions_own_input_path(model_repo, holdout):
    calls: list[int] = []

    class Counting(Version):
        async def score(self, instances):
            calls.append(len(instances))
            assert set(instances[0]) == set(holdout[0])  # rows by feature name, as a client sends them
            return await super().score(instances)

    def build_counting(model: OnnxModel) -> Version:
        return Counting(model, InputContract(model.card, max_batch_size=50))

    asyncio.run(Lifecycle().load_dir(model_repo / MODEL / "1", build_counting))
    assert calls == [50, 50, 43]  # in requests of the contract's batch limit, every holdout row once


@pytest.mark.parametrize(("change", "words"), [
    ("labels", "training/serving skew"),  # the holdout labels altered: the card's claim cannot be reached
    ("metric", "the card claims 0.900000"),  # the card's metric altered
])
def test_skew_is_refused_and_logged(model_repo, tmp_path, caplog, change, words):
    path = copy_version(model_repo, tmp_path, 1)
    if change == "labels":
        flip_labels(path, 2)  # 2 of 143 rows: 0.014 off, beyond the 0.005 default
    else:
        edit_card(path, accuracy=0.9)
    caplog.set_level(logging.WARNING, logger="services.core.lifecycle")
    with pytest.raises(Skew) as info:
        asyncio.run(Lifecycle().load_dir(path, build))
    assert info.value.code == "skew" and words in info.value.message
    refused = [r for r in caplog.records if r.getMessage().startswith("model version refused")]
    assert len(refused) == 1 and refused[0].reason == "skew" and refused[0].model_version == 1


def test_a_looser_tolerance_accepts_a_small_difference(model_repo, tmp_path):
    path = copy_version(model_repo, tmp_path, 1)
    flip_labels(path, 1)  # 1/143 = 0.007
    with pytest.raises(Skew):
        asyncio.run(Lifecycle().load_dir(path, build))
    assert asyncio.run(Lifecycle(skew_tolerance=0.01).load_dir(path, build)).ready


def test_holdout_rows_the_input_path_refuses_are_skew(model_repo, tmp_path):
    path = copy_version(model_repo, tmp_path, 1)
    csv = (path / "holdout.csv").read_text()
    (path / "holdout.csv").write_text(csv.replace("mean radius", "mean radios", 1))
    with pytest.raises(Skew, match="unknown feature"):
        asyncio.run(Lifecycle().load_dir(path, build))


def test_a_missing_holdout_set_or_claim_is_refused(model_repo, tmp_path):
    path = copy_version(model_repo, tmp_path, 1)
    (path / "holdout.csv").unlink()
    with pytest.raises(HoldoutUnusable, match="no holdout set"):
        asyncio.run(Lifecycle().load_dir(path, build))
    path = copy_version(model_repo, tmp_path / "b", 1)
    edit_card(path, metrics={})
    with pytest.raises(HoldoutUnusable, match="claims no holdout accuracy"):
        asyncio.run(Lifecycle().load_dir(path, build))


def test_refusals_name_their_step(model_repo, tmp_path):
    path = copy_version(model_repo, tmp_path, 1)
    with pytest.raises(NameMismatch):
        asyncio.run(Lifecycle().load_dir(path, build, identity=(MODEL, 7)))
    (path / "model.onnx").write_bytes((path / "model.onnx").read_bytes() + b"tampered")
    with pytest.raises(ChecksumMismatch):
        asyncio.run(Lifecycle().load_dir(path, build))

    def broken(model: OnnxModel) -> Version:
        raise RuntimeError("a bug in the service's builder")

    with pytest.raises(LoadFailed, match="a bug"):
        asyncio.run(Lifecycle().load_dir(model_repo / MODEL / "1", broken))


def test_a_failed_load_leaves_the_old_version_serving(model_repo, tmp_path):
    bad = copy_version(model_repo, tmp_path, 2)
    flip_labels(bad, 10)

    async def scenario():
        lifecycle, slot = Lifecycle(), Slot()
        await slot.swap(await lifecycle.load_dir(model_repo / MODEL / "1", build))
        with pytest.raises(Skew):
            await slot.swap(await lifecycle.load_dir(bad, build))
        bad_artifact = await asyncio.to_thread(Artifact.from_dir, bad)
        garbage = Artifact(bad_artifact.card, b"not onnx", bad_artifact.holdout_csv, "test")
        with pytest.raises(ChecksumMismatch):
            await slot.swap(await lifecycle.prepare(garbage, build))
        with slot.lease() as version:
            assert version.version == 1 and version.model.ready
            labels, _ = await version.infer(np.zeros((1, 30), np.float32))
        assert labels.shape == (1,)
        await slot.close()

    asyncio.run(scenario())


def test_the_swap_drains_leases_held_on_another_thread_before_unloading(model_repo):
    holding, release = threading.Event(), threading.Event()

    async def scenario():
        lifecycle, slot = Lifecycle(), Slot()
        v1 = await lifecycle.load_dir(model_repo / MODEL / "1", build)
        v2 = await lifecycle.load_dir(model_repo / MODEL / "2", build)
        await slot.swap(v1)

        def request_on_a_thread() -> int:
            with slot.lease() as version:
                holding.set()
                release.wait(60)
                # Still loaded: the swap waits for this lease before unloading.
                return int(version.model.predict_sync(np.zeros((1, 30), np.float32)).labels.shape[0])

        worker = asyncio.create_task(asyncio.to_thread(request_on_a_thread))
        await asyncio.to_thread(holding.wait, 60)
        swap = asyncio.create_task(slot.swap(v2))
        for _ in range(20):
            await asyncio.sleep(0)
        assert slot.current is v2  # new requests already get v2
        with slot.lease() as version:
            assert version is v2
        assert not swap.done() and v1.model.ready and v1.in_flight == 1
        assert not v1.try_enter()  # retired: no new lease on the old version
        with pytest.raises(Unavailable):
            with v1.lease():
                pass
        release.set()
        assert await worker == 1
        assert await swap is v1
        assert not v1.model.ready and v1.in_flight == 0
        await slot.close()
        assert not v2.model.ready
        with pytest.raises(Unavailable, match="no model version"):
            with slot.lease():
                pass

    asyncio.run(scenario())
