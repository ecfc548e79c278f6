"""The scoring worker's micro-batch path without Kafka: records in, results and dead letters out,
validated through the shared contract and scored by a real ONNX Runtime session."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import numpy as np
import onnxruntime as ort
import orjson
import pytest

from services.core.contract import RangePolicy
from services.core.lifecycle import Lifecycle
from services.kafka.scoring.batch import ScoringVersion, score_records
from services.kafka.scoring.output import dead_letter_value, result_value

MODEL = "breast-cancer"


def rec(value: bytes | None, offset: int, key: str = "k"):
    return SimpleNamespace(topic="requests", partition=offset % 4, offset=offset, timestamp=1000 + offset,
                           key=key.encode(), value=value)


def version_for(model_repo, policy: RangePolicy = RangePolicy.FLAG, max_batch_size: int = 16) -> ScoringVersion:
    build = ScoringVersion.builder(max_batch_size=max_batch_size, range_policy=policy, range_margin=0.1,
                                   max_record_bytes=1_000_000)
    return asyncio.run(Lifecycle().load_dir(model_repo / MODEL / "1", build))


@pytest.fixture(scope="module")
def reference(model_repo, holdout):
    x32 = holdout[1].astype(np.float32)
    labels, proba = ort.InferenceSession(str(model_repo / MODEL / "1" / "model.onnx")).run(None, {"input": x32})
    return holdout[0], x32, labels, proba


def test_good_records_by_array_and_by_name_are_scored_in_one_call(model_repo, reference):
    names, x32, labels, proba = reference
    version = version_for(model_repo)
    records = [rec(orjson.dumps({"request_id": f"a{i}", "instances": [x32[i].tolist()]}), i) for i in range(5)]
    records.append(rec(orjson.dumps({"request_id": "named", "instances": [dict(zip(names, x32[7].tolist(),
                                                                                     strict=True))] * 2}), 5))
    scored = score_records(records, version, 10_000)
    assert not scored.dead and scored.rows == 7 and (scored.model_name, scored.model_version) == (MODEL, 1)
    assert [r.request_id for r in scored.results] == ["a0", "a1", "a2", "a3", "a4", "named"]
    for i, r in enumerate(scored.results[:5]):
        assert r.labels == [int(labels[i])]
        np.testing.assert_allclose(r.probabilities, proba[i : i + 1], atol=1e-6)
    assert scored.results[5].labels == [int(labels[7])] * 2
    body = orjson.loads(result_value(scored.results[0], scored))
    assert body == {"schema": 1, "request_id": "a0", "model_name": MODEL, "model_version": 1,
                    "labels": [int(labels[0])], "probabilities": body["probabilities"],
                    "source": {"partition": 0, "offset": 0, "timestamp_ms": 1000}}


def test_bad_records_become_dead_letters_with_the_error_hierarchys_codes(model_repo, reference):
    _, x32, labels, _ = reference
    version = version_for(model_repo)
    good = [x32[0].tolist()]
    values = {
        "empty-value": b"",
        "bad-json": b'{"request_id": "x", "instances": [[1, 2,',
        "not-object": b"[1, 2, 3]",
        "no-id": orjson.dumps({"instances": good}),
        "too-big": b'{"request_id": "too-big", "pad": "' + b"x" * 20_000 + b'"}',
        "no-instances": orjson.dumps({"request_id": "no-instances"}),
        "empty": orjson.dumps({"request_id": "empty", "instances": []}),
        "too-many-rows": orjson.dumps({"request_id": "too-many-rows", "instances": good * 17}),
        "short-row": orjson.dumps({"request_id": "short-row", "instances": [[1.0, 2.0, 3.0]]}),
        "bool": orjson.dumps({"request_id": "bool", "instances": [[True] + good[0][1:]]}),
        "overflow": b'{"request_id": "overflow", "instances": [[' + b"1e39," * 29 + b"1]]}",
        "good": orjson.dumps({"request_id": "good", "instances": good}),
    }
    scored = score_records([rec(v, i, key=k) for i, (k, v) in enumerate(values.items())], version, 10_000)
    assert [r.request_id for r in scored.results] == ["good"] and scored.results[0].labels == [int(labels[0])]
    letters = {(d.request_id or d.record.key.decode()): d for d in scored.dead}
    assert set(letters) == set(values) - {"good"}
    codes = {k: (d.error.code, d.error.field) for k, d in letters.items()}
    assert codes == {
        "empty-value": ("invalid_input", "body"), "bad-json": ("invalid_input", "body"),
        "not-object": ("invalid_input", "body"), "no-id": ("invalid_input", "request_id"),
        "too-big": ("payload_too_large", "body"), "no-instances": ("invalid_input", "instances"),
        "empty": ("invalid_input", "instances"), "too-many-rows": ("payload_too_large", "instances"),
        "short-row": ("invalid_input", "instances[0]"), "bool": ("invalid_input", "instances[0][0]"),
        "overflow": ("invalid_input", "instances[0].mean radius"),
    }
    letter = orjson.loads(dead_letter_value(letters["short-row"], "host:1", 10_000))
    assert letter["code"] == "invalid_input" and "3 values" in letter["reason"] and letter["request_id"] == "short-row"
    assert letter["value"].startswith('{"request_id":"short-row"') and letter["worker"] == "host:1"
    assert orjson.loads(dead_letter_value(letters["too-big"], "host:1", 10_000))["value_truncated"] is True


def test_range_policy_reject_refuses_only_the_request_with_the_outlier(model_repo, reference):
    _, x32, _, _ = reference
    version = version_for(model_repo, RangePolicy.REJECT)
    outlier = x32[1].copy()
    outlier[3] = 1e6  # mean area far outside the training range
    records = [rec(orjson.dumps({"request_id": "ok", "instances": [x32[0].tolist()]}), 0),
               rec(orjson.dumps({"request_id": "out", "instances": [x32[2].tolist(), outlier.tolist()]}), 1),
               rec(orjson.dumps({"request_id": "ok2", "instances": [x32[3].tolist()]}), 2)]
    scored = score_records(records, version, 10_000)
    assert [r.request_id for r in scored.results] == ["ok", "ok2"] and scored.rows == 2
    (dead,) = scored.dead
    assert dead.request_id == "out" and dead.error.code == "invalid_input"
    assert dead.error.field == "instances[1].mean area" and "outside the accepted range" in dead.error.message


def test_the_integration_check_goes_through_the_record_path_without_the_range_policy(model_repo):
    # Some holdout rows lie outside the training range: under `reject` they would be refused as
    # requests, yet the version is accepted, its holdout accuracy equal to the card's.
    version = version_for(model_repo, RangePolicy.REJECT, max_batch_size=16)
    assert version.ready
    assert asyncio.run(Lifecycle().check_holdout(version, asyncio.run(_artifact(model_repo)))) == pytest.approx(
        version.card.metrics["accuracy"], abs=1e-6)


async def _artifact(model_repo):
    from services.core.lifecycle import Artifact

    return await asyncio.to_thread(Artifact.from_dir, model_repo / MODEL / "1")
