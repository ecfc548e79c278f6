"""One online trainer's state machine, without Kafka: cycles over fixed offset ranges, and its lineage.

    trainer = OnlineTrainer(reference_card, Options(...), threshold, lineage=Lineage.start(...))
    outcome = trainer.cycle(prediction_records, label_records, labels_end, predictions_end)
    outcome.candidate          # exported and gated, or None (nothing learned yet, holdout too small)

A **cycle** takes the `labels` records between the previous cycle's end offsets and
`labels_end`, and the `predictions` records up to `predictions_end` (added to the join window),
joins them (join.py), learns from the rows (learner.py) and, once the model can be measured,
makes the next candidate version. The **lineage** lists every cycle's end offsets since the
start; it is the data version: the card of every candidate carries it, so the candidate can be
rebuilt from the topics alone (`replay`), and the trainer's committed state is the lineage too
(a restart replays it to rebuild the model, then continues after its last end offsets).

Everything here is a function of the records and the lineage: no clock, no randomness beyond
the fixed seed.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from models import train
from services.core.card import ModelCard
from services.trainer.join import Joiner, JoinResult
from services.trainer.learner import Candidate, Learner, LearnerConfig

Offsets = dict[int, int]


def to_json(offsets: Offsets) -> dict[str, int]:
    return {str(p): o for p, o in sorted(offsets.items())}


def from_json(raw: dict[str, Any]) -> Offsets:
    return {int(p): int(o) for p, o in raw.items()}


@dataclass(frozen=True)
class Options:
    learner: LearnerConfig = field(default_factory=LearnerConfig)
    window: int = 10_000
    """Join window: predictions kept per partition (the last `window` offsets)."""
    first_version: int = 100
    """Version number of the first candidate; each later candidate is the next integer."""

    def as_dict(self) -> dict[str, Any]:
        return {"learner": self.learner.as_dict(), "window": self.window, "first_version": self.first_version}

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Options:
        return cls(LearnerConfig(**raw["learner"]), int(raw["window"]), int(raw["first_version"]))


@dataclass
class Lineage:
    labels_topic: str
    predictions_topic: str
    labels_start: Offsets
    predictions_start: Offsets
    options: Options
    cycles: list[dict[str, Any]] = field(default_factory=list)
    """Per cycle: labels_end, predictions_end (JSON offsets), version (or None), rows."""

    def as_dict(self) -> dict[str, Any]:
        return {"labels_topic": self.labels_topic, "predictions_topic": self.predictions_topic,
                "labels_start": to_json(self.labels_start), "predictions_start": to_json(self.predictions_start),
                "options": self.options.as_dict(), "cycles": list(self.cycles)}

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Lineage:
        return cls(raw["labels_topic"], raw["predictions_topic"], from_json(raw["labels_start"]),
                   from_json(raw["predictions_start"]), Options.from_dict(raw["options"]), list(raw["cycles"]))

    def labels_end(self) -> Offsets:
        return from_json(self.cycles[-1]["labels_end"]) if self.cycles else dict(self.labels_start)

    def predictions_end(self) -> Offsets:
        return from_json(self.cycles[-1]["predictions_end"]) if self.cycles else dict(self.predictions_start)

    def last_version(self) -> int | None:
        return next((c["version"] for c in reversed(self.cycles) if c["version"] is not None), None)


@dataclass
class Outcome:
    join: JoinResult
    trained: int
    held_out: int
    version: int | None
    candidate: Candidate | None


class OnlineTrainer:
    def __init__(self, reference: ModelCard, threshold: train.Threshold, lineage: Lineage) -> None:
        self.reference = reference
        self.threshold = threshold
        self.lineage = lineage
        self.options = lineage.options
        self.learner = Learner(reference, lineage.options.learner)
        self.joiner = Joiner(model_name=reference.name, n_features=reference.n_features,
                             n_classes=len(reference.classes), window=lineage.options.window)

    def cycle(self, predictions: Iterable[Any], labels: Iterable[Any], labels_end: Offsets,
              predictions_end: Offsets, *, export: bool = True, record: bool = True) -> Outcome:
        """One cycle over the given records (those between the last cycle's end offsets and these ends).
        `export=False` (a replay's earlier cycles) numbers the candidate without building it;
        `record=False` (replaying a committed lineage) appends to the replay's list, not the lineage."""
        cycles = self.lineage.cycles if record else self._replayed
        last = cycles[-1] if cycles else None
        labels_start = from_json(last["labels_end"]) if last else dict(self.lineage.labels_start)
        parent = next((c["version"] for c in reversed(cycles) if c["version"] is not None), None)

        self.joiner.add_predictions(predictions)
        self.joiner.evict(predictions_end)
        joined = self.joiner.join(labels)
        trained, held = self.learner.learn(joined.x, joined.y)
        ready = (trained + held > 0 and self.learner.fitted
                 and len(self.learner.holdout) >= self.options.learner.min_holdout_rows)
        version = (self.options.first_version if parent is None else parent + 1) if ready else None
        cycles.append({"labels_end": to_json(labels_end), "predictions_end": to_json(predictions_end),
                       "version": version, "rows": int(len(joined.y))})
        candidate = None
        if version is not None and export:
            lineage = {**self.lineage.as_dict(), "cycles": list(cycles)}
            window_start = {p: max(self.lineage.predictions_start.get(p, 0), end - self.options.window)
                            for p, end in predictions_end.items()}
            candidate = self.learner.candidate(version, self.threshold, {"data": {
                "labels": {"topic": self.lineage.labels_topic, "partitions": _ranges(labels_start, labels_end)},
                "predictions": {"topic": self.lineage.predictions_topic,
                                "partitions": _ranges(window_start, predictions_end)},
                "rows": int(len(joined.y)),
                "rows_total": self.learner.rows_seen,
                "parent_version": parent,
                "lineage": lineage,
            }})
        return Outcome(joined, trained, held, version, candidate)

    # -- replaying a committed lineage ----------------------------------------------------------------

    def begin_replay(self) -> None:
        self._replayed: list[dict[str, Any]] = []


def _ranges(start: Offsets, end: Offsets) -> dict[str, list[int]]:
    return {str(p): [start.get(p, 0), e] for p, e in sorted(end.items())}


def slice_records(records: list[Any], start: Offsets, end: Offsets) -> list[Any]:
    return [r for r in records if start.get(r.partition, 0) <= r.offset < end.get(r.partition, 0)]


def replay(trainer: OnlineTrainer, predictions: list[Any], labels: list[Any], cycles: list[dict[str, Any]],
           *, export_last: bool = True) -> Outcome | None:
    """Run `cycles` (a lineage's, in order) over records read once from the topics; the trainer's
    own lineage stays as it is. Returns the last cycle's outcome (its candidate built if `export_last`)."""
    trainer.begin_replay()
    lstart, pstart = dict(trainer.lineage.labels_start), dict(trainer.lineage.predictions_start)
    outcome = None
    for i, c in enumerate(cycles):
        lend, pend = from_json(c["labels_end"]), from_json(c["predictions_end"])
        outcome = trainer.cycle(slice_records(predictions, pstart, pend), slice_records(labels, lstart, lend), lend,
                                pend, export=export_last and i == len(cycles) - 1, record=False)
        if outcome.version != c["version"]:
            raise RuntimeError(f"replay diverged at cycle {i}: version {outcome.version}, the lineage says "
                               f"{c['version']}; the topics no longer hold what the lineage names")
        lstart, pstart = lend, pend
    return outcome
