"""Prometheus's `promtool`, built from the Go module proxy into `.cache/bin` (needs Go >= 1.24).

    python -m services.stack.promtool fetch      build it once (about 5 minutes on 2 cores, cold module cache)
    python -m services.stack.promtool path       print the binary's path, exit 1 when it is not built

The tests use it to check that every service's /metrics passes `promtool check metrics`; when
it is not built the promtool test fails and says how to build it (`make test` builds it first).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from services.stack.paths import CACHE_DIR

MODULE = "github.com/prometheus/prometheus/cmd/promtool"
VERSION = "v0.316.0"  # Prometheus 3.x; the Go module of prometheus/prometheus is versioned v0.3xx
BIN_DIR = CACHE_DIR / "bin"
BINARY = BIN_DIR / "promtool"


def path() -> Path | None:
    return BINARY if BINARY.is_file() and os.access(BINARY, os.X_OK) else None


def fetch() -> Path:
    if path() is not None:
        return BINARY
    go = shutil.which("go")
    if go is None:
        raise RuntimeError("building promtool needs the Go toolchain (`go` on PATH)")
    BIN_DIR.mkdir(parents=True, exist_ok=True)
    print(f"building promtool {VERSION} with `go install` into {BIN_DIR} (minutes on a cold module cache)",
          file=sys.stderr, flush=True)
    env = {**os.environ, "GOBIN": str(BIN_DIR), "GOFLAGS": "-buildvcs=false"}
    subprocess.run([go, "install", f"{MODULE}@{VERSION}"], check=True, env=env)
    return BINARY


def check_metrics(text: str | bytes) -> subprocess.CompletedProcess:
    """Run `promtool check metrics` on an exposition; returncode 0 means accepted."""
    binary = path()
    if binary is None:
        raise FileNotFoundError("promtool is not built: run `python -m services.stack.promtool fetch`")
    data = text.encode() if isinstance(text, str) else text
    return subprocess.run([str(binary), "check", "metrics"], input=data, capture_output=True, timeout=60)


def main(argv: list[str]) -> int:
    cmd = argv[0] if argv else "path"
    if cmd == "fetch":
        print(fetch())
        return 0
    if cmd == "path":
        found = path()
        print(found or "promtool is not built: run `python -m services.stack.promtool fetch`")
        return 0 if found else 1
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
