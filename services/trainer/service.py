"""The online trainer's loop: wait for labels, run a cycle, record, commit, publish; and `replay`.

    python -m services.trainer run                       (settings from TRAINER_* variables)
    python -m services.trainer replay --card <model-card.json> [--out DIR]

One cycle (core.py has the rules):

1. fix the labels' end offsets (every `every_labels` new records, or `every_seconds` after the
   last cycle with at least one), wait `join_grace_s`, fix the predictions' end offsets;
2. read both ranges, join by request id, learn, and (once measurable) export the next candidate
   and run the gates (parity, threshold on the rolling holdout);
3. send the labels it could not use to the DLQ (with the reason) and the candidate's record to
   the events topic; write the candidate's files to `output_dir`;
4. **commit**: one acknowledged record on the compacted state topic holding the lineage (every
   cycle's end offsets) and what has been published;
5. publish the candidate if it passed (signed, a new release), then commit again saying so.

**Restart without double learning.** The committed lineage is the only record of what was
consumed, written together with the learning it describes (one record). At start the trainer
reads it, replays those cycles from the topics (the same code, the same records, so the same
model state) and continues after the last end offsets: a label is learned from exactly once
whatever the moment of a crash. A crash between the commit and the publish leaves a passing
candidate unpublished: the restart sees `published` behind the lineage's last version, rebuilds
that candidate's bytes by the replay and publishes it. A crash before the commit redoes the cycle
(its DLQ and event records may then appear twice; the learning does not).

The cost: a restart replays everything since the trainer first started, so the topics must keep
their records that long (`retention.ms`); the replay of a card needs the same. Bounding it would
take a snapshot of the model state in the state record (not built; see README).
"""

from __future__ import annotations

import json
import logging
import signal
import threading
import time
from pathlib import Path
from typing import Any

from models import train
from services.core.card import ModelCard
from services.core.lifecycle import HOLDOUT_FILE
from services.core.runtime import CARD_FILE, MODEL_FILE
from services.kafka import messages, publisher
from services.kafka.follower import reference_card
from services.kafka.topics import SCORING_PARTITIONS, compacted_topic, ensure_topics, plain_topic
from services.trainer import metrics
from services.trainer.core import Lineage, OnlineTrainer, Options, Outcome, from_json, replay
from services.trainer.kafka_io import KafkaIO
from services.trainer.learner import Candidate, LearnerConfig
from services.trainer.settings import TrainerSettings

log = logging.getLogger(__name__)
STATE_SCHEMA = 1
MAX_DLQ_VALUE = 4096


class TrainerError(RuntimeError):
    """The trainer cannot start or continue; the message says why and what to do."""


def options_from(settings: TrainerSettings) -> Options:
    return Options(
        LearnerConfig(seed=settings.seed, learning_rate=settings.learning_rate, alpha=settings.alpha,
                      holdout_every=settings.holdout_every, holdout_rows=settings.holdout_rows,
                      min_holdout_rows=settings.min_holdout_rows),
        window=settings.join_window, first_version=settings.first_version)


def load_reference(settings: TrainerSettings) -> ModelCard:
    card = reference_card(settings.model_repository, settings.model_name, settings.contract_card)
    if card is None:
        raise TrainerError(f"no reference card for {settings.model_name!r} in {settings.model_repository} "
                           "(run `make models`, or set TRAINER_CONTRACT_CARD)")
    return card


def load_threshold(settings: TrainerSettings) -> train.Threshold:
    thresholds = train.load_thresholds(settings.thresholds_file)
    if settings.model_name not in thresholds:
        raise TrainerError(f"{settings.thresholds_file} has no floor for {settings.model_name!r}; a candidate "
                           "cannot be gated without one")
    return thresholds[settings.model_name]


def write_candidate(output_dir: Path, candidate: Candidate) -> Path:
    out = output_dir / candidate.card["name"] / str(candidate.version)
    out.mkdir(parents=True, exist_ok=True)
    (out / HOLDOUT_FILE).write_bytes(candidate.holdout_csv)
    (out / MODEL_FILE).write_bytes(candidate.onnx_bytes)
    (out / CARD_FILE).write_text(json.dumps(candidate.card, indent=2) + "\n")  # last: marks it complete
    return out


class Trainer:
    """The running trainer: `start()` recovers the committed state, `step()` runs at most one cycle."""

    def __init__(self, settings: TrainerSettings, io: KafkaIO | None = None) -> None:
        self.settings = settings
        self.name = settings.model_name
        self.reference = load_reference(settings)
        self.threshold = load_threshold(settings)
        self.key = messages.load_signing_key(settings.signing_key_file) if settings.publish else None
        self.io = io or KafkaIO(settings.bootstrap_servers, read_timeout_s=settings.read_timeout_s)
        self.trainer: OnlineTrainer | None = None
        self.published: int | None = None
        self.last_cycle = time.monotonic()

    # -- start: the committed state, replayed ------------------------------------------------------------

    def start(self) -> None:
        s = self.settings
        ensure_topics(s.bootstrap_servers, [
            plain_topic(s.labels_topic, SCORING_PARTITIONS), plain_topic(s.predictions_topic, SCORING_PARTITIONS),
            plain_topic(s.dlq_topic), plain_topic(s.events_topic), compacted_topic(s.state_topic)])
        state = self.io.latest_value(s.state_topic, self.name)
        options = options_from(s)
        if state is None:
            where = self.io.beginning_offsets if s.start_from == "earliest" else self.io.end_offsets
            lineage = Lineage(s.labels_topic, s.predictions_topic, where(s.labels_topic),
                              where(s.predictions_topic), options)
            self.trainer = OnlineTrainer(self.reference, self.threshold, lineage)
            log.info("no committed state: a new lineage", extra={"model_name": self.name, **lineage.as_dict()})
            self._commit()
            return
        if state.get("schema") != STATE_SCHEMA:
            raise TrainerError(f"state record schema {state.get('schema')!r} is unknown (this trainer knows "
                               f"{STATE_SCHEMA})")
        lineage = Lineage.from_dict(state["lineage"])
        if lineage.options != options or (lineage.labels_topic, lineage.predictions_topic) != (
                s.labels_topic, s.predictions_topic):
            raise TrainerError(
                f"the committed state on {s.state_topic} was learned with other settings ({lineage.options.as_dict()},"
                f" topics {lineage.labels_topic}/{lineage.predictions_topic}) than these ({options.as_dict()}, "
                f"{s.labels_topic}/{s.predictions_topic}); continuing would not be a replayable lineage: restore "
                "them, or start a new lineage with another TRAINER_STATE_TOPIC")
        self.trainer = OnlineTrainer(self.reference, self.threshold, lineage)
        self.published = state.get("published_version")
        started = time.perf_counter()
        outcome = self._replay(lineage.cycles, export_last=True)
        self.trainer.lineage.cycles = list(self.trainer._replayed)
        log.info("committed state replayed; continuing after its end offsets",
                 extra={"model_name": self.name, "cycles": len(lineage.cycles), "rows": self.trainer.learner.rows_seen,
                        "labels_end": lineage.labels_end(), "seconds": round(time.perf_counter() - started, 3)})
        last = outcome.candidate if outcome is not None else None
        if last is not None and last.passed and self.published != last.version and s.publish:
            log.info("the last committed candidate passed but was not published; publishing it now",
                     extra={"model_name": self.name, "model_version": last.version})
            self._publish(last)

    def _replay(self, cycles: list[dict[str, Any]], *, export_last: bool) -> Outcome | None:
        assert self.trainer is not None
        lineage = self.trainer.lineage
        if not cycles:
            self.trainer.begin_replay()
            return None
        labels = self.io.read(lineage.labels_topic, lineage.labels_start, from_json(cycles[-1]["labels_end"]))
        predictions = self.io.read(lineage.predictions_topic, lineage.predictions_start,
                                   from_json(cycles[-1]["predictions_end"]))
        return replay(self.trainer, predictions, labels, cycles, export_last=export_last)

    # -- one cycle ------------------------------------------------------------------------------------------

    def due(self) -> dict[int, int] | None:
        """The labels' end offsets if a cycle is due now, else None."""
        assert self.trainer is not None
        ends = self.io.end_offsets(self.settings.labels_topic)
        done = self.trainer.lineage.labels_end()
        new = sum(max(0, e - done.get(p, 0)) for p, e in ends.items())
        waited = time.monotonic() - self.last_cycle
        if new >= self.settings.every_labels or (new > 0 and waited >= self.settings.every_seconds):
            return ends
        return None

    def step(self, labels_end: dict[int, int] | None = None) -> Outcome | None:
        """Run one cycle if one is due (or up to `labels_end` if given); returns its outcome."""
        assert self.trainer is not None
        labels_end = labels_end or self.due()
        if labels_end is None:
            return None
        started = time.perf_counter()
        s, lineage = self.settings, self.trainer.lineage
        time.sleep(s.join_grace_s)
        predictions_end = self.io.end_offsets(s.predictions_topic)
        predictions = self.io.read(s.predictions_topic, lineage.predictions_end(), predictions_end)
        labels = self.io.read(s.labels_topic, lineage.labels_end(), labels_end)
        outcome = self.trainer.cycle(predictions, labels, labels_end, predictions_end)
        self.last_cycle = time.monotonic()
        for rejected in outcome.join.rejected:
            self.io.send(s.dlq_topic, rejected.record.key.decode(errors="replace") if rejected.record.key else "", {
                "reason": rejected.reason, "detail": rejected.detail, "model_name": self.name,
                "source": {"topic": s.labels_topic, "partition": rejected.record.partition,
                           "offset": rejected.record.offset},
                "value": (rejected.record.value or b"")[:MAX_DLQ_VALUE].decode(errors="replace")})
            metrics.LABELS.labels(self.name, rejected.reason).inc()
        metrics.LABELS.labels(self.name, "joined").inc(outcome.join.joined)
        metrics.ROWS.labels(self.name, "train").inc(outcome.trained)
        metrics.ROWS.labels(self.name, "holdout").inc(outcome.held_out)
        candidate = outcome.candidate
        if candidate is not None:
            where = write_candidate(s.output_dir, candidate)
            metrics.LATEST_VERSION.labels(self.name).set(candidate.version)
            self.io.send(s.events_topic, self.name, {
                "event": "candidate", "model_name": self.name, "model_version": candidate.version,
                "passed": candidate.passed, "reason": candidate.reason, "metrics": candidate.card["metrics"],
                "sha256": candidate.card["sha256"], "data": {k: v for k, v in candidate.card["data"].items()
                                                             if k != "lineage"},
                "files": str(where), "ts": round(time.time(), 3)})
        self._commit()
        if candidate is not None:
            if not candidate.passed:
                metrics.CANDIDATES.labels(self.name, "gate_failed").inc()
                log.warning("candidate refused by the gates; not published",
                            extra={"model_name": self.name, "model_version": candidate.version,
                                   "reason": candidate.reason})
            elif s.publish:
                self._publish(candidate)
            else:
                metrics.CANDIDATES.labels(self.name, "passed").inc()
        metrics.CYCLE_SECONDS.labels(self.name).observe(time.perf_counter() - started)
        log.info("cycle", extra={"model_name": self.name, "joined": outcome.join.joined,
                                 "rejected": len(outcome.join.rejected), "trained": outcome.trained,
                                 "held_out": outcome.held_out, "version": outcome.version,
                                 "passed": None if candidate is None else candidate.passed,
                                 "metrics": None if candidate is None else candidate.card["metrics"]})
        return outcome

    def _publish(self, candidate: Candidate) -> None:
        assert self.key is not None
        result = publisher.publish_artifact(self.settings.bootstrap_servers, candidate.card, candidate.onnx_bytes,
                                            candidate.holdout_csv, key=self.key, topic=self.settings.models_topic)
        self.published = candidate.version
        metrics.CANDIDATES.labels(self.name, "published").inc()
        metrics.PUBLISHED_VERSION.labels(self.name).set(candidate.version)
        log.info("candidate published", extra={"model_name": self.name, "model_version": candidate.version,
                                               "published": result.describe()})
        self._commit()

    def _commit(self) -> None:
        assert self.trainer is not None
        self.io.send(self.settings.state_topic, self.name, {
            "schema": STATE_SCHEMA, "model_name": self.name, "lineage": self.trainer.lineage.as_dict(),
            "published_version": self.published, "committed_at": round(time.time(), 3)})

    def close(self) -> None:
        self.io.close()


def run(settings: TrainerSettings, stop: threading.Event | None = None) -> None:
    """Recover, then cycle until SIGTERM/SIGINT (or `stop`); a cycle in progress finishes first."""
    stop = stop or threading.Event()
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
    trainer = Trainer(settings)
    try:
        trainer.start()
        print(f"trainer: {settings.model_name} from {settings.labels_topic} joined with {settings.predictions_topic}"
              f" on {settings.bootstrap_servers}; candidates to {settings.output_dir}"
              + (f", published to {settings.models_topic}" if settings.publish else " (not published)"), flush=True)
        while not stop.is_set():
            if trainer.step() is None:
                stop.wait(settings.poll_s)
    finally:
        trainer.close()


def replay_card(settings: TrainerSettings, card_path: Path, out: Path | None = None) -> tuple[Candidate, bool]:
    """Rebuild the candidate a card describes from the topics and offsets in its lineage; returns it and
    whether its ONNX bytes are the card's (sha256)."""
    card = json.loads(card_path.read_text())
    try:
        lineage = Lineage.from_dict(card["data"]["lineage"])
    except (KeyError, TypeError) as exc:
        raise TrainerError(f"{card_path} is not an online candidate's card (no data.lineage)") from exc
    trainer = Trainer(settings.model_copy(update={"model_name": card["name"], "publish": False}))
    try:
        trainer.trainer = OnlineTrainer(trainer.reference, trainer.threshold, lineage)
        outcome = trainer._replay(lineage.cycles, export_last=True)
    finally:
        trainer.close()
    if outcome is None or outcome.candidate is None:
        raise TrainerError(f"the lineage in {card_path} yields no candidate")
    candidate = outcome.candidate
    if candidate.version != card["version"]:
        raise TrainerError(f"the replay made v{candidate.version}; the card is v{card['version']}")
    if out is not None:
        write_candidate(out, candidate)
    return candidate, candidate.card["sha256"] == card["sha256"]
