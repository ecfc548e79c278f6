"""Labels joined with the prediction log by request id: a pure function of the records and their order.

    joiner = Joiner(model_name="breast-cancer", n_features=30, n_classes=2, window=10_000)
    joiner.add_predictions(records)            # `predictions` records, any partition
    joiner.evict(prediction_ends)              # keep the last `window` offsets per partition
    result = joiner.join(label_records)        # rows to learn from, and what goes to the DLQ

Rules (each decision depends only on the records, never on timing, so a replay decides alike):

- labels are taken in (partition, offset) order; the prediction they need must be in the join
  window: the last `window` offsets of each `predictions` partition up to the cycle's end
  offsets. A late label still joins while its prediction is in the window;
- no prediction with that request id in the window: `unknown_request` (an id never answered, or
  one answered so long ago that it left the window: a label too late to learn from);
- a second label for a prediction already learned from: `duplicate` (the first one counts);
- the prediction was logged without its inputs: `no_inputs` (the app needs
  `STREAMING_PREDICTION_LOG_INPUTS=true`);
- the label is not a well-formed record (services/kafka/labels.py) or has another number of rows
  than the prediction: `malformed`, with the reason.

A label that arrives before its prediction would be `unknown_request`: the trainer waits
`join_grace_s` between fixing the labels' end offsets and the predictions' (services/trainer/service.py).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from services.kafka import labels as label_records


@dataclass(slots=True)
class Prediction:
    partition: int
    offset: int
    rows: int
    inputs: np.ndarray | None


@dataclass
class Rejected:
    record: Any
    reason: str
    detail: str


@dataclass
class JoinResult:
    x: np.ndarray
    y: np.ndarray
    joined: int = 0
    rejected: list[Rejected] = field(default_factory=list)


def by_position(records: Iterable[Any]) -> list[Any]:
    return sorted(records, key=lambda r: (r.partition, r.offset))


class Joiner:
    def __init__(self, *, model_name: str, n_features: int, n_classes: int, window: int) -> None:
        self.model_name = model_name
        self.n_features = n_features
        self.n_classes = n_classes
        self.window = window
        self.cache: dict[str, Prediction] = {}
        self.learned: dict[str, tuple[int, int]] = {}  # request id -> its prediction's (partition, offset)
        self.skipped_predictions = 0

    def add_predictions(self, records: Iterable[Any]) -> None:
        for r in by_position(records):
            try:
                event = orjson.loads(r.value)
                request_id = event["request_id"]
                if event.get("model_name") != self.model_name or not isinstance(request_id, str):
                    continue
                inputs = event.get("inputs")
                x = None if inputs is None else np.asarray(inputs, dtype=np.float32)
                if x is not None and (x.ndim != 2 or x.shape[1] != self.n_features or not np.isfinite(x).all()):
                    x = None
                rows = int(event.get("rows", 0))
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
                self.skipped_predictions += 1  # not ours to judge: the prediction log is the apps' own record
                continue
            self.cache[request_id] = Prediction(r.partition, r.offset, rows, x)
            self.learned.pop(request_id, None)  # a reused request id is a new prediction

    def evict(self, ends: dict[int, int]) -> None:
        """Forget predictions (and learned ids) older than the last `window` offsets of their partition."""
        floor = {p: end - self.window for p, end in ends.items()}
        self.cache = {k: v for k, v in self.cache.items() if v.offset >= floor.get(v.partition, 0)}
        self.learned = {k: v for k, v in self.learned.items() if v[1] >= floor.get(v[0], 0)}

    def join(self, records: Iterable[Any]) -> JoinResult:
        xs: list[np.ndarray] = []
        ys: list[int] = []
        result = JoinResult(np.empty((0, self.n_features), np.float32), np.empty(0, np.int64))
        for r in by_position(records):
            try:
                label = label_records.parse_label(r.key, r.value, self.n_classes)
            except label_records.BadLabel as exc:
                result.rejected.append(Rejected(r, exc.reason, str(exc)))
                continue
            if label.request_id in self.learned:
                p, o = self.learned[label.request_id]
                result.rejected.append(Rejected(r, "duplicate", f"request {label.request_id} was already learned "
                                                                f"from (its prediction: predictions[{p}]@{o})"))
                continue
            prediction = self.cache.get(label.request_id)
            if prediction is None:
                result.rejected.append(Rejected(
                    r, "unknown_request", f"no prediction with request id {label.request_id} in the join window "
                    f"(the last {self.window} predictions per partition): never answered, or too late"))
                continue
            if prediction.inputs is None:
                result.rejected.append(Rejected(r, "no_inputs", "the prediction was logged without its inputs "
                                                                "(STREAMING_PREDICTION_LOG_INPUTS=true)"))
                continue
            if len(label.labels) != len(prediction.inputs):
                result.rejected.append(Rejected(r, "malformed", f"{len(label.labels)} labels for a prediction of "
                                                                f"{len(prediction.inputs)} rows"))
                continue
            xs.append(prediction.inputs)
            ys.extend(label.labels)
            del self.cache[label.request_id]
            self.learned[label.request_id] = (prediction.partition, prediction.offset)
            result.joined += 1
        if xs:
            result.x, result.y = np.vstack(xs), np.asarray(ys, dtype=np.int64)
        return result
