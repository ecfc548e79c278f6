"""Loading artifacts: checksum, contract and corruption are checked before serving."""

from __future__ import annotations

import asyncio
import hashlib
import json
import shutil

import numpy as np
import onnxruntime as ort
import pytest

from services.core.errors import ArtifactError, IntegrityError, NotFound, Unavailable
from services.core.repository import list_versions, version_dir
from services.core.runtime import OnnxModel


def copy_version(model_repo, tmp_path, name="breast-cancer", version=1):
    dst = tmp_path / name / str(version)
    shutil.copytree(model_repo / name / str(version), dst)
    return dst


def test_loaded_model_equals_plain_onnx_runtime(model_repo, holdout):
    _, x, _ = holdout
    x32 = x.astype(np.float32)
    model = OnnxModel.from_dir(model_repo / "breast-cancer" / "2")
    asyncio.run(model.load())
    got = asyncio.run(model.predict(x32))
    labels, proba = ort.InferenceSession(str(model_repo / "breast-cancer/2/model.onnx")).run(None, {"input": x32})
    np.testing.assert_array_equal(got.labels, labels)
    # Graph optimisations may reorder float operations: equal to within float32 rounding.
    np.testing.assert_allclose(got.probabilities, proba, rtol=0, atol=1e-6)


def test_sha256_mismatch_is_refused(model_repo, tmp_path):
    d = copy_version(model_repo, tmp_path)
    card = json.loads((d / "model-card.json").read_text())
    card["sha256"] = "0" * 64
    (d / "model-card.json").write_text(json.dumps(card))
    model = OnnxModel.from_dir(d)
    with pytest.raises(IntegrityError, match="sha256"):
        model.load_sync()
    assert not model.ready
    with pytest.raises(Unavailable):
        model.predict_sync(np.zeros((1, 30), np.float32))


def test_corrupt_onnx_is_refused_even_with_matching_checksum(model_repo, tmp_path):
    d = copy_version(model_repo, tmp_path)
    junk = b"not an onnx model" * 10
    (d / "model.onnx").write_bytes(junk)
    card = json.loads((d / "model-card.json").read_text())
    card["sha256"] = hashlib.sha256(junk).hexdigest()
    (d / "model-card.json").write_text(json.dumps(card))
    with pytest.raises(ArtifactError, match="cannot load"):
        OnnxModel.from_dir(d).load_sync()


def test_card_that_does_not_match_the_graph_is_refused(model_repo, tmp_path):
    d = copy_version(model_repo, tmp_path)
    card = json.loads((d / "model-card.json").read_text())
    card["input"]["name"] = "features"
    (d / "model-card.json").write_text(json.dumps(card))
    with pytest.raises(ArtifactError, match="do not match"):
        OnnxModel.from_dir(d).load_sync()


def test_invalid_card_is_an_artifact_error(tmp_path):
    (tmp_path / "model-card.json").write_text("{not json")
    with pytest.raises(ArtifactError, match="not a valid model card"):
        OnnxModel.from_dir(tmp_path)


def test_default_version_is_newest_that_passed_its_gate(model_repo):
    assert list_versions(model_repo, "wine") == [1, 2, 3]
    assert version_dir(model_repo, "wine").name == "2"  # v3 is demo material
    assert version_dir(model_repo, "wine", 3).name == "3"
    with pytest.raises(NotFound, match="no version 9"):
        version_dir(model_repo, "wine", 9)
    with pytest.raises(NotFound, match="no versions"):
        version_dir(model_repo, "nope")
