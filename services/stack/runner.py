"""Start, record, show and stop a pattern's processes: what `make up`, `make status` and `make down` do."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from services.stack.kafka_broker import Broker
from services.stack.paths import ENDPOINTS_FILE, LOG_DIR, REPO_ROOT, RUN_DIR
from services.stack.patterns import PATTERNS
from services.stack.process import PatternStack, StartError, stop_pid
from services.stack.routed import ROUTED_PATTERNS


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False


def _stop_broker(state: dict) -> bool:
    """Stop the Kafka broker a pattern started (recorded as broker_data_dir); False if none."""
    if "broker_data_dir" not in state:
        return False
    Broker(state["broker_data_dir"]).stop()
    return True


def start_stack(pattern: str, log_dir: Path = LOG_DIR, replicas: int = 1) -> PatternStack:
    """Start a registered pattern's processes in order; on any failure stop what started and raise."""
    return start(PATTERNS[pattern](replicas=replicas) if replicas != 1 else PATTERNS[pattern](), log_dir)


def start(stack: PatternStack, log_dir: Path = LOG_DIR, ready_timeout_s: float = 60.0) -> PatternStack:
    """Start a stack's processes in order, each ready before the next; on any failure stop what
    started (and the broker the stack started) and raise."""
    started = []
    try:
        for proc in stack.processes:
            proc.start(log_dir)
            started.append(proc)
            print(f"  starting {proc.name} (pid {proc.pid}) ...", flush=True)
            proc.wait_ready(ready_timeout_s)
    except BaseException:
        stop(PatternStack(started, {}, stack.extra))
        raise
    return stack


def stop(stack: PatternStack) -> None:
    """Stop a stack started in this process: its processes in reverse order, then its broker."""
    for proc in reversed(stack.processes):
        proc.stop()
    _stop_broker(stack.extra)


def up(pattern: str, replicas: int = 1) -> int:
    if ENDPOINTS_FILE.exists():
        state = json.loads(ENDPOINTS_FILE.read_text())
        if any(_alive(p["pid"]) for p in state["processes"]):
            print(f"a stack is already up ({state['pattern']}); run `make down` first", file=sys.stderr)
            return 1
    t0 = time.perf_counter()
    if replicas != 1 and pattern not in ROUTED_PATTERNS:
        print(f"REPLICAS applies to the routed patterns ({', '.join(ROUTED_PATTERNS)}), not {pattern}",
              file=sys.stderr)
        return 1
    try:
        stack = start_stack(pattern, replicas=replicas)
    except (StartError, ValueError) as exc:
        print(f"could not start {pattern}: {exc}", file=sys.stderr)
        return 1
    RUN_DIR.mkdir(exist_ok=True)
    state = {
        "pattern": pattern,
        "endpoints": stack.endpoints,
        "processes": [{"name": p.name, "pid": p.pid, "log": str(p.log_path)} for p in stack.processes],
        **stack.extra,
    }
    ENDPOINTS_FILE.write_text(json.dumps(state, indent=2) + "\n")
    print(f"{pattern} is up in {time.perf_counter() - t0:.1f}s:")
    for name, url in stack.endpoints.items():
        print(f"  {name:<20} {url}")
    print(f"endpoints written to {ENDPOINTS_FILE.relative_to(REPO_ROOT)}; logs in {LOG_DIR.relative_to(REPO_ROOT)}/")
    return 0


def down() -> int:
    if not ENDPOINTS_FILE.exists():
        print("no stack is up")
        return 0
    state = json.loads(ENDPOINTS_FILE.read_text())
    for proc in reversed(state["processes"]):
        stop_pid(proc["pid"])
        print(f"  stopped {proc['name']} (pid {proc['pid']})")
    if _stop_broker(state):
        print(f"  stopped the Kafka broker ({state['broker_data_dir']})")
    ENDPOINTS_FILE.unlink()
    return 0


def status() -> int:
    if not ENDPOINTS_FILE.exists():
        print("no stack is up")
        return 0
    state = json.loads(ENDPOINTS_FILE.read_text())
    print(f"pattern: {state['pattern']}")
    for proc in state["processes"]:
        print(f"  {proc['name']:<16} pid {proc['pid']:<8} {'running' if _alive(proc['pid']) else 'EXITED'}")
    for name, url in state["endpoints"].items():
        print(f"  {name:<16} {url}")
    return 0
