"""Drift: PSI of identical vs shifted samples, the card's training bins, old cards, KS, labels."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
from sklearn.model_selection import train_test_split

from models import train
from models.catalog import CATALOG
from services.core.card import ModelCard
from services.core.errors import ArtifactError
from services.supervisor.drift import (
    EPSILON,
    NoBinsError,
    bin_counts,
    bin_proportions,
    feature_drift,
    holdout_label_counts,
    ks_per_feature,
    label_psi,
    level,
    psi,
    psi_noise,
    quantile_edges,
)


def test_psi_of_identical_samples_is_noise_and_of_shifted_samples_is_large():
    rng = np.random.default_rng(1)
    training = rng.normal(0.0, 1.0, 20_000)
    edges = quantile_edges(training)
    expected = bin_proportions(training, edges)
    assert len(edges) == 9 and expected == pytest.approx([0.1] * 10, abs=1e-3)
    same = psi(expected, bin_counts(rng.normal(0.0, 1.0, 5000), edges))
    assert same < 2 * psi_noise(5000) < 0.01
    part_sd = psi(expected, bin_counts(rng.normal(0.4, 1.0, 5000), edges))
    one_sd = psi(expected, bin_counts(rng.normal(1.0, 1.0, 5000), edges))
    assert 0.1 < part_sd < 0.25 < one_sd
    assert (level(same), level(part_sd), level(one_sd)) == ("ok", "warn", "block")


def test_psi_basics():
    assert psi([0.5, 0.5], [0.5, 0.5]) == 0.0
    assert psi([1, 1], [3, 1]) == psi([0.5, 0.5], [0.75, 0.25]) > 0  # counts or shares
    # An empty bin is floored at EPSILON: finite, and large.
    empty = psi([0.5, 0.5], [1.0, 0.0])
    floored = (1 - 0.5) * np.log(1 / 0.5) + (EPSILON - 0.5) * np.log(EPSILON / 0.5)
    assert np.isfinite(empty) and empty == pytest.approx(floored)
    with pytest.raises(ValueError, match="same bins"):
        psi([0.5, 0.5], [1.0])
    with pytest.raises(ValueError, match="not all zero"):
        psi([0.5, 0.5], [0, 0])


def test_bins_are_open_ended_and_right_closed():
    edges = [1.0, 2.0]
    assert bin_counts(np.array([-100.0, 1.0, 1.5, 2.0, 2.5, 100.0, np.nan]), edges).tolist() == [2, 2, 2]


def test_discrete_features_get_fewer_bins():
    values = np.array([0] * 50 + [1] * 30 + [2] * 20, dtype=float)
    edges = quantile_edges(values)
    assert edges == [0.0, 1.0]
    assert bin_proportions(values, edges) == pytest.approx([0.5, 0.3, 0.2])


def test_the_training_script_and_drift_bin_alike():
    rng = np.random.default_rng(2)
    for column in (rng.normal(10, 3, 400), rng.integers(0, 4, 400).astype(float), rng.exponential(1.0, 400)):
        written = train._quantile_bins(column)
        edges = quantile_edges(column)
        assert written["edges"] == edges
        assert written["proportions"] == pytest.approx(bin_proportions(column, edges), abs=1e-6)


@pytest.mark.parametrize("spec", CATALOG, ids=lambda s: s.name)
def test_the_cards_carry_the_training_bins(model_repo, spec):
    card = ModelCard.from_file(model_repo / spec.name / "1" / "model-card.json")
    data = spec.load()
    x, y = np.asarray(data.data, dtype=np.float64), np.asarray(data.target, dtype=np.int64)
    raw = json.loads((model_repo / spec.name / "1" / "model-card.json").read_text())
    x_train, _, y_train, _ = train_test_split(x, y, test_size=0.25, stratify=y, random_state=raw["training"]["seed"])
    # The very training set of the card (its fingerprint), so the bins can be recomputed.
    assert hashlib.sha256(x_train.tobytes() + y_train.tobytes()).hexdigest() == raw["training"][
        "data_fingerprint_sha256"
    ]
    for i, feature in enumerate(card.features):
        assert feature.bins is not None
        assert 2 <= len(feature.bins.proportions) <= train.DRIFT_BINS
        assert feature.bins.edges == quantile_edges(x_train[:, i])
        assert feature.bins.proportions == pytest.approx(bin_proportions(x_train[:, i], feature.bins.edges), abs=1e-6)


def _old_card(model_repo) -> dict:
    raw = json.loads((model_repo / "breast-cancer" / "1" / "model-card.json").read_text())
    for feature in raw["features"]:
        feature.pop("bins")
    return raw


def test_old_cards_without_bins_still_load(model_repo):
    card = ModelCard.from_bytes(json.dumps(_old_card(model_repo)))
    assert card.n_features == 30 and all(f.bins is None for f in card.features)
    with pytest.raises(NoBinsError, match="no training bins"):
        feature_drift(card, np.zeros((10, 30)), observed_at=0.0)


@pytest.mark.parametrize(
    ("bins", "message"),
    [
        ({"edges": [1.0, 2.0], "proportions": [0.5, 0.5]}, "2 edges need 3 proportions"),
        ({"edges": [2.0, 1.0], "proportions": [0.3, 0.3, 0.4]}, "edges must increase strictly"),
        ({"edges": [1.0], "proportions": [0.9, 0.9]}, "sum to 1"),
    ],
)
def test_inconsistent_bins_make_the_card_invalid(model_repo, bins, message):
    raw = _old_card(model_repo)
    raw["features"][0]["bins"] = bins
    with pytest.raises(ArtifactError, match=message):
        ModelCard.from_bytes(json.dumps(raw))


def test_feature_drift_on_the_holdout_and_on_shifted_inputs(model_repo, holdout):
    card = ModelCard.from_file(model_repo / "breast-cancer" / "1" / "model-card.json")
    names, x, _ = holdout
    same = feature_drift(card, x, observed_at=123.0)
    # 143 holdout rows from the training distribution: only sampling noise, never a block.
    assert same.rows == 143 and same.level != "block" and same.observed_at == 123.0
    assert same.overall_psi == max(f.psi for f in same.features) and same.mean_psi <= same.overall_psi
    shifted = x.copy()
    shifted[:, names.index("mean texture")] *= 1.4
    report = feature_drift(card, shifted, observed_at=0.0, reference=x)
    assert report.overall_feature == "mean texture" and report.overall_psi > 0.25 and report.level == "block"
    texture = next(f for f in report.features if f.name == "mean texture")
    assert texture.ks_statistic > 0.3 and texture.ks_p_value < 1e-6
    assert json.loads(json.dumps(report.to_dict()))["overall_feature"] == "mean texture"
    with pytest.raises(ValueError, match="30 features"):
        feature_drift(card, x[:, :5], observed_at=0.0)


def test_ks_per_feature():
    rng = np.random.default_rng(3)
    ref = rng.normal(0, 1, (2000, 2))
    live = np.column_stack([rng.normal(0, 1, 1000), rng.normal(0.5, 1, 1000)])
    (same_stat, same_p), (shift_stat, shift_p) = ks_per_feature(ref, live)
    assert same_p > 0.01 and shift_p < 1e-10 and shift_stat > same_stat


def test_predicted_labels_against_the_holdout(model_repo):
    card = ModelCard.from_file(model_repo / "breast-cancer" / "1" / "model-card.json")
    reference = holdout_label_counts(model_repo / "breast-cancer" / "1" / "holdout.csv", card.classes)
    assert set(reference) == set(card.classes) and sum(reference.values()) == 143
    total = sum(reference.values())
    alike = {k: round(v / total * 1000) for k, v in reference.items()}
    assert label_psi(alike, reference) < 0.001
    only_one = {card.classes[0]: 1000}
    assert label_psi(only_one, reference) > 1.0
