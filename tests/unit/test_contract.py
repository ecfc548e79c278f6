"""Input validation against the model card's contract."""

from __future__ import annotations

import math

import numpy as np
import pytest

from services.core.card import ModelCard
from services.core.contract import InputContract, RangePolicy
from services.core.errors import InvalidInput, PayloadTooLarge


@pytest.fixture(scope="module")
def card(model_repo) -> ModelCard:
    return ModelCard.from_file(model_repo / "breast-cancer" / "1" / "model-card.json")


@pytest.fixture
def contract(card) -> InputContract:
    return InputContract(card, max_batch_size=8)


def good_row(card: ModelCard) -> list[float]:
    return [f.mean for f in card.features]


def test_array_rows_become_float32_matrix(contract, card):
    x = contract.rows_to_array([good_row(card), good_row(card)])
    assert x.dtype == np.float32 and x.shape == (2, 30) and x.flags.c_contiguous
    np.testing.assert_allclose(x[0], np.float32(good_row(card)))


def test_named_rows_follow_contract_order(contract, card):
    row = dict(zip(card.input.feature_names, good_row(card), strict=True))
    shuffled = dict(reversed(list(row.items())))
    x = contract.rows_to_array([shuffled])
    np.testing.assert_allclose(x[0], np.float32(good_row(card)))


@pytest.mark.parametrize(
    ("instances", "field", "words"),
    [
        ([], "instances", "empty"),
        ("rows", "instances", "must be a list"),
        ([[1.0] * 29], "instances[0]", "29 values"),
        ([[1.0] * 31], "instances[0]", "31 values"),
        ([7], "instances[0]", "got int"),
    ],
)
def test_shape_problems_are_named(contract, instances, field, words):
    with pytest.raises(InvalidInput) as err:
        contract.rows_to_array(instances)
    assert err.value.field == field
    assert words in err.value.message


@pytest.mark.parametrize("bad", ["1.5", None, True, [1.0], {"x": 1}])
def test_wrong_types_are_named(contract, card, bad):
    row = good_row(card)
    row[4] = bad
    with pytest.raises(InvalidInput) as err:
        contract.rows_to_array([good_row(card), row])
    assert err.value.field == "instances[1][4]"
    assert card.input.feature_names[4] in err.value.message


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf, 1e39])
def test_non_finite_values_are_refused(contract, card, bad):
    row = good_row(card)
    row[2] = bad
    with pytest.raises(InvalidInput) as err:
        contract.rows_to_array([row])
    assert err.value.field == f"instances[0].{card.input.feature_names[2]}"
    assert "finite" in err.value.message


def test_too_many_rows_is_payload_too_large(contract, card):
    with pytest.raises(PayloadTooLarge) as err:
        contract.rows_to_array([good_row(card)] * 9)
    assert err.value.http_status == 413 and "limit is 8" in err.value.message


def test_unknown_and_missing_feature_names(contract, card):
    row = dict(zip(card.input.feature_names, good_row(card), strict=True))
    del row["mean radius"]
    row["mean radios"] = 1.0
    with pytest.raises(InvalidInput) as err:
        contract.rows_to_array([row])
    assert "unknown feature(s) ['mean radios']" in err.value.message
    assert "missing feature(s) ['mean radius']" in err.value.message


def test_named_row_with_non_number(contract, card):
    row = dict(zip(card.input.feature_names, good_row(card), strict=True))
    row["mean area"] = "big"
    with pytest.raises(InvalidInput) as err:
        contract.rows_to_array([row])
    assert err.value.field == "instances[0].mean area" and "got str" in err.value.message


def test_mixed_row_shapes_are_refused(contract, card):
    named = dict(zip(card.input.feature_names, good_row(card), strict=True))
    with pytest.raises(InvalidInput) as err:
        contract.rows_to_array([good_row(card), named])
    assert err.value.field == "instances[1]"


def test_range_policy_flag_reports_and_reject_refuses(card):
    row = good_row(card)
    stats = card.features[0]
    row[0] = stats.max + 10 * (stats.max - stats.min)
    x = np.array([row], dtype=np.float32)
    findings = InputContract(card, range_policy=RangePolicy.FLAG).check_ranges(x)
    assert [(f.row, f.feature) for f in findings] == [(0, stats.name)]
    with pytest.raises(InvalidInput) as err:
        InputContract(card, range_policy=RangePolicy.REJECT).check_ranges(x)
    assert stats.name in err.value.message and "outside the accepted range" in err.value.message
    assert InputContract(card, range_policy=RangePolicy.OFF).check_ranges(x) == []
    # Inside the training range nothing is flagged.
    assert InputContract(card, range_policy=RangePolicy.REJECT).check_ranges(np.float32([good_row(card)])) == []
