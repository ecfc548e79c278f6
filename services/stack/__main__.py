"""The local stack: run a pattern's services as background processes on 127.0.0.1.

    python -m services.stack up embedded     start, wait until ready, print and record the URLs
    python -m services.stack up bandit --replicas 3
                                             three router replicas sharing what they learn (Kafka)
    python -m services.stack status          what is running
    python -m services.stack down            stop exactly what `up` started
    python -m services.stack publish --model wine --version 2
                                             publish to the running stack's broker with its key

`up` writes `.run/endpoints.json` (machine-readable: pattern, endpoints, pids) and keeps logs in
`.run/logs/`. One stack runs at a time; `down` first to switch patterns.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from services.stack.paths import ENDPOINTS_FILE, SIGNING_KEY_FILE
from services.stack.patterns import PATTERNS
from services.stack.runner import down, status, up


def publish(args: list[str]) -> int:
    """`services.kafka.publisher` with the running stack's bootstrap servers and signing key."""
    from services.kafka import publisher

    if not ENDPOINTS_FILE.exists() or "kafka" not in json.loads(ENDPOINTS_FILE.read_text())["endpoints"]:
        print("no Kafka pattern is up: `make up PATTERN=model-as-data` first", file=sys.stderr)
        return 1
    os.environ.setdefault("KAFKA_BOOTSTRAP_SERVERS", json.loads(ENDPOINTS_FILE.read_text())["endpoints"]["kafka"])
    os.environ.setdefault("MODEL_SIGNING_KEY_FILE", str(SIGNING_KEY_FILE))
    return publisher.main(args)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.stack", description="local stack")
    sub = parser.add_subparsers(dest="cmd", required=True)
    p_up = sub.add_parser("up", help="start a pattern")
    p_up.add_argument("pattern", choices=sorted(PATTERNS))
    p_up.add_argument("--replicas", type=int, default=1,
                      help="router replicas of a routed pattern (>1: sharing a token key and a feedback topic)")
    sub.add_parser("down", help="stop the running stack")
    sub.add_parser("status", help="show the running stack")
    sub.add_parser("publish", help="publish a model version to the running stack (publisher arguments follow)",
                   add_help=False)
    args, rest = parser.parse_known_args(argv)
    if args.cmd == "publish":
        return publish(rest)
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    if args.cmd == "up":
        return up(args.pattern, args.replicas)
    return down() if args.cmd == "down" else status()


if __name__ == "__main__":
    sys.exit(main())
