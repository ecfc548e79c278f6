"""The online trainer's rules without a broker: the join, the learner, the gates, the lineage and
its replay, fed records shaped like kafka-python's (topic, partition, offset, key, value).

(The same code runs against the real broker in tests/integration/test_online_learning.py.)
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import orjson
import pytest

from models import train
from services.core.card import ModelCard
from services.kafka import labels as label_records
from services.trainer.core import Lineage, OnlineTrainer, Options, replay
from services.trainer.learner import LearnerConfig

MODEL = "breast-cancer"


@pytest.fixture(scope="module")
def reference(model_repo) -> ModelCard:
    return ModelCard.from_file(model_repo / MODEL / "1" / "model-card.json")


@pytest.fixture(scope="module")
def threshold() -> train.Threshold:
    return train.load_thresholds()[MODEL]


def rec(topic: str, partition: int, offset: int, key: str, value: bytes):
    return SimpleNamespace(topic=topic, partition=partition, offset=offset, key=key.encode(), value=value)


def prediction(offset: int, rid: str, row, *, partition: int = 0, inputs: bool = True, model: str = MODEL):
    event = {"schema": 1, "request_id": rid, "model_name": model, "model_version": 1, "rows": 1}
    if inputs:
        event["inputs"] = [list(map(float, row))]
    return rec("predictions", partition, offset, rid, orjson.dumps(event))


def label(offset: int, rid: str, y: int, *, partition: int = 0):
    return rec("labels", partition, offset, rid, label_records.encode(rid, [int(y)], "test"))


def stream(holdout, n: int, *, flip: bool = False):
    """n predictions on partition 0 and their labels on partition 0, in the same order."""
    x, y = holdout[1], holdout[2]
    preds, labels = [], []
    for i in range(n):
        rid = f"r{i}"
        preds.append(prediction(i, rid, x[i % len(x)]))
        labels.append(label(i, rid, (1 - y[i % len(y)]) if flip else y[i % len(y)]))
    return preds, labels


def new_trainer(reference, threshold, **options) -> OnlineTrainer:
    opts = Options(LearnerConfig(min_holdout_rows=10, holdout_rows=60, **options), window=1000, first_version=100)
    return OnlineTrainer(reference, threshold, Lineage("labels", "predictions", {0: 0}, {0: 0}, opts))


def test_labels_join_by_request_id_and_every_bad_label_gets_its_reason(reference, threshold, holdout):
    t = new_trainer(reference, threshold)
    x = holdout[1]
    preds = [prediction(0, "a", x[0]), prediction(1, "b", x[1]), prediction(2, "noin", x[2], inputs=False),
             prediction(3, "wine", x[3], model="wine"), rec("predictions", 0, 4, "junk", b"not json")]
    labels = [
        label(0, "b", 1), label(1, "a", 0),
        label(2, "a", 1),                                     # a second label for a: duplicate
        label(3, "ghost", 1),                                 # never answered
        label(4, "noin", 1),                                  # logged without inputs
        label(5, "wine", 0),                                  # another model's prediction: unknown here
        rec("labels", 0, 6, "c", b"{"),                       # not JSON
        rec("labels", 0, 7, "c", label_records.encode("c", [7], "t")),  # not a class of the model
        rec("labels", 0, 8, "b2", label_records.encode("zz", [1], "t")),  # key differs from request id
        rec("labels", 0, 9, "d", orjson.dumps({"schema": 9, "request_id": "d", "labels": [1]})),
    ]
    out = t.cycle(preds, labels, {0: 10}, {0: 5})
    assert out.join.joined == 2
    np.testing.assert_array_equal(out.join.x, np.vstack([x[1], x[0]]).astype(np.float32))  # label order
    assert out.join.y.tolist() == [1, 0]
    reasons = [(r.record.offset, r.reason) for r in out.join.rejected]
    assert reasons == [(2, "duplicate"), (3, "unknown_request"), (4, "no_inputs"), (5, "unknown_request"),
                       (6, "malformed"), (7, "malformed"), (8, "malformed"), (9, "malformed")]
    details = {r.record.offset: r.detail for r in out.join.rejected}
    assert "not JSON" in details[6] and "labels[0] = 7" in details[7] and "schema 9" in details[9]
    assert "STREAMING_PREDICTION_LOG_INPUTS" in details[4]


def test_a_late_label_joins_while_its_prediction_is_in_the_window_and_not_after(reference, threshold, holdout):
    x = holdout[1]
    opts = Options(LearnerConfig(min_holdout_rows=10), window=3, first_version=100)
    t = OnlineTrainer(reference, threshold, Lineage("labels", "predictions", {0: 0}, {0: 0}, opts))
    t.cycle([prediction(i, f"r{i}", x[i]) for i in range(3)], [], {0: 0}, {0: 3})
    out = t.cycle([], [label(0, "r0", 1)], {0: 1}, {0: 3})  # later cycle, still in the window: joined
    assert out.join.joined == 1
    t.cycle([prediction(i, f"r{i}", x[i]) for i in range(3, 6)], [], {0: 1}, {0: 6})
    out = t.cycle([], [label(1, "r1", 1), label(2, "r5", 0)], {0: 3}, {0: 6})  # r1 left the window
    assert [r.reason for r in out.join.rejected] == ["unknown_request"] and out.join.joined == 1
    assert "too late" in out.join.rejected[0].detail


def test_candidates_pass_the_offline_gates_and_are_byte_identical_for_the_same_rows(reference, threshold, holdout):
    preds, labels = stream(holdout, 400)
    a, b = new_trainer(reference, threshold), new_trainer(reference, threshold)
    ca = a.cycle(preds, labels, {0: 400}, {0: 400}).candidate
    cb = b.cycle(preds, labels, {0: 400}, {0: 400}).candidate
    assert ca is not None and ca.passed, ca.reason
    assert ca.onnx_bytes == cb.onnx_bytes and ca.card == cb.card and ca.holdout_csv == cb.holdout_csv
    card = ca.card
    assert (card["version"], card["data"]["parent_version"], card["data"]["rows"]) == (100, None, 400)
    assert card["training"]["rows"] == 320 and card["training"]["holdout_rows"] == 60  # every 5th held out
    assert card["data"]["labels"] == {"topic": "labels", "partitions": {"0": [0, 400]}}
    assert card["metrics"]["accuracy"] >= threshold.floor and card["parity"]["max_abs_probability_difference"] < 1e-5
    assert ModelCard.model_validate(card).compatible_with(reference) is None
    # Another seed learns something else.
    other = new_trainer(reference, threshold, seed=7).cycle(preds, labels, {0: 400}, {0: 400}).candidate
    assert other.onnx_bytes != ca.onnx_bytes


def test_a_candidate_below_the_threshold_fails_its_gate_with_the_numbers(reference, threshold, holdout):
    preds, labels = stream(holdout, 300, flip=True)  # every label wrong: the learned model is poor on the truth
    t = new_trainer(reference, threshold)
    t.cycle(preds[:200], labels[:200], {0: 200}, {0: 200})
    # The holdout now is flipped too, so measure against true labels: a stricter floor fails it instead.
    strict = train.Threshold(metric="accuracy", floor=1.01, exempt={})
    t.threshold = strict
    c = t.cycle(preds[200:], labels[200:], {0: 300}, {0: 300}).candidate
    assert c is not None and not c.passed
    assert "below the floor 1.0100" in c.reason and c.card["gate"]["passed"] is False
    assert c.card["gate"]["demo_material"] is False and c.version == 101


def test_replaying_the_lineage_rebuilds_the_same_bytes(reference, threshold, holdout):
    preds, labels = stream(holdout, 500)
    live = new_trainer(reference, threshold)
    for end in (120, 250, 251, 400, 500):  # uneven cycles, as the clock would make them
        start = live.lineage.labels_end()[0]
        out = live.cycle(preds[start:end], labels[start:end], {0: end}, {0: end})
    assert out.candidate is not None
    card = out.candidate.card
    assert [c["version"] for c in card["data"]["lineage"]["cycles"]] == [100, 101, 102, 103, 104]
    fresh = OnlineTrainer(reference, threshold, Lineage.from_dict(card["data"]["lineage"]))
    again = replay(fresh, preds, labels, card["data"]["lineage"]["cycles"])
    assert again.candidate.onnx_bytes == out.candidate.onnx_bytes
    assert again.candidate.card == card
    # One big cycle over the same rows is another model: the cycles are part of the data version.
    single = new_trainer(reference, threshold).cycle(preds, labels, {0: 500}, {0: 500}).candidate
    assert single.onnx_bytes != out.candidate.onnx_bytes
