"""Input validation against a model card's contract.

Rows arrive as JSON, either by feature name (`{"mean radius": 14.1, ...}`) or as arrays in
the contract's feature order. `InputContract.rows_to_array` turns them into the float32 matrix
the model expects, or raises `InvalidInput` naming the row, the field and the problem.

The common case (well-formed numeric rows) takes a vectorised fast path; only when it fails do
we walk the rows to find and name the first problem, so diagnosis costs nothing on good input.

Range checks compare each value with the training range from the card, widened by a margin:
`reject` refuses the request, `flag` serves it and reports the features that were out of range,
`off` skips the check.

`requests_to_array` validates many requests at once (the stream-scoring micro-batch): each is
held to the contract as if it came alone, and a bad one refuses only itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import numpy as np

from services.core.card import ModelCard
from services.core.errors import ClientError, InvalidInput, PayloadTooLarge

_F32 = np.dtype(np.float32)


class RangePolicy(StrEnum):
    REJECT = "reject"
    FLAG = "flag"
    OFF = "off"


@dataclass(frozen=True)
class RangeFinding:
    row: int
    feature: str
    value: float
    low: float
    high: float

    def to_dict(self) -> dict[str, Any]:
        return {"row": self.row, "feature": self.feature, "value": self.value, "low": self.low, "high": self.high}


def _describe(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _is_number(value: Any) -> bool:
    # bool is an int subclass in Python; a JSON true is not a feature value.
    return isinstance(value, int | float) and not isinstance(value, bool)


class InputContract:
    """Validates inputs for one model card; cheap to build, immutable, thread-safe."""

    def __init__(
        self,
        card: ModelCard,
        *,
        max_batch_size: int = 256,
        range_policy: RangePolicy = RangePolicy.FLAG,
        range_margin: float = 0.1,
    ) -> None:
        self.card = card
        self.names = list(card.input.feature_names)
        self.name_set = frozenset(self.names)
        self.n_features = len(self.names)
        self.max_batch_size = max_batch_size
        self.range_policy = RangePolicy(range_policy)
        low = np.array([f.min for f in card.features], dtype=np.float64)
        high = np.array([f.max for f in card.features], dtype=np.float64)
        span = np.maximum(high - low, 1e-12) * range_margin
        self.low, self.high = low - span, high + span

    # -- entry points ---------------------------------------------------------------------

    def rows_to_array(self, instances: Any, field: str = "instances") -> np.ndarray:
        """JSON rows (dicts by feature name, or arrays) -> validated float32 matrix."""
        if not isinstance(instances, list):
            raise InvalidInput(f"{field} must be a list of rows, got {_describe(instances)}", field=field)
        self.check_batch(len(instances), field)
        first = instances[0]
        if isinstance(first, dict):
            matrix = self._named_rows(instances, field)
        elif isinstance(first, list):
            matrix = self._array_rows(instances, field)
        else:
            raise InvalidInput(
                f"{field}[0] must be an object keyed by feature name or an array of "
                f"{self.n_features} numbers, got {_describe(first)}",
                field=f"{field}[0]",
            )
        return self.check_array(matrix, field)

    def check_batch(self, n_rows: int, field: str = "instances") -> None:
        if n_rows == 0:
            raise InvalidInput(f"{field} is empty: send at least one row", field=field)
        if n_rows > self.max_batch_size:
            raise PayloadTooLarge(
                f"{field} has {n_rows} rows; the limit is {self.max_batch_size} per request",
                field=field,
            )

    def check_array(self, matrix: np.ndarray, field: str = "instances") -> np.ndarray:
        """Shape and finiteness of an already-numeric matrix -> float32, C-contiguous."""
        if matrix.ndim != 2 or matrix.shape[1] != self.n_features:
            raise InvalidInput(
                f"{field} must have shape [rows, {self.n_features}], got {list(matrix.shape)}", field=field
            )
        self.check_batch(matrix.shape[0], field)
        if matrix.dtype == _F32 and matrix.flags.c_contiguous:
            out = matrix  # already what the model takes (the common case over gRPC and binary REST)
        else:
            # Cast first: 1e39 is finite as float64 but overflows float32 (and is refused below).
            with np.errstate(over="ignore"):
                out = np.ascontiguousarray(matrix, dtype=np.float32)
        if not np.isfinite(out).all():
            row, col = np.argwhere(~np.isfinite(out))[0]
            raise InvalidInput(
                f"{field}[{row}].{self.names[col]} is not a finite number ({float(matrix[row, col])!r} as float32)",
                field=f"{field}[{row}].{self.names[col]}",
            )
        return out

    def check_ranges(self, matrix: np.ndarray) -> list[RangeFinding]:
        """Applies the range policy; returns the findings to report when the policy is `flag`."""
        if self.range_policy is RangePolicy.OFF:
            return []
        outside = self._outside(matrix)
        if not outside.any():
            return []
        findings = [
            RangeFinding(int(r), self.names[c], float(matrix[r, c]), float(self.low[c]), float(self.high[c]))
            for r, c in np.argwhere(outside)
        ]
        if self.range_policy is RangePolicy.REJECT:
            f = findings[0]
            raise InvalidInput(
                f"instances[{f.row}].{f.feature}={f.value:g} is outside the accepted range "
                f"[{f.low:g}, {f.high:g}] (training range plus margin)",
                field=f"instances[{f.row}].{f.feature}",
            )
        return findings

    def requests_to_array(self, requests: Sequence[Any], field: str = "instances"
                          ) -> tuple[np.ndarray, list[int], dict[int, ClientError]]:
        """Many requests' rows validated together (a stream-scoring micro-batch).

        Returns the float32 rows of the accepted requests, in request order; the indices of those
        requests; and the error of each refused one. Every request is held to this contract as if
        it came alone (row limit, shapes, numbers, range policy `reject`); when all are
        well-formed arrays of numbers that costs one numpy conversion for the whole batch, and
        only a batch holding something else is read request by request to name each problem.
        """
        errors: dict[int, ClientError] = {}
        kept: list[int] = []
        for i, rows in enumerate(requests):
            try:
                if not isinstance(rows, list):
                    raise InvalidInput(f"{field} must be a list of rows, got {_describe(rows)}", field=field)
                self.check_batch(len(rows), field)
            except ClientError as exc:
                errors[i] = exc
                continue
            kept.append(i)
        matrix = self._numeric_rows([row for i in kept for row in requests[i]])
        if matrix is None:
            parts, accepted = [], []
            for i in kept:
                try:
                    parts.append(self.rows_to_array(requests[i], field))
                except ClientError as exc:
                    errors[i] = exc
                    continue
                accepted.append(i)
            kept = accepted
            matrix = np.concatenate(parts) if parts else np.empty((0, self.n_features), np.float32)
        if self.range_policy is RangePolicy.REJECT and kept:
            outside = self._outside(matrix).any(axis=1)
            if outside.any():
                bounds = np.cumsum([0, *(len(requests[i]) for i in kept)])
                keep_rows = np.ones(len(matrix), dtype=bool)
                accepted = []
                for j, i in enumerate(kept):
                    lo, hi = bounds[j], bounds[j + 1]
                    if outside[lo:hi].any():
                        try:
                            self.check_ranges(matrix[lo:hi])  # raises under `reject`, naming the request's row
                        except ClientError as exc:
                            errors[i] = exc
                        keep_rows[lo:hi] = False
                    else:
                        accepted.append(i)
                matrix, kept = matrix[keep_rows], accepted
        return matrix, kept, errors

    def _outside(self, matrix: np.ndarray) -> np.ndarray:
        return (matrix < self.low) | (matrix > self.high)

    def _numeric_rows(self, rows: list[Any]) -> np.ndarray | None:
        """Arrays of finite numbers in contract width -> float32; None for anything else."""
        if not rows or not isinstance(rows[0], list):
            return None
        try:
            matrix = np.array(rows)
        except ValueError:
            return None  # ragged
        if matrix.dtype.kind not in "iuf" or matrix.ndim != 2 or matrix.shape[1] != self.n_features:
            return None
        if any(v is True or v is False for row in rows for v in row):
            return None  # a JSON true is not a feature value, though numpy reads it as 1
        with np.errstate(over="ignore"):
            out = np.ascontiguousarray(matrix, dtype=np.float32)
        return out if np.isfinite(out).all() else None

    # -- row shapes -----------------------------------------------------------------------

    def _array_rows(self, rows: list, field: str) -> np.ndarray:
        try:
            matrix = np.array(rows)
        except ValueError:
            matrix = None  # ragged: diagnosed below
        if (
            matrix is not None
            and matrix.dtype.kind in "iuf"
            and matrix.ndim == 2
            and matrix.shape[1] == self.n_features
            and not any(v is True or v is False for row in rows for v in row)
        ):
            return matrix
        for i, row in enumerate(rows):
            if not isinstance(row, list):
                raise InvalidInput(
                    f"{field}[{i}] must be an array like the other rows, got {_describe(row)}",
                    field=f"{field}[{i}]",
                )
            if len(row) != self.n_features:
                raise InvalidInput(
                    f"{field}[{i}] has {len(row)} values; the model expects {self.n_features}",
                    field=f"{field}[{i}]",
                )
            for j, value in enumerate(row):
                if not _is_number(value):
                    raise InvalidInput(
                        f"{field}[{i}][{j}] ({self.names[j]}) must be a number, got {_describe(value)}",
                        field=f"{field}[{i}][{j}]",
                    )
        raise InvalidInput(f"{field} could not be read as a numeric matrix", field=field)

    def _named_rows(self, rows: list, field: str) -> np.ndarray:
        names = self.names
        values: list[list[Any]] = []
        for i, row in enumerate(rows):
            if not isinstance(row, dict):
                raise InvalidInput(
                    f"{field}[{i}] must be an object like the other rows, got {_describe(row)}",
                    field=f"{field}[{i}]",
                )
            if len(row) != self.n_features or row.keys() != self.name_set:
                unknown = sorted(set(row) - self.name_set)
                missing = [n for n in names if n not in row]
                problems = []
                if unknown:
                    problems.append(f"unknown feature(s) {unknown}")
                if missing:
                    problems.append(f"missing feature(s) {missing}")
                raise InvalidInput(f"{field}[{i}]: {'; '.join(problems)}", field=f"{field}[{i}]")
            ordered = [row[n] for n in names]
            for name, value in zip(names, ordered, strict=True):
                if not _is_number(value):
                    raise InvalidInput(
                        f"{field}[{i}].{name} must be a number, got {_describe(value)}",
                        field=f"{field}[{i}].{name}",
                    )
            values.append(ordered)
        return np.array(values, dtype=np.float64)
