"""The hot-swap backend's decisions, in-process: records are handed to it as the subscriber would.

(The same paths run against the real broker in tests/integration/test_model_as_data.py.)
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import threading
from types import SimpleNamespace

import numpy as np
import onnxruntime as ort
import pytest

from services.apps.hotswap import HotSwapBackend
from services.core.card import ModelCard
from services.kafka import messages
from services.kafka.events import ModelEvents

KEY = b"unit-test-key-0123456789abcdef"


class FakeSubscriber:
    def __init__(self) -> None:
        self.recovered = threading.Event()

    def start(self) -> None: ...

    def stop(self) -> None: ...


class RecordingEvents(ModelEvents):
    def __init__(self) -> None:
        super().__init__(None, app="unit")
        self.seen: list[dict] = []

    def emit(self, event, model_name, model_version, **kw):
        record = super().emit(event, model_name, model_version, **kw)
        self.seen.append(record)
        return record


def record(value: bytes | None, offset: int, key: str = "breast-cancer"):
    return SimpleNamespace(topic="models", partition=0, offset=offset, key=key.encode(), value=value, timestamp=0)


def artifact(model_repo, name: str, version: int) -> tuple[dict, bytes]:
    d = model_repo / name / str(version)
    return json.loads((d / "model-card.json").read_text()), (d / "model.onnx").read_bytes()


def signed(model_repo, name: str, version: int, key: bytes = KEY) -> bytes:
    return messages.encode(*artifact(model_repo, name, version), key)


@pytest.fixture
def backend(model_repo):
    ref = ModelCard.from_file(model_repo / "breast-cancer" / "2" / "model-card.json")
    return HotSwapBackend(model_name="breast-cancer", key=KEY, events=RecordingEvents(),
                          subscriber_factory=lambda _: FakeSubscriber(), reference_card=ref)


def served(backend) -> int | None:
    return backend.model.version if backend.model is not None else None


def test_recovery_takes_the_newest_acceptable_record(backend, model_repo):
    bad = signed(model_repo, "breast-cancer", 2, key=b"another-key-0123456789abcdef")
    backend.recover([record(signed(model_repo, "breast-cancer", 1), 0),
                     record(signed(model_repo, "breast-cancer", 2), 1),
                     record(bad, 2)])
    assert backend.ready and served(backend) == 2
    kinds = [(e["event"], e["model_version"], e["reason"]) for e in backend.events.seen]
    assert kinds == [("rejected", 2, "signature"), ("loaded", 2, None), ("swapped", 2, None)]


def test_not_ready_until_recovery_and_without_any_model(backend):
    assert not backend.ready
    backend.recover([])
    assert not backend.ready


def test_swap_then_rollback_and_identical_republish(backend, model_repo, holdout):
    backend.recover([record(signed(model_repo, "breast-cancer", 1), 0)])
    backend.handle(record(signed(model_repo, "breast-cancer", 2), 1))
    assert served(backend) == 2
    x = holdout[1][:5].astype(np.float32)
    got = asyncio.run(backend.predict(x))
    _, proba = ort.InferenceSession(str(model_repo / "breast-cancer/2/model.onnx")).run(None, {"input": x})
    assert got.model_version == 2
    np.testing.assert_allclose(got.probabilities, proba, atol=1e-6)
    backend.handle(record(signed(model_repo, "breast-cancer", 1), 2))  # rollback
    assert served(backend) == 1
    backend.handle(record(signed(model_repo, "breast-cancer", 1), 3))
    assert backend.events.seen[-1]["event"] == "unchanged"


def test_refusals_keep_the_served_version(backend, model_repo):
    backend.recover([record(signed(model_repo, "breast-cancer", 1), 0)])
    wine_card, wine_onnx = artifact(model_repo, "wine", 1)
    as_breast_cancer = {**wine_card, "name": "breast-cancer", "version": 9}
    garbage = b"\x08\x07 not an onnx graph" * 20
    corrupt_card = {**artifact(model_repo, "breast-cancer", 2)[0], "sha256": hashlib.sha256(garbage).hexdigest()}
    cases = [
        (messages.encode(as_breast_cancer, wine_onnx, KEY), "contract"),
        (messages.encode(corrupt_card, garbage, KEY), "load"),
        (signed(model_repo, "breast-cancer", 2)[:-5] + b"xxxxx", "signature"),
        (messages.encode(artifact(model_repo, "breast-cancer", 2)[0], wine_onnx, KEY), "checksum"),
        (signed(model_repo, "wine", 1), "name"),
        (None, None),  # a tombstone: ignored, no event
    ]
    for offset, (value, _) in enumerate(cases, start=1):
        backend.handle(record(value, offset))
        assert served(backend) == 1
    rejected = [(e["source"]["offset"], e["reason"]) for e in backend.events.seen if e["event"] == "rejected"]
    assert rejected == [(i, reason) for i, (_, reason) in enumerate(cases, start=1) if reason]
    assert "feature names" in next(e["detail"] for e in backend.events.seen if e["reason"] == "contract")
