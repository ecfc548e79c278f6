"""Live inputs for the drift watch: the router's input tap against the model card's training bins.

    GET <router>/admin/inputs   (admin token)  -> {"enabled", "observed_at", "variants": {name: {"rows": [...]}}}

Each check (when the router's tap is on) the supervisor reads the sample and computes, with
``drift.feature_drift`` against the candidate's model card (``<model_repository>/<model>/<version>/
model-card.json``: per-feature training quantile bins; the holdout set beside it is the KS
reference):

- one report **per variant** (its own sampled rows) -> the ``supervisor_input_psi`` /
  ``supervisor_input_ks`` gauges, per feature;
- one report over **all variants' rows pooled** (variant ``all``): the population the candidate
  will serve once promoted. The ``input_drift`` rule judges that one (largest PSI over features,
  block at 0.25 by default), and the dashboard shows it.

A tap that is off is not an error: the service then leaves the ``input_drift`` rules out and says
why (``skipped_rules``), rather than holding every rollout as inconclusive.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from services.core.card import ModelCard

from .drift import DriftReport, NoBinsError, feature_drift

POOLED = "all"


class InputsUnavailable(Exception):
    """The router's input sample could not be read; the message says why."""


@dataclass
class InputDrift:
    """What one read of the tap gave."""

    enabled: bool
    pooled: DriftReport | None = None
    by_variant: dict[str, DriftReport] = field(default_factory=dict)
    rows: dict[str, int] = field(default_factory=dict)
    problem: str | None = None
    """Why there is no pooled report (too few rows, no bins, unreadable sample...)."""


async def fetch_inputs(client: httpx.AsyncClient, token: str | None) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        r = await client.get("/admin/inputs", headers=headers)
    except httpx.HTTPError as exc:
        raise InputsUnavailable(f"GET /admin/inputs failed: {exc!r}") from exc
    if r.status_code == 404:
        raise InputsUnavailable("the router has no /admin/inputs (an older router without the input tap)")
    if r.status_code != 200:
        raise InputsUnavailable(f"GET /admin/inputs answered {r.status_code}: {r.text[:200]}")
    try:
        body = r.json()
    except ValueError as exc:
        raise InputsUnavailable(f"GET /admin/inputs: not JSON: {exc}") from exc
    if not isinstance(body, dict) or not isinstance(body.get("variants", {}), dict):
        raise InputsUnavailable("GET /admin/inputs: unexpected shape")
    return body


class Reference:
    """Model cards (with training bins) and holdout rows, read once per model version."""

    def __init__(self, repository: Path) -> None:
        self.repository = Path(repository)
        self._cache: dict[tuple[str, int], tuple[ModelCard, np.ndarray | None]] = {}

    def get(self, model: str, version: int) -> tuple[ModelCard, np.ndarray | None]:
        key = (model, version)
        if key not in self._cache:
            vdir = self.repository / model / str(version)
            card = ModelCard.from_file(vdir / "model-card.json")
            self._cache[key] = (card, _holdout(vdir / "holdout.csv", card.input.feature_names))
        return self._cache[key]


def _holdout(path: Path, names: list[str]) -> np.ndarray | None:
    try:
        with path.open(newline="") as f:
            rows = [[float(r[n]) for n in names] for r in csv.DictReader(f)]
    except (OSError, KeyError, ValueError):
        return None  # KS is optional; PSI needs only the card
    return np.asarray(rows, dtype=np.float64) if rows else None


def _matrix(rows: Any, width: int) -> np.ndarray:
    """Rows of the right width as a float matrix (others dropped: a request for another model)."""
    good = [r for r in rows if isinstance(r, list) and len(r) == width]
    return np.asarray(good, dtype=np.float64).reshape(-1, width)


def drift_from_sample(sample: dict[str, Any], card: ModelCard, reference: np.ndarray | None, *,
                      observed_at: float, min_rows: int = 1) -> InputDrift:
    """Per-variant and pooled drift reports of a `GET /admin/inputs` answer."""
    if not sample.get("enabled"):
        return InputDrift(enabled=False, problem="the router's input tap is off (ROUTER_INPUT_TAP_ROWS=0)")
    width = len(card.features)
    out = InputDrift(enabled=True)
    pooled = []
    for name, v in sorted((sample.get("variants") or {}).items()):
        x = _matrix(v.get("rows") or [], width)
        out.rows[name] = int(x.shape[0])
        if x.shape[0] == 0:
            continue
        pooled.append(x)
        if x.shape[0] >= min_rows:
            try:
                out.by_variant[name] = feature_drift(card, x, observed_at=observed_at, reference=reference)
            except NoBinsError as exc:
                out.problem = str(exc)
                return out
    total = sum(p.shape[0] for p in pooled)
    out.rows[POOLED] = total
    if total == 0:
        out.problem = "the router's input tap has no rows yet"
        return out
    try:
        out.pooled = feature_drift(card, np.vstack(pooled), observed_at=observed_at, reference=reference)
    except NoBinsError as exc:
        out.problem = str(exc)
    return out


def finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)
