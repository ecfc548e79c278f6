"""The input tap: a bounded, per-variant sample of the inputs the router answered, for drift checks.

    dispatcher.tap.offer(variant, request)     every answered request (hot path: a sampling draw and
                                               a deque append of the body bytes; nothing parsed)
    GET /admin/inputs[?variant=&limit=]        the sample, parsed into rows (admin token)

Off by default (``ROUTER_INPUT_TAP_ROWS=0``: ``offer`` returns at once). On, each variant keeps
the request bodies of its last ``rows`` sampled requests (a ring: memory is bounded by ``rows``
times ``MAX_BODY_BYTES`` per variant; bigger bodies are counted and skipped). Bodies are parsed
only when the sample is read (the supervisor, once per check): KServe V2 JSON, the first input
tensor, one row per ``shape[0]``. Only REST requests carry a body here; gRPC requests are not
tapped (counted as ``not_tapped``).

The supervisor compares these rows with the training distribution in the model card
(population stability index per feature, ``services/supervisor/drift.py``).
"""

from __future__ import annotations

import random
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import orjson

MAX_BODY_BYTES = 65_536
"""Bodies larger than this are not kept (a batch of thousands of rows would crowd out the sample)."""


@dataclass
class _VariantSample:
    bodies: deque[bytes]
    seen: int = 0
    sampled: int = 0
    too_big: int = 0
    not_tapped: int = 0


@dataclass
class InputTap:
    """Per-variant ring buffers of sampled request bodies."""

    rows: int = 0
    """Requests kept per variant (0: the tap is off)."""
    sample_rate: float = 1.0
    """Share of answered requests offered to the sample."""
    _variants: dict[str, _VariantSample] = field(default_factory=dict)

    @property
    def enabled(self) -> bool:
        return self.rows > 0

    def offer(self, variant: str, request: Any) -> None:
        """Keep `request`'s body in `variant`'s sample (maybe). Never raises, never parses."""
        if self.rows <= 0:
            return
        sample = self._variants.get(variant)
        if sample is None:
            sample = self._variants[variant] = _VariantSample(deque(maxlen=self.rows))
        sample.seen += 1
        if self.sample_rate < 1.0 and random.random() >= self.sample_rate:
            return
        body = getattr(request, "body", None)
        if not isinstance(body, bytes):
            sample.not_tapped += 1
            return
        if len(body) > MAX_BODY_BYTES:
            sample.too_big += 1
            return
        sample.sampled += 1
        sample.bodies.append(body)

    def read(self, variant: str | None = None, limit: int | None = None) -> dict[str, Any]:
        """The sample as rows per variant (newest last), with counts; `limit` rows per variant."""
        out: dict[str, Any] = {}
        for name, sample in self._variants.items():
            if variant is not None and name != variant:
                continue
            rows: list[list[float]] = []
            unreadable = 0
            for body in list(sample.bodies):
                got = rows_of(body)
                if got is None:
                    unreadable += 1
                else:
                    rows.extend(got)
            if limit is not None:
                rows = rows[-limit:]
            out[name] = {"rows": rows, "requests_seen": sample.seen, "requests_sampled": sample.sampled,
                         "requests_kept": len(sample.bodies), "unreadable": unreadable, "too_big": sample.too_big,
                         "not_tapped": sample.not_tapped}
        return {"enabled": self.enabled, "capacity": self.rows, "sample_rate": self.sample_rate,
                "observed_at": time.time(), "variants": out}


def rows_of(body: bytes) -> list[list[float]] | None:
    """The rows of a KServe V2 JSON body's first input tensor; None when it is not one."""
    try:
        doc = orjson.loads(body)
        tensor = doc["inputs"][0]
        shape, data = tensor["shape"], tensor["data"]
        flat: list[Any] = []
        stack = [data]
        while stack:  # data may be flat or nested as the shape
            item = stack.pop()
            if isinstance(item, list):
                stack.extend(reversed(item))
            else:
                flat.append(item)
        n = int(shape[0]) if shape else 1
        if n <= 0 or len(flat) % n:
            return None
        width = len(flat) // n
        values = [float(v) for v in flat]
        return [values[i * width:(i + 1) * width] for i in range(n)]
    except (orjson.JSONDecodeError, KeyError, IndexError, TypeError, ValueError):
        return None
