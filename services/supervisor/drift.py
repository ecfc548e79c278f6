"""Input drift: live feature distributions against the training distribution on the model card.

**Bins.** ``models/train.py`` cuts every feature of the training set at its deciles (quantile
bins at data values; repeated quantiles of discrete features merge, so a feature may have fewer
bins) and
writes the interior edges and the training share of each bin into ``model-card.json``
(``features[i].bins``). Bin ``i`` holds values in ``(edges[i-1], edges[i]]``; the first and the
last bins are open-ended, so live values beyond the training range still land somewhere —
usually where drift shows first. :func:`bin_counts` applies the very same rule to live values.

**PSI.** The population stability index of one feature is

    PSI = sum_i (a_i - e_i) * ln(a_i / e_i)

with ``e_i`` the training share and ``a_i`` the live share of bin ``i``; an empty bin is floored
at ``EPSILON`` (1e-4) so the logarithm stays finite. Conventional reading: below 0.1 stable, 0.1
to 0.25 a shift worth a look (warn), above 0.25 a shift that changes what the model sees (block).

**Overall = the maximum over features, not the sum.** A sum grows with the number of features:
30 features each at the sampling noise of a few hundred rows (PSI ~ 0.02-0.05 apiece) add up to
more than 0.25 with no drift at all, so one threshold could never fit models of different
widths. A single drifting feature can break a model, and the maximum names it. (The mean is
reported beside it, for the dashboard.)

Sampling noise: with ``n`` live rows and ``k`` bins, PSI of an unchanged distribution is about
``(k - 1) / n``; the drift rule's minimum sample keeps that well below the warn level
(500 rows and 10 bins: ~0.02).

**KS.** Where raw reference values are at hand (the holdout set travels with the artifact and
comes from the same distribution as the training set), :func:`ks_per_feature` adds the
two-sample Kolmogorov-Smirnov statistic and p-value (``scipy.stats.ks_2samp``): sensitive to
shifts inside a bin that PSI cannot see.

**Predicted labels.** :func:`label_psi` compares a distribution of predicted labels with a
reference one (the holdout's labels, or the stable variant's predictions over the same window).
"""

from __future__ import annotations

import csv
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from scipy import stats

from services.core.card import ModelCard

EPSILON = 1e-4
DEFAULT_WARN_PSI = 0.1
DEFAULT_BLOCK_PSI = 0.25
DEFAULT_BINS = 10

Level = Literal["ok", "warn", "block"]


def quantile_edges(values: np.ndarray, n_bins: int = DEFAULT_BINS) -> list[float]:
    """Interior edges of ``n_bins`` quantile bins of ``values`` (repeated quantiles merged, an
    edge at the maximum dropped).

    Values are taken as float32 — what the model sees — and edges are float32 values written
    as floats, so they survive JSON exactly.
    """
    if n_bins < 2:
        raise ValueError(f"n_bins: need at least 2, got {n_bins}")
    x = np.asarray(values, dtype=np.float32).astype(np.float64)
    if x.size == 0:
        raise ValueError("values: empty")
    # Data values as edges (inverted CDF), not interpolations between them: a discrete feature's
    # repeated quantiles then merge into fewer, meaningful bins.
    cuts = np.quantile(x, np.arange(1, n_bins) / n_bins, method="inverted_cdf")
    edges = sorted({float(np.float32(c)) for c in cuts})
    # An edge at the maximum would leave the last bin empty by construction.
    return [e for e in edges if e < float(x.max())]


def bin_counts(values: np.ndarray, edges: Sequence[float]) -> np.ndarray:
    """Counts per bin ``(-inf, e0], (e0, e1], ..., (e_last, inf)``; NaN values are not counted."""
    x = np.asarray(values, dtype=np.float32).astype(np.float64)
    x = x[~np.isnan(x)]
    index = np.searchsorted(np.asarray(edges, dtype=np.float64), x, side="left")
    return np.bincount(index, minlength=len(edges) + 1)


def bin_proportions(values: np.ndarray, edges: Sequence[float]) -> list[float]:
    counts = bin_counts(values, edges)
    total = counts.sum()
    if total == 0:
        raise ValueError("values: nothing to bin")
    return [float(c) / float(total) for c in counts]


def psi(expected: Sequence[float], actual: Sequence[float]) -> float:
    """PSI of ``actual`` proportions (or counts) against ``expected`` ones, same bins."""
    e = np.asarray(expected, dtype=np.float64)
    a = np.asarray(actual, dtype=np.float64)
    if e.shape != a.shape or e.ndim != 1 or e.size == 0:
        raise ValueError(f"psi: need two distributions over the same bins, got {e.shape} and {a.shape}")
    if (e < 0).any() or (a < 0).any() or e.sum() <= 0 or a.sum() <= 0:
        raise ValueError("psi: shares must be non-negative and not all zero")
    e = np.maximum(e / e.sum(), EPSILON)
    a = np.maximum(a / a.sum(), EPSILON)
    return float(np.sum((a - e) * np.log(a / e)))


def level(value: float, warn: float = DEFAULT_WARN_PSI, block: float = DEFAULT_BLOCK_PSI) -> Level:
    if value >= block:
        return "block"
    if value >= warn:
        return "warn"
    return "ok"


@dataclass(frozen=True)
class FeatureDrift:
    name: str
    psi: float
    level: Level
    rows: int
    """Live rows with a value for this feature."""
    ks_statistic: float | None = None
    ks_p_value: float | None = None


@dataclass(frozen=True)
class DriftReport:
    """Drift of a sample of live inputs against the model card's training bins."""

    model: str
    version: int
    rows: int
    """Live rows in the sample."""
    observed_at: float
    """When the live sample was taken (unix seconds): the staleness clock of the drift rule."""
    features: list[FeatureDrift]
    overall_psi: float
    """The largest per-feature PSI (see the module docstring: max, not sum)."""
    overall_feature: str
    """The feature with that PSI."""
    mean_psi: float
    level: Level
    warn: float = DEFAULT_WARN_PSI
    block: float = DEFAULT_BLOCK_PSI
    skipped: list[str] = field(default_factory=list)
    """Features the card has no bins for (an older card): not part of the overall figure."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "version": self.version,
            "rows": self.rows,
            "observed_at": self.observed_at,
            "overall_psi": self.overall_psi,
            "overall_feature": self.overall_feature,
            "mean_psi": self.mean_psi,
            "level": self.level,
            "warn": self.warn,
            "block": self.block,
            "skipped": list(self.skipped),
            "features": [f.__dict__.copy() for f in self.features],
        }


class NoBinsError(ValueError):
    """The model card carries no training bins (written before they were added)."""


def feature_drift(
    card: ModelCard,
    live: np.ndarray,
    *,
    observed_at: float,
    reference: np.ndarray | None = None,
    warn: float = DEFAULT_WARN_PSI,
    block: float = DEFAULT_BLOCK_PSI,
) -> DriftReport:
    """PSI per feature of ``live`` (rows x features, the card's feature order) and overall.

    ``reference``: raw rows of the training distribution (e.g. the holdout set) for the KS
    statistic; without it KS is left out. Raises :class:`NoBinsError` when the card has no bins.
    """
    x = np.asarray(live, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] != len(card.features):
        raise ValueError(f"live: expected rows x {len(card.features)} features, got shape {x.shape}")
    if x.shape[0] == 0:
        raise ValueError("live: no rows")
    if reference is not None:
        reference = np.asarray(reference, dtype=np.float64)
        if reference.ndim != 2 or reference.shape[1] != x.shape[1]:
            raise ValueError(f"reference: expected rows x {x.shape[1]} features, got shape {reference.shape}")
    drifts, skipped = [], []
    for i, feature in enumerate(card.features):
        if feature.bins is None:
            skipped.append(feature.name)
            continue
        column = x[:, i]
        counts = bin_counts(column, feature.bins.edges)
        rows = int(counts.sum())
        if rows == 0:
            skipped.append(feature.name)
            continue
        value = psi(feature.bins.proportions, counts)
        ks_stat = ks_p = None
        if reference is not None:
            ks = stats.ks_2samp(column[~np.isnan(column)], reference[:, i][~np.isnan(reference[:, i])])
            ks_stat, ks_p = float(ks.statistic), float(ks.pvalue)
        drifts.append(FeatureDrift(feature.name, value, level(value, warn, block), rows, ks_stat, ks_p))
    if not drifts:
        raise NoBinsError(f"{card.name} v{card.version}: the model card has no training bins; rebuild it")
    worst = max(drifts, key=lambda d: d.psi)
    return DriftReport(
        model=card.name,
        version=card.version,
        rows=int(x.shape[0]),
        observed_at=observed_at,
        features=drifts,
        overall_psi=worst.psi,
        overall_feature=worst.name,
        mean_psi=float(np.mean([d.psi for d in drifts])),
        level=level(worst.psi, warn, block),
        warn=warn,
        block=block,
        skipped=skipped,
    )


def ks_per_feature(reference: np.ndarray, live: np.ndarray) -> list[tuple[float, float]]:
    """(KS statistic, p-value) per column of two raw samples (``scipy.stats.ks_2samp``)."""
    ref, cur = np.asarray(reference, dtype=np.float64), np.asarray(live, dtype=np.float64)
    if ref.ndim != 2 or cur.ndim != 2 or ref.shape[1] != cur.shape[1]:
        raise ValueError(f"need two row x feature samples of the same width, got {ref.shape} and {cur.shape}")
    out = []
    for i in range(ref.shape[1]):
        result = stats.ks_2samp(cur[:, i], ref[:, i])
        out.append((float(result.statistic), float(result.pvalue)))
    return out


def label_psi(live: Mapping[str, int], reference: Mapping[str, int | float]) -> float:
    """PSI of a predicted-label distribution against a reference one (counts or shares).

    Labels missing on either side count as empty bins (floored at EPSILON), so a label the
    model never predicted in training but predicts now shows up as drift.
    """
    labels = sorted(set(live) | set(reference))
    if not labels:
        raise ValueError("label_psi: no labels on either side")
    return psi([float(reference.get(k, 0)) for k in labels], [float(live.get(k, 0)) for k in labels])


def holdout_label_counts(path: Path, classes: Sequence[str] | None = None) -> dict[str, int]:
    """Label -> count of a holdout set written by ``models/train.py`` (its ``label`` column).

    ``classes`` maps label indices to names (``card.classes``), so the counts line up with the
    labels a model server reports; without it the indices are the keys.
    """
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        if reader.fieldnames is None or "label" not in reader.fieldnames:
            raise ValueError(f"{path}: no 'label' column")
        counts = Counter(row["label"] for row in reader)
    if classes is None:
        return dict(sorted(counts.items()))
    out = {}
    for index, n in counts.items():
        i = int(index)
        if not 0 <= i < len(classes):
            raise ValueError(f"{path}: label {i} outside the card's {len(classes)} classes")
        out[classes[i]] = n
    return dict(sorted(out.items()))


def psi_noise(rows: int, bins: int = DEFAULT_BINS) -> float:
    """Approximate PSI of an unchanged distribution sampled with ``rows`` rows (``(k-1)/n``)."""
    return math.inf if rows <= 0 else (bins - 1) / rows
