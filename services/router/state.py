"""The router's state file: what a restart must not lose, written atomically.

    {
      "format": 1,
      "saved_at": 1764000000.0,
      "config": {"version": 7, "hash": "...", "source": "admin", "text": "<yaml>", "file_hash": "..."},
      "policy": {<policy.state(): bandit arms, A/B counts, canary weights>},
      "policy_epoch": 3,
      "feedback": {"pending": [...], "tombstones": [...], "settled": [...]}
    }

Writes go to a temporary file in the same directory, are fsynced, then renamed over the old file,
so a crash leaves either the old or the new state, never half of one. A file that cannot be
parsed is moved aside (`<name>.corrupt-<time>`) and logged, and the router starts fresh rather
than not at all.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import orjson

from services.core.files import atomic_write

log = logging.getLogger(__name__)
FORMAT = 1


class StateFile:
    def __init__(self, path: Path | None) -> None:
        self.path = path

    @property
    def enabled(self) -> bool:
        return self.path is not None

    def load(self) -> dict[str, Any] | None:
        if self.path is None or not self.path.exists():
            return None
        try:
            data = orjson.loads(self.path.read_bytes())
            if not isinstance(data, dict):
                raise ValueError(f"expected a JSON object, got {type(data).__name__}")
            if data.get("format") != FORMAT:
                raise ValueError(f"unsupported format {data.get('format')!r}, expected {FORMAT}")
            return data
        except (OSError, ValueError) as exc:
            aside = self.path.with_name(f"{self.path.name}.corrupt-{int(time.time())}")
            try:
                os.replace(self.path, aside)
            except OSError:
                aside = self.path
            log.error("router state file unreadable; starting fresh",
                      extra={"path": str(self.path), "moved_to": str(aside), "error": str(exc)})
            return None

    def save(self, state: dict[str, Any]) -> None:
        if self.path is None:
            return
        payload = {"format": FORMAT, "saved_at": time.time(), **state}
        atomic_write(self.path, orjson.dumps(payload, option=orjson.OPT_INDENT_2))
