"""Publish a model version from the repository to the compacted `models` topic.

    python -m services.kafka.publisher --model wine --version 2      publish (and so roll forward)
    python -m services.kafka.publisher --model wine --version 1 --rollback   an older one: the rollback
    python -m services.kafka.publisher --model wine                  the newest version that passed its gate
    python -m services.kafka.publisher --list                        the latest message per model on the topic

The message (see `messages.py`) carries the ONNX bytes, the model card, the holdout set, their
sha256 and an HMAC-SHA256 signature; it is keyed by model name, so compaction keeps the latest per model and
every subscribed app swaps to whatever was published last. Each publication carries a release
sequence newer than any on the topic for that model (messages.py "Releases and rollbacks"), so
a re-sent old record is refused by the apps; publishing a version older than the newest on the
topic needs `--rollback`, which marks the (signed) message as an explicit rollback. The topic is created on first use
with `cleanup.policy=compact` and a 16 MiB `max.message.bytes`.

Versions whose card says they failed the quality gate (the v3 demo material) are refused unless
`--allow-failed-gate` is given. The repository copy is checked before sending (sha256 of the
ONNX bytes against the card), so a broken artifact never reaches the topic from here.

Where things come from: `--bootstrap-servers`, else `$KAFKA_BOOTSTRAP_SERVERS`; the signing key as
described in `messages.py` (`--key-file`, `$MODEL_SIGNING_KEY`, `$MODEL_SIGNING_KEY_FILE`). Against the
local stack, `python -m services.stack publish --model wine --version 2` fills both in from
`.run/endpoints.json`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from services.core.errors import ServingError
from services.core.lifecycle import HOLDOUT_FILE
from services.core.repository import passed_gate, version_dir
from services.core.runtime import CARD_FILE, MODEL_FILE
from services.core.settings import DEFAULT_MODEL_REPOSITORY
from services.kafka import messages
from services.kafka.topics import (
    ENV_BOOTSTRAP,
    MAX_MESSAGE_BYTES,
    MODEL_FETCH_BYTES,
    MODELS,
    ensure_topics,
    models_topic,
)


class PublishError(RuntimeError):
    pass


@dataclass(frozen=True)
class Published:
    model_name: str
    model_version: int
    sha256: str
    size: int
    topic: str
    partition: int
    offset: int
    key_id: str
    release: int = 0
    rollback: bool = False
    note: str = ""

    def describe(self) -> str:
        return (
            f"published {self.model_name} v{self.model_version}{' (rollback)' if self.rollback else ''} to "
            f"{self.topic} (partition {self.partition}, offset {self.offset}, release {self.release}): "
            f"{self.size:,} bytes, sha256 {self.sha256[:16]}..., signed hmac-sha256 with key id {self.key_id}"
            + (f"; note: {self.note}" if self.note else "")
        )


def load_artifact(repo: Path, model: str, version: int | None, allow_failed_gate: bool = False
                  ) -> tuple[dict[str, Any], bytes, bytes]:
    """The card (as JSON), ONNX bytes and holdout CSV of a repository version, checked before they are sent."""
    path = version_dir(repo, model, version)
    if not allow_failed_gate and not passed_gate(repo, model, int(path.name)):
        raise PublishError(
            f"{model} v{path.name} failed its quality gate (demo material); "
            "pass --allow-failed-gate to publish it anyway"
        )
    card = json.loads((path / CARD_FILE).read_text())
    onnx_bytes = (path / MODEL_FILE).read_bytes()
    actual = hashlib.sha256(onnx_bytes).hexdigest()
    if actual != card.get("sha256"):
        raise PublishError(f"{path}: sha256 of model.onnx is {actual}, the card says {card.get('sha256')}; not sent")
    try:
        holdout_csv = (path / HOLDOUT_FILE).read_bytes()
    except FileNotFoundError as exc:
        raise PublishError(f"{path}: no {HOLDOUT_FILE}; consumers refuse a model without its holdout set") from exc
    return card, onnx_bytes, holdout_csv


def make_producer(bootstrap_servers: str) -> KafkaProducer:
    return KafkaProducer(
        bootstrap_servers=bootstrap_servers,
        client_id="model-publisher",
        acks="all",
        max_request_size=MAX_MESSAGE_BYTES,
        request_timeout_ms=30000,
        max_block_ms=30000,
    )


def send(producer: KafkaProducer, topic: str, key: str, value: bytes, timeout_s: float = 60.0):
    """Send one model message and wait for the broker's acknowledgement; returns its RecordMetadata."""
    return producer.send(topic, key=key.encode(), value=value).get(timeout=timeout_s)


def publish(
    bootstrap_servers: str,
    model: str,
    version: int | None = None,
    *,
    repo: Path = DEFAULT_MODEL_REPOSITORY,
    key: bytes | None = None,
    topic: str = MODELS,
    allow_failed_gate: bool = False,
    rollback: bool = False,
    producer: KafkaProducer | None = None,
) -> Published:
    """Publish a repository version; creates the topic if needed. Returns where it landed."""
    card, onnx_bytes, holdout_csv = load_artifact(repo, model, version, allow_failed_gate)
    return publish_artifact(bootstrap_servers, card, onnx_bytes, holdout_csv, key=key, topic=topic,
                            rollback=rollback, producer=producer)


def newest_on_topic(bootstrap_servers: str, topic: str, model: str) -> tuple[int, int] | None:
    """(release, version) of the newest-release record for `model` on the topic (headers unverified:
    only to pick the next release number and to notice a rollback), or None."""
    newest = None
    for entry in latest_messages(bootstrap_servers, topic, key=None, all_records=True):
        if entry.get("key") == model and isinstance(entry.get("release"), int):
            if newest is None or entry["release"] > newest[0]:
                newest = (entry["release"], entry.get("model_version"))
    return newest


def publish_artifact(
    bootstrap_servers: str,
    card: dict[str, Any],
    onnx_bytes: bytes,
    holdout_csv: bytes,
    *,
    key: bytes | None = None,
    topic: str = MODELS,
    rollback: bool = False,
    producer: KafkaProducer | None = None,
) -> Published:
    """Sign and send one artifact with the next release number.

    A version older than the newest on the topic without `rollback` is still sent (an app that
    starts afresh takes it: the newest release wins), but apps serving the newer version refuse it
    as a `downgrade`; `Published.note` says so."""
    key = key if key is not None else messages.load_signing_key()
    ensure_topics(bootstrap_servers, [models_topic(topic)])
    newest = newest_on_topic(bootstrap_servers, topic, card["name"])
    note = ""
    if newest is not None and isinstance(newest[1], int) and card["version"] < newest[1] and not rollback:
        note = (f"v{card['version']} is older than v{newest[1]}, the newest on {topic}, and not marked as a rollback: "
                "apps serving a newer version refuse it (downgrade); publish with --rollback to roll them back")
    release = max(messages.now_release(), (newest[0] + 1) if newest else 0)
    value = messages.encode(card, onnx_bytes, holdout_csv, key, release=release, rollback=rollback)
    own = producer is None
    producer = producer or make_producer(bootstrap_servers)
    try:
        meta = send(producer, topic, card["name"], value)
    finally:
        if own:
            producer.close(timeout=10)
    return Published(card["name"], card["version"], card["sha256"], len(value), topic, meta.partition,
                     meta.offset, messages.key_id(key), release, rollback, note)


def latest_messages(bootstrap_servers: str, topic: str = MODELS, key: bytes | None = None,
                    all_records: bool = False) -> list[dict[str, Any]]:
    """The latest record per key on the topic (every record with `all_records`), read from the
    beginning to the end offsets; each with the header, where it is, and whether it verifies with
    `key` (None: not checked)."""
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap_servers, group_id=None, enable_auto_commit=False,
        max_partition_fetch_bytes=MODEL_FETCH_BYTES, fetch_max_bytes=MODEL_FETCH_BYTES,
    )
    try:
        partitions = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        if not tps:
            return []
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        ends = consumer.end_offsets(tps)
        latest: dict[bytes | None, Any] = {}
        for _ in range(120):  # bounded: a broker that went away ends the listing, not the wait
            if all(consumer.position(tp) >= ends[tp] for tp in tps):
                break
            for batch in consumer.poll(timeout_ms=1000).values():
                for r in batch:
                    latest[(r.key, r.offset) if all_records else r.key] = r
        out = []
        for _, r in sorted(latest.items(), key=lambda kv: (kv[1].key or b"", kv[1].offset)):
            k = r.key
            entry: dict[str, Any] = {"key": k.decode(errors="replace") if k else None, "partition": r.partition,
                                     "offset": r.offset, "timestamp_ms": r.timestamp}
            try:
                h = messages.read_header(r.value)
                entry.update({f: h.get(f) for f in ("model_name", "model_version", "sha256", "onnx_size", "key_id",
                                                    "published_at", "publisher", "release", "rollback")})
                if key is not None:
                    messages.decode(r.value, key, record_key=entry["key"])
                    entry["verified"] = True
            except ServingError as exc:
                entry["verified"] = False
                entry["problem"] = f"{exc.code}: {exc.message}"
            out.append(entry)
        return out
    finally:
        consumer.close()


def resolve_bootstrap(explicit: str | None) -> str:
    if explicit:
        return explicit
    if os.environ.get(ENV_BOOTSTRAP):
        return os.environ[ENV_BOOTSTRAP]
    raise PublishError(
        f"no Kafka broker: pass --bootstrap-servers or set ${ENV_BOOTSTRAP} "
        "(for the local stack: `python -m services.stack publish ...`)"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.kafka.publisher",
                                     description="publish a model version to the compacted models topic")
    parser.add_argument("--model", help="model name in the repository (the record key)")
    parser.add_argument("--version", type=int, help="version; default: the newest that passed its gate")
    parser.add_argument("--list", action="store_true", help="show the latest message per model on the topic")
    parser.add_argument("--repository", type=Path, default=DEFAULT_MODEL_REPOSITORY, help="model repository")
    parser.add_argument("--topic", default=MODELS, help="models topic (default: %(default)s)")
    parser.add_argument("--bootstrap-servers", help=f"Kafka bootstrap servers (default: ${ENV_BOOTSTRAP})")
    parser.add_argument("--key-file", type=Path, help="file holding the HMAC signing key")
    parser.add_argument("--allow-failed-gate", action="store_true",
                        help="publish a version whose card says it failed the quality gate")
    parser.add_argument("--rollback", action="store_true",
                        help="publish a version older than the newest on the topic as an explicit rollback")
    args = parser.parse_args(argv)
    if not args.list and not args.model:
        parser.error("--model is required (or --list)")
    try:
        bootstrap = resolve_bootstrap(args.bootstrap_servers)
        key = messages.load_signing_key(args.key_file)
        if args.list:
            for entry in latest_messages(bootstrap, args.topic, key):
                print(json.dumps(entry))
            return 0
        result = publish(bootstrap, args.model, args.version, repo=args.repository, key=key, topic=args.topic,
                         allow_failed_gate=args.allow_failed_gate, rollback=args.rollback)
    except (PublishError, messages.SigningKeyError, ServingError) as exc:
        print(f"error: {getattr(exc, 'message', exc)}", file=sys.stderr)
        return 1
    except Exception as exc:  # broker errors from kafka-python: say what, not a trace
        print(f"error: could not publish: {exc!r}", file=sys.stderr)
        return 2
    print(result.describe())
    print(f"bootstrap servers {bootstrap}; every app subscribed to {args.topic!r} for "
          f"{result.model_name!r} now swaps to v{result.model_version}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
