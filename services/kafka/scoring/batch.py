"""One micro-batch of request records -> results and dead letters; no Kafka I/O here.

Each record is read (size, JSON object, request id), then the rows of every readable request
are validated together by the model's `InputContract.requests_to_array` and scored by one ONNX
Runtime call. A record that cannot be scored becomes a dead letter carrying the `ClientError`
that says why (its `code`, message and field go to the DLQ as they are).

`ScoringVersion.score` runs the same path for the lifecycle's integration check: the holdout
rows go in as a JSON request record, exactly as producers send them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import numpy as np
import orjson

from services.core.contract import InputContract, RangePolicy
from services.core.errors import ClientError, InvalidInput, PayloadTooLarge
from services.core.http import parse_json_object
from services.core.lifecycle import Version
from services.core.runtime import OnnxModel

MAX_REQUEST_ID = 200


@dataclass(frozen=True)
class Result:
    record: Any
    request_id: str
    labels: list[int]
    probabilities: list[list[float]]


@dataclass(frozen=True)
class DeadLetter:
    record: Any
    error: ClientError
    request_id: str | None


@dataclass(frozen=True)
class Scored:
    """What one micro-batch came to, and the version that computed it."""

    results: list[Result]
    dead: list[DeadLetter]
    rows: int
    model_name: str
    model_version: int


def read_request(record: Any, max_record_bytes: int) -> tuple[str, Any]:
    """(request id, instances) of one record, or the ClientError its dead letter carries."""
    value = record.value
    if not value:
        raise InvalidInput("record has no value; send a JSON object", field="body")
    if len(value) > max_record_bytes:
        raise PayloadTooLarge(f"record value is {len(value)} bytes; the limit is {max_record_bytes}", field="body")
    body = parse_json_object(value)
    request_id = body.get("request_id")
    if not isinstance(request_id, str) or not request_id or len(request_id) > MAX_REQUEST_ID:
        raise InvalidInput(f'"request_id" must be a non-empty string of at most {MAX_REQUEST_ID} characters',
                           field="request_id")
    return request_id, body.get("instances")


def score_records(records: list[Any], version: Version, max_record_bytes: int,
                  contract: InputContract | None = None) -> Scored:
    """Decode, validate (all rows at once) and score a micro-batch with `version` (leased by the caller),
    against `contract` (default: the version's)."""
    dead: list[DeadLetter] = []
    readable: list[Any] = []
    ids: list[str] = []
    requests: list[Any] = []
    for record in records:
        try:
            request_id, instances = read_request(record, max_record_bytes)
        except ClientError as exc:
            dead.append(DeadLetter(record, exc, None))
            continue
        readable.append(record)
        ids.append(request_id)
        requests.append(instances)
    x, kept, errors = (contract or version.contract).requests_to_array(requests)
    for i, exc in errors.items():
        dead.append(DeadLetter(readable[i], exc, ids[i]))
    results: list[Result] = []
    if kept:
        p = version.model.predict_sync(x)
        labels = p.labels.tolist()
        # float32 -> shortest decimal that reads back as the same float32 (as orjson prints numpy float32)
        proba = orjson.loads(orjson.dumps(p.probabilities, option=orjson.OPT_SERIALIZE_NUMPY))
        start = 0
        for i in kept:
            end = start + len(requests[i])
            results.append(Result(readable[i], ids[i], labels[start:end], proba[start:end]))
            start = end
    return Scored(results, dead, len(x), version.name, version.version)


class ScoringVersion(Version):
    """A model version as the worker serves it; its input path is the request-record path."""

    def __init__(self, model: OnnxModel, contract: InputContract, max_record_bytes: int) -> None:
        super().__init__(model, contract)
        self.max_record_bytes = max_record_bytes
        # The integration check leaves the range policy out (see services/core/lifecycle.py).
        self._check_contract = InputContract(model.card, max_batch_size=contract.max_batch_size,
                                             range_policy=RangePolicy.OFF)

    @classmethod
    def builder(cls, *, max_batch_size: int, range_policy: RangePolicy, range_margin: float,
                max_record_bytes: int) -> Callable[[OnnxModel], ScoringVersion]:
        def build(model: OnnxModel) -> ScoringVersion:
            contract = InputContract(model.card, max_batch_size=max_batch_size, range_policy=range_policy,
                                     range_margin=range_margin)
            return cls(model, contract, max_record_bytes)

        return build

    async def score(self, instances: list[dict[str, float]]) -> np.ndarray:
        value = orjson.dumps({"request_id": "holdout", "instances": instances})
        record = SimpleNamespace(topic="holdout", partition=0, offset=0, timestamp=0, key=None, value=value)
        scored = score_records([record], self, self.max_record_bytes, self._check_contract)
        if scored.dead:
            raise scored.dead[0].error
        return np.asarray(scored.results[0].labels)
