"""`POST /feedback` on the apps: the true label of an answered request, onto the `labels` topic.

    POST /feedback  {"request_id": "4f1c...", "label": 1}              one row: class index ...
                    {"request_id": "4f1c...", "label": "malignant"}    ... or class name
                    {"request_id": "4f1c...", "labels": [1, 0, 1]}     one per row of the request
        202 {"request_id", "labels", "accepted": true}
        400 the field named (unknown class, bad request id, no label, a reward), 503 no model yet

The same body as the router's `POST /feedback` (services/router/feedback.py) for labels. Rewards
are the router's business (its policies learn from them); the online trainer learns from labels,
so a body with only a reward is refused here, naming where to send it.

The app does not check that the request id is one it answered: with several replicas the
prediction was perhaps answered by another one. The trainer (services/trainer) joins every
replica's prediction log with the labels by request id, and sends a label for an unknown request
to `labels-dlq` with the reason. Writing is asynchronous (`BackgroundEmitter`): the 202 means
buffered, kept through a broker outage while the buffer has room (retried), dropped and counted
when it is full (`kafka_emitter_dropped_total{emitter="labels"}`).
"""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from services.apps.backend import Backend, BackendResult, PredictionSink
from services.core.errors import InvalidInput, Unavailable
from services.core.http import JSON_ONLY, check_content_type, json_response, parse_json_object, read_body
from services.kafka import labels as label_records
from services.kafka.emitter import BackgroundEmitter
from services.kafka.topics import LABELS, SCORING_PARTITIONS, plain_topic

_FIELDS = frozenset({"request_id", "label", "labels"})
MAX_FEEDBACK_BYTES = 16 * 1024


class FeedbackLog(PredictionSink):
    """Owns the labels emitter (started and stopped with the app, like the prediction log)."""

    def __init__(self, bootstrap_servers: str, topic: str = LABELS, *, source: str, buffer_size: int = 10_000,
                 emitter: BackgroundEmitter | None = None) -> None:
        self.topic = topic
        self.source = source
        self.emitter = emitter or BackgroundEmitter(
            bootstrap_servers, name="labels", buffer_size=buffer_size,
            topics=[plain_topic(topic, SCORING_PARTITIONS)],
        )

    def record(self, request_id: str, x: np.ndarray, result: BackendResult, latency_s: float) -> None:
        """Nothing to do per prediction: the join happens in the trainer, where every replica's log meets."""

    async def start(self) -> None:
        self.emitter.start()

    async def stop(self) -> None:
        await asyncio.to_thread(self.emitter.close, 2.0)

    def route(self, backend: Backend) -> Route:
        async def feedback(request: Request) -> Response:
            if not backend.ready:
                raise Unavailable("model not loaded yet; labels are checked against its classes")
            check_content_type(request.headers.get("content-type"), JSON_ONLY)
            body = parse_json_object(await read_body(request, MAX_FEEDBACK_BYTES))
            request_id, values = parse_feedback(body, backend.card.classes)
            if not self.emitter.offer(self.topic, request_id.encode(),
                                      label_records.encode(request_id, values, self.source)):
                raise Unavailable("the labels buffer is full (the broker is slow or absent); retry later")
            return json_response({"request_id": request_id, "labels": values, "accepted": True}, 202)

        return Route("/feedback", feedback, methods=["POST"])


def parse_feedback(body: dict[str, Any], classes: list[str]) -> tuple[str, list[int]]:
    """(request id, class indices) from a feedback body, or InvalidInput naming the field."""
    unknown = sorted(set(body) - _FIELDS - {"reward", "outcome"})
    if unknown:
        raise InvalidInput(f"unknown field(s) {unknown}; expected request_id and label or labels", field=unknown[0])
    if ("reward" in body or "outcome" in body) and "label" not in body and "labels" not in body:
        raise InvalidInput("this app learns from labels; send rewards to the router's POST /feedback",
                           field="reward")
    try:
        request_id = label_records.check_request_id(body.get("request_id"))
    except label_records.BadLabel as exc:
        raise InvalidInput(str(exc), field="request_id") from exc
    if ("label" in body) == ("labels" in body):
        raise InvalidInput('give exactly one of "label" (one row) or "labels" (one per row)', field="label")
    field = "label" if "label" in body else "labels"
    raw = [body["label"]] if field == "label" else body["labels"]
    if not isinstance(raw, list):
        raise InvalidInput("labels must be a list", field="labels")
    values = [classes.index(v) if isinstance(v, str) and v in classes else v for v in raw]
    try:
        return request_id, list(label_records.check_labels(values, len(classes)))
    except label_records.BadLabel as exc:
        raise InvalidInput(f"{exc}; the model's classes are {classes} (index or name)", field=field) from exc
