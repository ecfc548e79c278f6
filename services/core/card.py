"""The model card: the contract a model artifact carries across service boundaries.

`models/train.py` writes `model-card.json` beside `model.onnx`; every consumer parses it with
`ModelCard` before serving the model. Unknown keys are ignored so newer cards stay readable.
"""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from services.core.errors import ArtifactError


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class TensorSpec(_Lenient):
    name: str
    dtype: str
    shape: list[int | None]


class InputSpec(TensorSpec):
    feature_names: list[str]


class FeatureBins(_Lenient):
    """Training quantile bins of one feature, for drift (PSI): bin i holds values in
    (edges[i-1], edges[i]]; the first and last bins are open-ended, so there is one more
    proportion than edges."""

    edges: list[float]
    proportions: list[float]

    @model_validator(mode="after")
    def _consistent(self) -> FeatureBins:
        if len(self.proportions) != len(self.edges) + 1:
            raise ValueError(f"bins: {len(self.edges)} edges need {len(self.edges) + 1} proportions")
        if any(b <= a for a, b in zip(self.edges, self.edges[1:], strict=False)):
            raise ValueError("bins: edges must increase strictly")
        if any(p < 0 for p in self.proportions) or abs(sum(self.proportions) - 1.0) > 1e-3:
            raise ValueError("bins: proportions must be non-negative and sum to 1")
        return self


class FeatureStats(_Lenient):
    name: str
    min: float
    max: float
    mean: float
    std: float
    bins: FeatureBins | None = None
    """Absent in cards written before drift bins existed."""


class ModelCard(_Lenient):
    name: str
    version: int
    task: str
    algorithm: str = ""
    input: InputSpec
    features: list[FeatureStats]
    outputs: list[TensorSpec]
    classes: list[str]
    metrics: dict[str, float] = {}
    sha256: str

    @property
    def n_features(self) -> int:
        return len(self.input.feature_names)

    @classmethod
    def from_bytes(cls, raw: bytes | str, source: str = "model card") -> ModelCard:
        try:
            return cls.model_validate(json.loads(raw))
        except (ValueError, ValidationError) as exc:
            raise ArtifactError(f"{source} is not a valid model card: {exc}") from exc

    @classmethod
    def from_file(cls, path: Path) -> ModelCard:
        try:
            raw = path.read_bytes()
        except OSError as exc:
            raise ArtifactError(f"cannot read model card {path}: {exc.strerror}") from exc
        return cls.from_bytes(raw, str(path))

    def compatible_with(self, other: ModelCard) -> str | None:
        """Why `self` cannot replace `other` behind the same clients, or None if it can."""
        if self.input.name != other.input.name:
            return f"input name {self.input.name!r} differs from {other.input.name!r}"
        if self.input.dtype != other.input.dtype:
            return f"input dtype {self.input.dtype} differs from {other.input.dtype}"
        if self.input.feature_names != other.input.feature_names:
            return "feature names or their order differ"
        if self.classes != other.classes:
            return f"classes {self.classes} differ from {other.classes}"
        return None
