"""The models-topic follower's decisions behind the app's hot-swap backend, in-process: records are
handed to it as the subscriber would (on the event loop).

(The same paths run against the real broker in tests/integration/test_model_as_data.py.)
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from types import SimpleNamespace

import numpy as np
import onnxruntime as ort
import pytest
from prometheus_client import REGISTRY

from services.apps.hotswap import HotSwapBackend, version_builder
from services.core.card import ModelCard
from services.core.lifecycle import Lifecycle
from services.kafka import messages
from services.kafka.events import ModelEvents
from services.kafka.follower import ModelFollower

KEY = b"unit-test-key-0123456789abcdef"
MODEL = "breast-cancer"


class FakeSubscriber:
    def start(self, loop) -> None: ...

    def stop(self) -> None: ...


class RecordingEvents(ModelEvents):
    def __init__(self) -> None:
        super().__init__(None, app="unit")
        self.seen: list[dict] = []

    def emit(self, event, model_name, model_version, **kw):
        record = super().emit(event, model_name, model_version, **kw)
        self.seen.append(record)
        return record


def record(value: bytes | None, offset: int, key: str = MODEL):
    return SimpleNamespace(topic="models", partition=0, offset=offset, key=key.encode(), value=value, timestamp=0)


def artifact(model_repo, name: str, version: int) -> tuple[dict, bytes, bytes]:
    d = model_repo / name / str(version)
    return (json.loads((d / "model-card.json").read_text()), (d / "model.onnx").read_bytes(),
            (d / "holdout.csv").read_bytes())


def signed(model_repo, name: str, version: int, key: bytes = KEY, **kw) -> bytes:
    return messages.encode(*artifact(model_repo, name, version), key, **kw)


def flipped_labels(holdout_csv: bytes, n: int) -> bytes:
    """The holdout set with the labels of its first `n` rows flipped (0 <-> 1)."""
    header, *rows = holdout_csv.decode().splitlines()
    for i in range(n):
        values = rows[i].split(",")
        values[-1] = str(1 - int(values[-1]))
        rows[i] = ",".join(values)
    return ("\n".join([header, *rows]) + "\n").encode()


def rejections(reason: str) -> float:
    return sum(REGISTRY.get_sample_value("model_rejections_total", {"model_name": MODEL, "model_version": v,
                                                                    "reason": reason}) or 0.0
               for v in ("1", "2", "7", "8", "9", "unknown"))


@pytest.fixture
def backend(model_repo):
    ref = ModelCard.from_file(model_repo / MODEL / "2" / "model-card.json")
    follower = ModelFollower(model_name=MODEL, key=KEY, events=RecordingEvents(), lifecycle=Lifecycle(),
                             build=version_builder(256), subscriber_factory=lambda _: FakeSubscriber(),
                             reference_card=ref)
    return HotSwapBackend(follower)


def served(backend) -> int | None:
    return backend.model.card.version if backend.model is not None else None


def events(backend) -> list[dict]:
    return backend.follower.events.seen


def test_recovery_takes_the_newest_acceptable_record(backend, model_repo):
    bad = signed(model_repo, MODEL, 2, key=b"another-key-0123456789abcdef", release=30)
    asyncio.run(backend.follower.recover([record(signed(model_repo, MODEL, 1, release=10), 0),
                                          record(signed(model_repo, MODEL, 2, release=20), 1),
                                          record(bad, 2)]))
    assert backend.ready and served(backend) == 2
    kinds = [(e["event"], e["model_version"], e["reason"]) for e in events(backend)]
    assert kinds == [("rejected", 2, "signature"), ("loaded", 2, None), ("swapped", 2, None)]


def test_not_ready_until_recovery_and_without_any_model(backend):
    assert not backend.ready
    asyncio.run(backend.follower.recover([]))
    assert not backend.ready


def test_swap_then_rollback_and_identical_republish(backend, model_repo, holdout):
    f = backend.follower

    async def scenario():
        await f.recover([record(signed(model_repo, MODEL, 1), 0)])
        v1 = f.slot.current
        await f.handle(record(signed(model_repo, MODEL, 2), 1))
        assert served(backend) == 2
        assert not v1.model.ready  # drained and unloaded after the swap
        x = holdout[1][:5].astype(np.float32)
        got = await backend.predict(x)
        _, proba = ort.InferenceSession(str(model_repo / MODEL / "2/model.onnx")).run(None, {"input": x})
        assert got.model_version == 2
        np.testing.assert_allclose(got.probabilities, proba, atol=1e-6)
        await f.handle(record(signed(model_repo, MODEL, 1), 2))  # an older version, not marked: refused
        assert served(backend) == 2 and events(backend)[-1]["reason"] == "downgrade"
        await f.handle(record(signed(model_repo, MODEL, 1, rollback=True), 3))  # the explicit rollback
        assert served(backend) == 1
        await f.handle(record(signed(model_repo, MODEL, 1), 4))
        assert events(backend)[-1]["event"] == "unchanged"
        await backend.stop()
        assert f.slot.current is None

    asyncio.run(scenario())


def test_replayed_old_record_is_refused_and_recovery_prefers_the_newest_release(backend, model_repo):
    f = backend.follower
    v1_old = signed(model_repo, MODEL, 1, release=100)
    v2 = signed(model_repo, MODEL, 2, release=200)
    before = rejections("replay")

    async def scenario():
        await f.recover([record(v1_old, 0)])
        await f.handle(record(v2, 1))
        await f.handle(record(v1_old, 2))  # the very bytes of the first release, sent again
        assert served(backend) == 2 and f.release == 200
        await f.handle(record(signed(model_repo, MODEL, 1, release=150, rollback=True), 3))  # an older rollback too
        assert served(backend) == 2

    asyncio.run(scenario())
    assert [e["reason"] for e in events(backend) if e["event"] == "rejected"] == ["replay", "replay"]
    assert rejections("replay") == before + 2
    # A fresh follower reading that topic serves the newest release, not the last offset.
    fresh = ModelFollower(model_name=MODEL, key=KEY, events=RecordingEvents(), lifecycle=Lifecycle(),
                          build=version_builder(256), subscriber_factory=lambda _: FakeSubscriber())
    asyncio.run(fresh.recover([record(v1_old, 0), record(v2, 1), record(v1_old, 2)]))
    assert fresh.slot.current.version == 2
    asyncio.run(fresh.slot.close())


def test_gate_failed_version_is_refused_unless_demo_material_is_taken(backend, model_repo):
    f = backend.follower
    asyncio.run(f.recover([record(signed(model_repo, MODEL, 1), 0)]))
    asyncio.run(f.handle(record(signed(model_repo, MODEL, 3), 1)))
    assert served(backend) == 1
    last = events(backend)[-1]
    assert (last["event"], last["reason"]) == ("rejected", "gate") and "accept_demo_material" in last["detail"]
    f.accept_demo_material = True
    asyncio.run(f.handle(record(signed(model_repo, MODEL, 3), 2)))
    assert served(backend) == 3
    card, onnx, holdout = artifact(model_repo, MODEL, 2)
    failed = {**card, "gate": {**card["gate"], "passed": False, "demo_material": False, "reason": "below floor"}}
    asyncio.run(f.handle(record(messages.encode(failed, onnx, holdout, KEY), 3)))
    assert served(backend) == 3 and events(backend)[-1]["reason"] == "gate"  # only demo material, never a failure
    asyncio.run(backend.stop())


def test_refusals_keep_the_served_version(backend, model_repo):
    f = backend.follower
    wine_card, wine_onnx, wine_holdout = artifact(model_repo, "wine", 1)
    v2_card, v2_onnx, v2_holdout = artifact(model_repo, MODEL, 2)
    as_breast_cancer = {**wine_card, "name": MODEL, "version": 9}
    garbage = b"\x08\x07 not an onnx graph" * 20
    corrupt_card = {**v2_card, "sha256": hashlib.sha256(garbage).hexdigest()}
    cases = [
        (messages.encode(as_breast_cancer, wine_onnx, wine_holdout, KEY), "contract"),
        (messages.encode(corrupt_card, garbage, v2_holdout, KEY), "load"),
        (signed(model_repo, MODEL, 2)[:-5] + b"xxxxx", "signature"),
        (messages.encode(v2_card, wine_onnx, v2_holdout, KEY), "checksum"),
        (signed(model_repo, "wine", 1), "name"),
        # Signed and consistent, but the holdout labels do not give the accuracy the card claims.
        (messages.encode(v2_card, v2_onnx, flipped_labels(v2_holdout, 5), KEY), "skew"),
        (messages.encode({**v2_card, "metrics": {**v2_card["metrics"], "accuracy": 0.9}}, v2_onnx, v2_holdout, KEY),
         "skew"),
        (messages.encode(v2_card, v2_onnx, b"mean radius,label\n", KEY), "holdout"),
        (None, None),  # a tombstone: ignored, no event
    ]
    skew_before = rejections("skew")

    async def scenario():
        await f.recover([record(signed(model_repo, MODEL, 1, release=1), 0)])  # older than every case
        for offset, (value, _) in enumerate(cases, start=1):
            await f.handle(record(value, offset))
            assert served(backend) == 1

    asyncio.run(scenario())
    rejected = [(e["source"]["offset"], e["reason"]) for e in events(backend) if e["event"] == "rejected"]
    assert rejected == [(i, reason) for i, (_, reason) in enumerate(cases, start=1) if reason]
    details = {e["reason"]: e["detail"] for e in events(backend) if e["event"] == "rejected"}
    assert "feature names" in details["contract"]
    assert "training/serving skew" in details["skew"] and "claims 0.900000" in details["skew"]
    assert rejections("skew") == skew_before + 2
