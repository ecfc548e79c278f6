"""Comparison of a shadow's KServe V2 answer with the primary's."""

from __future__ import annotations

import json

import pytest

from services.router.shadow import compare_v2


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
