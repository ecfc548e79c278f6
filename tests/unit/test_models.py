"""The model export: artifacts, the parity gate, the threshold gate, reproducibility."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import onnxruntime as ort
import pytest
from sklearn.linear_model import LogisticRegression

from models import train
from models.catalog import CATALOG

WINE = next(s for s in CATALOG if s.name == "wine")
WINE_V1 = WINE.versions[0]


def test_every_catalog_version_is_in_the_repository(model_repo):
    for spec in CATALOG:
        for v in spec.versions:
            d = model_repo / spec.name / str(v.version)
            card = json.loads((d / "model-card.json").read_text())
            assert card["sha256"] == hashlib.sha256((d / "model.onnx").read_bytes()).hexdigest()
            assert card["input"]["feature_names"] and len(card["features"]) == len(card["input"]["feature_names"])
            assert (d / "holdout.csv").read_text().count("\n") == card["training"]["holdout_rows"] + 1


def test_repository_artifacts_agree_with_their_recorded_metrics(model_repo, holdout):
    names, x, y = holdout
    for version in (1, 2):
        d = model_repo / "breast-cancer" / str(version)
        card = json.loads((d / "model-card.json").read_text())
        sess = ort.InferenceSession(str(d / "model.onnx"))
        labels, proba = sess.run(["label", "probabilities"], {"input": x.astype(np.float32)})
        assert float(np.mean(labels == y)) == pytest.approx(card["metrics"]["accuracy"], abs=1e-6)
        np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-5)


def test_same_seed_gives_same_bytes(tmp_path):
    thresholds = train.load_thresholds()
    a = train.build_version(WINE, WINE_V1, 7, tmp_path / "a", thresholds["wine"])
    b = train.build_version(WINE, WINE_V1, 7, tmp_path / "b", thresholds["wine"])
    assert a["sha256"] == b["sha256"]
    assert (tmp_path / "a/wine/1/model.onnx").read_bytes() == (tmp_path / "b/wine/1/model.onnx").read_bytes()
    assert (tmp_path / "a/wine/1/holdout.csv").read_text() == (tmp_path / "b/wine/1/holdout.csv").read_text()
    c = train.build_version(WINE, WINE.versions[1], 8, tmp_path / "c", thresholds["wine"])
    assert c["sha256"] != a["sha256"]


def test_parity_gate_refuses_a_model_that_disagrees_with_onnx(tmp_path, holdout):
    names, x, y = holdout
    x32 = x.astype(np.float32)
    fitted = LogisticRegression(max_iter=10_000).fit(x, y)
    other = LogisticRegression(max_iter=10_000, C=1e-6).fit(x, y)  # a different model
    session = ort.InferenceSession(train.export_onnx(fitted, "t", len(names), 2))
    assert train.check_parity("t", 1, fitted, session, x32) <= train.PARITY_TOLERANCE
    with pytest.raises(train.GateError, match="parity gate"):
        train.check_parity("t", 1, other, session, x32)


def test_threshold_gate_names_metric_value_and_floor():
    gate = train.Threshold(metric="accuracy", floor=0.9, exempt={3: "demo"})
    assert gate.check("m", 1, {"accuracy": 0.95}) is None
    with pytest.raises(train.GateError) as err:
        gate.check("m", 2, {"accuracy": 0.8123})
    assert "accuracy=0.8123" in str(err.value) and "floor 0.9000" in str(err.value)
    assert gate.check("m", 3, {"accuracy": 0.5}) == "demo"


def test_poor_versions_are_marked_demo_material_not_passed(model_repo):
    for spec in CATALOG:
        card = json.loads((model_repo / spec.name / "3" / "model-card.json").read_text())
        assert card["gate"]["passed"] is False and card["gate"]["demo_material"] is True
        assert card["metrics"]["accuracy"] < card["gate"]["floor"]


def test_train_cli_exits_nonzero_when_a_version_is_below_its_floor(tmp_path, monkeypatch, capsys):
    strict = {name: train.Threshold(t.metric, 1.01, {}) for name, t in train.load_thresholds().items()}
    monkeypatch.setattr(train, "load_thresholds", lambda: strict)
    assert train.main(["--repo", str(tmp_path), "--only", "wine"]) == 1
    assert "REFUSED" in capsys.readouterr().err
    assert not (tmp_path / "wine" / "1" / "model-card.json").exists()
