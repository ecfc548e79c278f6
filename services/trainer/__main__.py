"""python -m services.trainer run | replay --card CARD [--out DIR] | bench-drift [--out reports]"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from services.core.logging import configure_logging
from services.core.settings import REPO_ROOT
from services.kafka.messages import SigningKeyError
from services.trainer.settings import TrainerSettings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.trainer",
                                     description="online trainer: labels joined with the prediction log -> "
                                                 "gated, signed model versions on the models topic")
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("run", help="recover the committed state and learn until SIGTERM (settings: TRAINER_*)")
    rp = sub.add_parser("replay", help="rebuild a candidate from the topics and offsets in its card")
    rp.add_argument("--card", type=Path, required=True, help="an online candidate's model-card.json")
    rp.add_argument("--out", type=Path, help="write the rebuilt candidate here (<out>/<model>/<version>/)")
    bp = sub.add_parser("bench-drift", help="concept-drift scenario: static vs online accuracy over time")
    bp.add_argument("--out", type=Path, default=REPO_ROOT / "reports", help="where online-learning.md + PNG go")
    bp.add_argument("--requests", type=int, default=6000, help="requests in the scenario (drift at half)")
    args = parser.parse_args(argv)

    settings = TrainerSettings()
    configure_logging("trainer", settings.log_level)
    logging.getLogger("kafka").setLevel(logging.WARNING)
    # Imported here: the trainer's modules pull in scikit-learn, which `--help` does not need.
    from services.trainer import service
    from services.trainer.kafka_io import TopicsError

    try:
        if args.cmd == "run":
            if settings.port:
                from prometheus_client import start_http_server
                start_http_server(settings.port, settings.host)
            service.run(settings)
            return 0
        if args.cmd == "replay":
            candidate, same = service.replay_card(settings, args.card, args.out)
            card = candidate.card
            print(f"replayed {card['name']} v{candidate.version} from {len(card['data']['lineage']['cycles'])} cycles, "
                  f"{card['training']['rows']} training rows: sha256 {card['sha256']} "
                  + ("== the card's: the same bytes" if same else "!= the card's: NOT the same bytes"))
            return 0 if same else 1
        from services.trainer import drift
        report = drift.main(args.out, requests=args.requests)
        print(f"wrote {report}")
        return 0
    except (service.TrainerError, TopicsError, SigningKeyError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
