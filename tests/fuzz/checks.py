"""The fuzz properties, shared by every target, and the tally `make fuzz` prints.

A client's input may be refused, never answered as a server fault:
  REST: no 5xx except 503 *with* Retry-After (overload); every 4xx/5xx body is a JSON object whose
        "error" is a non-empty string.
  gRPC: no UNKNOWN / INTERNAL (or any code a client cannot have caused); RESOURCE_EXHAUSTED ("too big")
        is allowed; every error's details are a clean message (no Python class names, no traceback).
And over a whole run: the server's peak RSS (VmHWM) grows by less than FUZZ_RSS_GROWTH_MIB, and a
valid request still succeeds afterwards (ServerGuard).
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc
import httpx
from hypothesis import HealthCheck, settings

TALLY: dict[str, Counter] = defaultdict(Counter)
EXPLORE = os.environ.get("FUZZ_EXPLORE") == "1"
"""FUZZ_EXPLORE=1: record every violated property (first input per kind) instead of stopping at the first."""
FINDINGS: dict[str, str] = {}
"""target -> outcome (HTTP status or gRPC code name) -> cases; printed at the end of the session."""

BASE_EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "25"))
"""Examples per property in `make test` (small); `make fuzz` multiplies it by 20."""
RSS_GROWTH_MIB = float(os.environ.get("FUZZ_RSS_GROWTH_MIB", "150"))
"""Largest allowed growth of a server's peak RSS over one property's run. The largest legal request
here is a few MiB (4 MiB gRPC message, 256 rows), so a case that allocates from a client's declared
shape (the 1 GiB splat tensor) shows as hundreds of MiB."""


def fuzz_settings(weight: float = 1.0) -> settings:
    """Seeded (derandomize: the same cases every run) and bounded by FUZZ_EXAMPLES."""
    return settings(max_examples=max(1, int(BASE_EXAMPLES * weight)), derandomize=True, deadline=None,
                    database=None, suppress_health_check=list(HealthCheck), print_blob=True)


def _explorable(check: Callable[..., Any]) -> Callable[..., Any]:
    def wrapper(target: str, *args: Any) -> Any:
        try:
            return check(target, *args)
        except AssertionError as exc:
            if not EXPLORE:
                raise
            kind = f"{target}: " + re.sub(r"\d+", "N", str(exc).split(" for ")[0].split("->")[-1][:70])
            FINDINGS.setdefault(kind, str(exc)[:600])
            return None

    return wrapper


KNOWN_FINDINGS: dict[str, Callable[[httpx.Response], bool]] = {
    # name -> does this response show it. Each has a strict-xfail regression in test_findings.py: when its
    # owner fixes it, that test XPASSes (and fails), and the entry here is deleted with it.
}


@_explorable
def check_http(target: str, r: httpx.Response) -> None:
    for name, shows in KNOWN_FINDINGS.items():
        if shows(r):
            TALLY[target][f"known: {name}"] += 1
            return
    TALLY[target][f"HTTP {r.status_code}"] += 1
    where = f"{r.request.method} {str(r.request.url)[:200]} body={r.request.content[:200]!r}"
    assert r.status_code < 500 or (r.status_code == 503 and "retry-after" in r.headers), (
        f"server error for client input: {where} -> {r.status_code} {r.text[:300]!r}")
    if r.status_code >= 400:
        try:
            body = json.loads(r.content)
        except ValueError:
            raise AssertionError(f"{where} -> {r.status_code} body is not JSON: {r.text[:300]!r}") from None
        assert isinstance(body, dict) and isinstance(body.get("error"), str) and body["error"], (
            f"{where} -> {r.status_code} JSON without an error message: {r.text[:300]!r}")


ALLOWED_GRPC = {
    grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.OUT_OF_RANGE,
    grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED,
}
"""Codes a client's own input may earn. UNAVAILABLE is not here: a client's request must never make the
server (or a router's variants) unavailable."""
_DIRTY = ("<class ", "Traceback", 'File "', "Error:", "Exception")


@_explorable
def check_grpc(target: str, call: Callable[[], Any], request: Any) -> grpc.StatusCode:
    """Run one call; assert the outcome is a client-caused code with a clean message."""
    try:
        call()
        code, details = grpc.StatusCode.OK, ""
    except grpc.RpcError as exc:
        code, details = exc.code(), exc.details() or ""
    TALLY[target][code.name] += 1
    shown = request if isinstance(request, bytes) and len(request) < 300 else repr(request)[:300]
    assert code in ALLOWED_GRPC, f"{code.name} {details[:300]!r} for {shown!r}"
    if code is not grpc.StatusCode.OK:
        assert details.strip(), f"{code.name} without a message for {shown!r}"
        assert not any(word in details for word in _DIRTY), f"{code.name} leaks internals {details[:300]!r}"
    return code


def peak_rss_mib(pid: int) -> float:
    """VmHWM (peak resident set) of a process: catches a transient allocation a sample of RSS would miss."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmHWM for pid {pid}")


@dataclass
class ServerGuard:
    """Around one property's run: peak RSS bounded, the process alive and still answering a valid request."""

    name: str
    pid: int
    still_serves: Callable[[], None]

    def __enter__(self) -> ServerGuard:
        self._before = peak_rss_mib(self.pid)
        return self

    def __exit__(self, exc_type, *_: Any) -> None:
        after = peak_rss_mib(self.pid)
        TALLY[f"{self.name} peak RSS MiB"]["max growth"] = max(
            TALLY[f"{self.name} peak RSS MiB"]["max growth"], round(after - self._before))
        if exc_type is not None:
            return
        assert after - self._before < RSS_GROWTH_MIB, (
            f"{self.name}: peak RSS grew {after - self._before:.0f} MiB ({self._before:.0f} -> {after:.0f})")
        self.still_serves()
