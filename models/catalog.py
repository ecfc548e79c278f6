"""What `make models` trains: every model name, its data set and its versions.

Each data set ships inside scikit-learn, so nothing is downloaded. Every task has a light
version (logistic regression), a heavier and better one (boosting or a 200-tree forest), and a
deliberately poor one that the threshold gate exempts as demo material for rollbacks.
Adding a model or a version is one entry here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from sklearn.base import ClassifierMixin
from sklearn.datasets import load_breast_cancer, load_wine
from sklearn.ensemble import GradientBoostingClassifier, RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler


@dataclass(frozen=True)
class VersionSpec:
    version: int
    algorithm: str
    build: Callable[[int], Pipeline | ClassifierMixin]
    """Returns an unfitted estimator for the given seed."""
    shuffled_labels: bool = False
    """Train on permuted labels: the deliberately poor demo versions."""


@dataclass(frozen=True)
class ModelSpec:
    name: str
    task: str  # "binary" or "multiclass"
    load: Callable
    versions: tuple[VersionSpec, ...]


def _logistic(seed: int) -> Pipeline:
    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, random_state=seed))


def _boosting(seed: int) -> GradientBoostingClassifier:
    return GradientBoostingClassifier(n_estimators=100, max_depth=3, random_state=seed)


def _forest(seed: int) -> RandomForestClassifier:
    # The "heavy" model of the benchmarks: 200 trees.
    return RandomForestClassifier(n_estimators=200, max_depth=8, random_state=seed, n_jobs=1)


CATALOG: tuple[ModelSpec, ...] = (
    ModelSpec(
        name="breast-cancer",
        task="binary",
        load=load_breast_cancer,
        versions=(
            VersionSpec(1, "standard-scaler+logistic-regression", _logistic),
            VersionSpec(2, "gradient-boosting-100", _boosting),
            VersionSpec(3, "logistic-regression-on-shuffled-labels", _logistic, shuffled_labels=True),
        ),
    ),
    ModelSpec(
        name="wine",
        task="multiclass",
        load=load_wine,
        versions=(
            VersionSpec(1, "standard-scaler+logistic-regression", _logistic),
            VersionSpec(2, "random-forest-200", _forest),
            VersionSpec(3, "logistic-regression-on-shuffled-labels", _logistic, shuffled_labels=True),
        ),
    ),
)
