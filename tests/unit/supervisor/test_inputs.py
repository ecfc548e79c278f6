"""The router's input tap (services/router/tap.py) and the supervisor's drift of its sample
(services/supervisor/inputs.py), on the real breast-cancer model card and holdout set."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest

from services.router.tap import MAX_BODY_BYTES, InputTap, rows_of
from services.stack.paths import REPO_ROOT
from services.supervisor.inputs import POOLED, Reference, drift_from_sample


def body(rows: list[list[float]], nested: bool = False) -> bytes:
    data = rows if nested else [v for r in rows for v in r]
    return json.dumps({"inputs": [{"name": "input", "shape": [len(rows), len(rows[0])], "datatype": "FP32",
                                   "data": data}]}).encode()


def request(b: bytes) -> SimpleNamespace:
    return SimpleNamespace(body=b)


def test_rows_of_flat_nested_and_batched_bodies():
    assert rows_of(body([[1, 2, 3]])) == [[1.0, 2.0, 3.0]]
    assert rows_of(body([[1, 2], [3, 4]], nested=True)) == [[1.0, 2.0], [3.0, 4.0]]
    assert rows_of(body([[1, 2], [3, 4]])) == [[1.0, 2.0], [3.0, 4.0]]


@pytest.mark.parametrize("bad", [b"not json", b"{}", b'{"inputs": []}',
                                 b'{"inputs": [{"shape": [2], "data": [1, 2, 3]}]}',
                                 b'{"inputs": [{"shape": [1, 2], "data": ["a", "b"]}]}',
                                 b'{"inputs": [{"shape": [1, 1], "data": [null]}]}'])
def test_rows_of_refuses_what_is_not_a_v2_tensor(bad):
    assert rows_of(bad) is None


def test_the_tap_is_off_by_default_and_keeps_nothing():
    tap = InputTap()
    tap.offer("stable", request(body([[1.0]])))
    got = tap.read()
    assert got["enabled"] is False and got["variants"] == {}


def test_the_tap_is_a_bounded_ring_per_variant_newest_last():
    tap = InputTap(rows=3)
    for i in range(10):
        tap.offer("stable", request(body([[float(i), 0.0]])))
    tap.offer("candidate", request(body([[9.0, 9.0]])))
    tap.offer("candidate", SimpleNamespace(message=b"grpc"))  # no REST body: not tapped, counted
    tap.offer("candidate", request(b"x" * (MAX_BODY_BYTES + 1)))
    tap.offer("candidate", request(b"{broken"))
    got = tap.read()
    stable, candidate = got["variants"]["stable"], got["variants"]["candidate"]
    assert stable["rows"] == [[7.0, 0.0], [8.0, 0.0], [9.0, 0.0]]
    assert (stable["requests_seen"], stable["requests_sampled"], stable["requests_kept"]) == (10, 10, 3)
    assert candidate["rows"] == [[9.0, 9.0]]
    assert (candidate["not_tapped"], candidate["too_big"], candidate["unreadable"]) == (1, 1, 1)
    assert tap.read("stable", limit=2)["variants"].keys() == {"stable"}
    assert tap.read("stable", limit=2)["variants"]["stable"]["rows"] == [[8.0, 0.0], [9.0, 0.0]]


def test_the_sample_rate_thins_what_is_kept():
    tap = InputTap(rows=10_000, sample_rate=0.25)
    for _ in range(4000):
        tap.offer("stable", request(body([[1.0]])))
    kept = tap.read()["variants"]["stable"]["requests_kept"]
    assert 700 < kept < 1300, kept  # binomial(4000, 0.25): 1000 +- 4.6 sd


@pytest.fixture(scope="module")
def reference():
    return Reference(REPO_ROOT / "models" / "repository").get("breast-cancer", 2)


def sample(variants: dict[str, np.ndarray]) -> dict:
    return {"enabled": True, "observed_at": 123.0,
            "variants": {k: {"rows": v.tolist()} for k, v in variants.items()}}


def test_drift_per_variant_and_pooled_against_the_training_bins(reference):
    card, holdout = reference
    assert holdout is not None and holdout.shape[1] == len(card.features)
    live = np.vstack([holdout] * 4)
    d = drift_from_sample(sample({"stable": live, "candidate": live[:100] * 1.2}), card, holdout, observed_at=0.0)
    assert d.enabled and d.problem is None
    assert d.rows == {"stable": len(live), "candidate": 100, POOLED: len(live) + 100}
    assert d.by_variant["stable"].overall_psi < 0.25 < d.by_variant["candidate"].overall_psi
    assert d.pooled is not None and d.pooled.rows == len(live) + 100 and d.pooled.observed_at == 0.0
    assert all(f.ks_statistic is not None for f in d.pooled.features)


def test_rows_of_another_width_are_dropped_and_an_empty_or_disabled_tap_says_why(reference):
    card, holdout = reference
    d = drift_from_sample(sample({"stable": np.ones((5, 3))}), card, holdout, observed_at=0.0)
    assert d.pooled is None and d.rows["stable"] == 0 and "no rows" in d.problem
    off = drift_from_sample({"enabled": False, "variants": {}}, card, holdout, observed_at=0.0)
    assert not off.enabled and "off" in off.problem
