"""Where the local stack keeps things: run state inside the checkout, build caches outside it.

`.run/` (ignored by git) holds what one running stack owns: endpoints, logs, keys, the broker's
data. Caches of fetched or built tools (the Kafka jars, promtool) live in
`$SERVING_PATTERNS_CACHE`, default `$XDG_CACHE_HOME/serving-patterns` (`~/.cache/serving-patterns`),
so a fresh clone on the same machine reuses them.
"""

from __future__ import annotations

import os
from pathlib import Path

from services.core.settings import REPO_ROOT
from services.kafka.topics import ENV_BOOTSTRAP

__all__ = ["CACHE_DIR", "DEMO_LOG_DIR", "ENDPOINTS_FILE", "ENV_BOOTSTRAP", "LOG_DIR", "REPO_ROOT", "RUN_DIR",
           "SIGNING_KEY_FILE"]

RUN_DIR = REPO_ROOT / ".run"
ENDPOINTS_FILE = RUN_DIR / "endpoints.json"
LOG_DIR = RUN_DIR / "logs"
DEMO_LOG_DIR = RUN_DIR / "demo-logs"
SIGNING_KEY_FILE = RUN_DIR / "model-signing.key"
CACHE_DIR = Path(
    os.environ.get("SERVING_PATTERNS_CACHE")
    or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "serving-patterns"
)
