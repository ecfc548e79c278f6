"""Comparison of a shadow's answer with the primary's: KServe V2 JSON (REST) and PredictResponse (gRPC)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from services.protocols.tfs import predict_pb2
from services.protocols.tfs.tensors import from_numpy
from services.router.grpc_predict import PredictUpstream
from services.router.grpc_upstream import Channels
from services.router.rest import v2_outputs
from services.router.shadow import compare


def compare_v2(primary: bytes, shadow: bytes) -> tuple[int, int, float, float] | None:
    a, b = v2_outputs(primary), v2_outputs(shadow)
    return None if a is None or b is None else compare(a, b)


def answer(labels, probabilities, nested: bool = False) -> bytes:
    rows = len(labels)
    data = probabilities if nested else [p for row in probabilities for p in row]
    return json.dumps({"model_name": "m", "model_version": "1", "outputs": [
        {"name": "label", "datatype": "INT64", "shape": [rows], "data": labels},
        {"name": "probabilities", "datatype": "FP32", "shape": [rows, len(probabilities[0])], "data": data},
    ]}).encode()


def test_agreement_and_probability_differences() -> None:
    primary = answer([1, 0, 2], [[0.1, 0.2, 0.7], [0.8, 0.1, 0.1], [0.0, 0.0, 1.0]])
    shadow = answer([1, 1, 2], [[0.1, 0.3, 0.6], [0.4, 0.5, 0.1], [0.0, 0.0, 1.0]], nested=True)
    rows, agree, diff_sum, diff_max = compare_v2(primary, shadow)
    assert (rows, agree) == (3, 2)
    # row means of |dp|: (0 + .1 + .1)/3, (.4 + .4 + 0)/3, 0
    assert diff_sum == pytest.approx(0.2 / 3 + 0.8 / 3)
    assert diff_max == pytest.approx(0.4)


@pytest.mark.parametrize(
    "shadow",
    [
        b"not json",
        b'{"outputs": "nope"}',
        json.dumps({"outputs": [{"name": "label", "parameters": {"binary_data_size": 8}}]}).encode(),
        answer([1, 0], [[0.5, 0.5], [0.5, 0.5]]),  # two rows against one
    ],
)
def test_incomparable_answers_are_none(shadow: bytes) -> None:
    assert compare_v2(answer([1], [[0.2, 0.8]]), shadow) is None


def test_labels_without_probabilities_still_compare() -> None:
    primary = json.dumps({"outputs": [{"name": "label", "data": [1, 2]}]}).encode()
    shadow = json.dumps({"outputs": [{"name": "label", "data": [1, 3]}]}).encode()
    assert compare_v2(primary, shadow) == (2, 1, 0.0, 0.0)


def predict_response(labels: list[int], probabilities: list[list[float]]) -> bytes:
    return predict_pb2.PredictResponse(outputs={
        "label": from_numpy(np.asarray(labels, dtype=np.int64)),
        "probabilities": from_numpy(np.asarray(probabilities, dtype=np.float32)),
    }).SerializeToString()


def test_grpc_answers_compare_the_same_way() -> None:
    outputs = PredictUpstream(Channels(1 << 20)).outputs
    primary = outputs(predict_response([1, 0, 2], [[0.1, 0.2, 0.7], [0.8, 0.1, 0.1], [0.0, 0.0, 1.0]]))
    shadow = outputs(predict_response([1, 1, 2], [[0.1, 0.3, 0.6], [0.4, 0.5, 0.1], [0.0, 0.0, 1.0]]))
    assert primary is not None and shadow is not None
    rows, agree, diff_sum, diff_max = compare(primary, shadow)
    assert (rows, agree) == (3, 2)
    assert diff_sum == pytest.approx(0.2 / 3 + 0.8 / 3, abs=1e-6)
    assert diff_max == pytest.approx(0.4, abs=1e-6)
    assert outputs(b"\xff not a message") is None
    assert outputs(predict_pb2.PredictResponse().SerializeToString()) is None
