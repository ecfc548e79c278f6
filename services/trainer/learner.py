"""The incremental model, its rolling holdout set, and turning it into a gated candidate.

    learner = Learner(reference_card, LearnerConfig(seed=42))
    learner.learn(x, y)                    # joined rows, in the stream's order
    candidate = learner.candidate(version=101, threshold=..., extra_card={...})

The model is a scikit-learn pipeline updated with `partial_fit`: a `StandardScaler` (running
mean and variance) and an `SGDClassifier` with the logistic loss and a constant learning rate
(a decaying one would stop adapting: the point of learning online is to follow a change).

Every `holdout_every`-th joined row is held out instead of learned from, into a rolling window
of the last `holdout_rows`: the gates measure each candidate on recent rows it never saw, the
same rows travel in the model message, and every consuming app re-scores them before a swap
(the integration check of services/core/lifecycle.py).

The candidate is exported and gated by the code that builds the offline versions
(`models/train.py`: `export_onnx`, `check_parity`, `holdout_metrics`, the thresholds of
`models/thresholds.yaml`), so an online version passes exactly the gates an offline one does.
Everything here is a deterministic function of the rows and their order: the same rows give the
same ONNX bytes (the replay test relies on it).
"""

from __future__ import annotations

import hashlib
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from sklearn.linear_model import SGDClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from models import train
from services.core.card import ModelCard

ALGORITHM = "online: standard-scaler + sgd-logistic (partial_fit)"


@dataclass(frozen=True)
class LearnerConfig:
    seed: int = 42
    learning_rate: float = 0.01
    alpha: float = 1e-4
    holdout_every: int = 5
    holdout_rows: int = 200
    min_holdout_rows: int = 40
    stats_rows: int = 1000

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class Candidate:
    card: dict[str, Any]
    onnx_bytes: bytes
    holdout_csv: bytes

    @property
    def version(self) -> int:
        return self.card["version"]

    @property
    def passed(self) -> bool:
        return bool(self.card["gate"]["passed"])

    @property
    def reason(self) -> str:
        return self.card["gate"].get("reason", "")


@dataclass
class Learner:
    reference: ModelCard
    config: LearnerConfig = field(default_factory=LearnerConfig)

    def __post_init__(self) -> None:
        self.classes = np.arange(len(self.reference.classes))
        self.scaler = StandardScaler()
        self.model = SGDClassifier(loss="log_loss", learning_rate="constant", eta0=self.config.learning_rate,
                                   alpha=self.config.alpha, random_state=self.config.seed)
        self.rows_seen = 0
        self.trained_rows = 0
        self.holdout: deque[tuple[np.ndarray, int]] = deque(maxlen=self.config.holdout_rows)
        self.recent: deque[np.ndarray] = deque(maxlen=self.config.stats_rows)
        self._fingerprint = hashlib.sha256()

    @property
    def fitted(self) -> bool:
        return self.trained_rows > 0

    def learn(self, x: np.ndarray, y: np.ndarray) -> tuple[int, int]:
        """Learn from joined rows (float32 inputs as served, class indices); returns (trained, held out)."""
        if len(x) == 0:
            return 0, 0
        x32 = np.ascontiguousarray(x, dtype=np.float32)
        y = np.asarray(y, dtype=np.int64)
        self._fingerprint.update(x32.tobytes() + y.tobytes())
        every = self.config.holdout_every
        held = (np.arange(self.rows_seen, self.rows_seen + len(x32)) % every) == every - 1
        self.rows_seen += len(x32)
        for row, label in zip(x32[held], y[held], strict=True):
            self.holdout.append((row, int(label)))
        train_x, train_y = x32[~held].astype(np.float64), y[~held]
        if len(train_x):
            self.scaler.partial_fit(train_x)
            self.model.partial_fit(self.scaler.transform(train_x), train_y, classes=self.classes)
            self.trained_rows += len(train_x)
            self.recent.extend(train_x)
        return int(len(train_x)), int(held.sum())

    def pipeline(self) -> Pipeline:
        # Both steps are fitted already; a Pipeline of fitted steps is what skl2onnx converts.
        return Pipeline([("scaler", self.scaler), ("sgd", self.model)])

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self.pipeline().predict(np.asarray(x, dtype=np.float32).astype(np.float64))

    def candidate(self, version: int, threshold: train.Threshold, extra_card: dict[str, Any]) -> Candidate | None:
        """Export and gate the model as it is now; None while it cannot be measured yet (no training
        row, or fewer than `min_holdout_rows` held out)."""
        if not self.fitted or len(self.holdout) < self.config.min_holdout_rows:
            return None
        ref = self.reference
        names = list(ref.input.feature_names)
        n_classes = len(ref.classes)
        hx = np.vstack([r for r, _ in self.holdout]).astype(np.float32)
        hy = np.asarray([label for _, label in self.holdout], dtype=np.int64)
        pipeline = self.pipeline()
        onnx_bytes = train.export_onnx(pipeline, f"{ref.name}-v{version}", len(names), n_classes)
        exported = onnx.load_from_string(onnx_bytes)
        onnx.checker.check_model(exported)
        session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
        gate: dict[str, Any] = {"metric": threshold.metric, "floor": threshold.floor, "passed": True,
                                "demo_material": False}
        worst: float | None = None
        metrics: dict[str, float] = {}
        try:
            worst = train.check_parity(ref.name, version, pipeline, session, hx)
            labels, proba = session.run(["label", "probabilities"], {"input": hx})
            try:
                metrics = train.holdout_metrics(ref.task, hy, labels, proba)
            except ValueError as exc:  # e.g. one class only in the window: the metric is undefined
                raise train.GateError(f"{ref.name} v{version}: holdout metrics undefined ({exc})") from exc
            if threshold.check(ref.name, version, metrics) is not None:  # an exemption: never for online versions
                raise train.GateError(f"{ref.name} v{version} is below the floor and listed as exempt demo material")
        except train.GateError as exc:
            gate.update(passed=False, reason=str(exc))
        card = {
            "schema_version": train.CARD_SCHEMA_VERSION,
            "name": ref.name,
            "version": version,
            "task": ref.task,
            "algorithm": ALGORITHM,
            "input": ref.input.model_dump(),
            "features": train.feature_stats(names, np.vstack(self.recent)),
            "outputs": [
                {"name": "label", "dtype": "int64", "shape": [None]},
                {"name": "probabilities", "dtype": "float32", "shape": [None, n_classes]},
            ],
            "classes": list(ref.classes),
            "metrics": metrics,
            "gate": gate,
            "parity": {"max_abs_probability_difference": worst, "tolerance": train.PARITY_TOLERANCE},
            "sha256": hashlib.sha256(onnx_bytes).hexdigest(),
            "training": {
                "seed": self.config.seed,
                "rows": self.trained_rows,
                "holdout_rows": len(hy),
                "data_fingerprint_sha256": self._fingerprint.hexdigest(),
                "dataset": "kafka: labels joined with the prediction log by request id",
                "learner": self.config.as_dict(),
            },
            **train.toolchain(exported),
            **extra_card,
        }
        return Candidate(card, onnx_bytes, train.holdout_text(names, hx, hy).encode())

