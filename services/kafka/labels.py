"""The `labels` topic's record: the true label(s) of an answered request, keyed by its request id.

Written by the apps' `POST /feedback` (services/apps/feedback.py) and by the router's (with
ROUTER_LABELS_TOPIC: services/router/labels_out.py, keyed by the id it forwarded upstream,
`"source": "router"`), read by the online trainer
(services/trainer), which joins it with the prediction log (`predictions`, inputs enabled) by
request id. Value, schema 1 (JSON):

    {"schema": 1, "request_id": "4f1c...", "labels": [1], "source": "streaming", "ts": 1735689600.1}

`labels` has one entry per row of the answered request (a single-row request: one). The apps
check what they can before writing (types, the model's classes, sizes); the trainer checks every
record again (anyone with topic access can write one) and sends what it cannot use to the
`labels-dlq` topic with the reason (`parse_label` raises `BadLabel` naming it).
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Any

import orjson

SCHEMA = 1
MAX_REQUEST_ID = 128
MAX_ROWS = 256
REQUEST_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")


class BadLabel(ValueError):
    """A label record the trainer cannot use; `reason` is the DLQ reason, the message says why."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class Label:
    request_id: str
    labels: tuple[int, ...]


def check_request_id(value: Any) -> str:
    if not isinstance(value, str) or not REQUEST_ID.fullmatch(value):
        raise BadLabel("malformed", f"request_id must be 1-{MAX_REQUEST_ID} characters of A-Z a-z 0-9 . _ : -")
    return value


def check_labels(value: Any, n_classes: int | None) -> tuple[int, ...]:
    if not isinstance(value, list) or not 1 <= len(value) <= MAX_ROWS:
        raise BadLabel("malformed", f"labels must be a list of 1-{MAX_ROWS} class indices")
    for i, v in enumerate(value):
        if not isinstance(v, int) or isinstance(v, bool) or v < 0 or (n_classes is not None and v >= n_classes):
            bound = f"0..{n_classes - 1}" if n_classes is not None else ">= 0"
            raise BadLabel("malformed", f"labels[{i}] = {v!r} is not a class index ({bound})")
    return tuple(value)


def encode(request_id: str, labels: list[int] | tuple[int, ...], source: str) -> bytes:
    return orjson.dumps({"schema": SCHEMA, "request_id": request_id, "labels": list(labels), "source": source,
                         "ts": round(time.time(), 3)})


def parse_label(key: bytes | None, value: bytes | None, n_classes: int) -> Label:
    """A checked label from a `labels` record, or BadLabel(reason="malformed", why)."""
    try:
        body = orjson.loads(value or b"")
    except orjson.JSONDecodeError as exc:
        raise BadLabel("malformed", f"value is not JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise BadLabel("malformed", "value is not a JSON object")
    if body.get("schema") != SCHEMA:
        raise BadLabel("malformed", f"schema {body.get('schema')!r} is unknown (this reader knows {SCHEMA})")
    request_id = check_request_id(body.get("request_id"))
    if key is not None and key.decode(errors="replace") != request_id:
        raise BadLabel("malformed", f"record key {key[:64]!r} differs from request_id {request_id!r}")
    return Label(request_id, check_labels(body.get("labels"), n_classes))
