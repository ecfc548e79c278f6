"""The router's side of the `labels` topic: accepted label feedback, keyed by the id the model server saw.

    labels = LabelsOut(bootstrap, "labels")      # with ROUTER_LABELS_TOPIC (needs ROUTER_KAFKA_BOOTSTRAP_SERVERS)
    labels.start() ... labels.stop()             # with the router, like the feedback log
    labels.forward(fb, body, codec)              # after POST /feedback accepted a label (admin.py)

The online trainer (services/trainer) joins `labels` with the apps' prediction log by request id,
and the apps logged the id the router forwarded upstream as x-request-id. The router's feedback
names a request by its feedback token (or by the client's own id, resolved to the token), so the
record's request id is the token's `nonce` claim: the id the router forwarded (the client's own
id when it sent one, else the one the router made up). Record format: services/kafka/labels.py,
with `source: "router"`.

Written once, by the replica that took the feedback call, when it accepted it (200, or 202 with
the feedback topic: the broker has the reward). Fire and forget (`BackgroundEmitter`): a full
buffer never fails the feedback call (the router's own learning is what the client asked for);
it is counted, `router_labels_forwarded_total{result="dropped"}`. An id the labels format refuses
(longer than 128 characters or outside A-Z a-z 0-9 . _ : -) is skipped and counted
(`result="skipped"`): the trainer could not use it anyway.
"""

from __future__ import annotations

import logging
from typing import Any

from services.kafka import labels as label_records
from services.kafka.emitter import BackgroundEmitter
from services.kafka.topics import SCORING_PARTITIONS, plain_topic
from services.router import metrics
from services.router.tokens import TokenCodec, TokenError, is_token

log = logging.getLogger("services.router")

SOURCE = "router"


def upstream_id(request_id: str, body: dict[str, Any], codec: TokenCodec) -> str | None:
    """The request id the router forwarded upstream for the decision `request_id` (the id feedback
    resolved: a token, whatever the body named it by); None if unknown."""
    if not is_token(request_id):
        return request_id  # an entry keyed by the forwarded id itself (a state file of an older router)
    try:
        return codec.verify(request_id).nonce
    except TokenError:
        # A token of this replica whose nonce a client chose with characters tokens cannot carry
        # (it still verified as a pending entry here, by its alias): the client's id is that nonce.
        given = body.get("request_id")
        return given if isinstance(given, str) and not is_token(given) else None


class LabelsOut:
    def __init__(self, bootstrap_servers: str, topic: str, *, buffer_size: int = 10_000,
                 emitter: BackgroundEmitter | None = None) -> None:
        self.topic = topic
        self.emitter = emitter or BackgroundEmitter(
            bootstrap_servers, name="router-labels", buffer_size=buffer_size,
            topics=[plain_topic(topic, SCORING_PARTITIONS)],
        )
        for result in ("buffered", "dropped", "skipped"):
            metrics.LABELS_FORWARDED.labels(result)  # visible at 0 from the start

    def start(self) -> None:
        self.emitter.start()

    def stop(self) -> None:
        self.emitter.close(2.0)

    def forward(self, request_id: str, body: dict[str, Any], codec: TokenCodec) -> str | None:
        """Offer the labels of accepted feedback (`body`, validated; `request_id` the decision it
        was applied to) to the topic; the outcome (buffered, dropped, skipped), or None when the
        feedback carried no label."""
        if "label" in body:
            truth = [body["label"]]
        elif "labels" in body:
            truth = list(body["labels"])
        else:
            return None  # a reward only: nothing the trainer learns from
        rid = upstream_id(request_id, body, codec)
        try:
            rid = label_records.check_request_id(rid)
        except label_records.BadLabel:
            result = "skipped"
            log.info("label not forwarded: its request id is not a labels-topic id",
                     extra={"request_id": str(rid)[:140], "topic": self.topic})
        else:
            offered = self.emitter.offer(self.topic, rid.encode(), label_records.encode(rid, truth, SOURCE))
            result = "buffered" if offered else "dropped"
        metrics.LABELS_FORWARDED.labels(result).inc()
        return result
