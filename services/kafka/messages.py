"""The `models` topic's message: one model version as data, signed and checksummed.

Record key: the model name (UTF-8). The topic is compacted, so the latest message per model
name survives; publishing an older version again makes it the latest (that is the rollback).
A record with an empty value (a tombstone) withdraws nothing from a running app: it is logged
and skipped.

Record value, format version 2 (binary framing; the ONNX and CSV bytes are carried raw, not base64):

    offset      size          field
    0           4             magic b"SPMD" ("serving-patterns model data")
    4           1             format version, 2
    5           32            HMAC-SHA256 tag over bytes[0:5] + bytes[37:] (everything but the tag itself)
    37          4             header length N, unsigned big-endian
    41          N             header: UTF-8 JSON object (below)
    41+N        onnx_size     the ONNX model bytes
    41+N+onnx   holdout_size  the holdout set, CSV (`holdout.csv` of the repository version)

    header = {
      "schema": 3,                      # header schema version; readers refuse unknown ones (2: no release)
      "model_name": "wine",             # equals the record key and card.name
      "model_version": 2,               # equals card.version
      "sha256": "<hex>",                # sha256 of the ONNX bytes; equals card.sha256
      "onnx_size": 53459,               # length of the ONNX bytes
      "holdout_sha256": "<hex>",        # sha256 of the holdout CSV bytes
      "holdout_size": 14012,            # length of the holdout CSV bytes
      "card": {...},                    # model-card.json as published (the contract)
      "key_id": "<16 hex>",             # which signing key made the tag (not secret; see key_id())
      "signature_alg": "hmac-sha256",
      "published_at": "2025-01-01T00:00:00Z",
      "publisher": "user@host",
      "release": 1735689600123456,      # release sequence: grows with every publication of this model
      "rollback": false                 # true: an explicit rollback to an older version (see below)
    }

Releases and rollbacks (issue #11: a re-sent old record must not roll an app back): the release
sequence sits inside the signed header, so it cannot be altered without the key. A consumer
refuses a message whose release is not newer than the one it serves (`replay`: someone re-sent
an old record), and a newer release naming an older version unless the header says
`"rollback": true` (`downgrade`). A rollback is therefore a *new*, signed publication of the
old version (`publisher --version 1 --rollback`); re-sending yesterday's bytes is not one. The
publisher picks max(now in microseconds, the newest release on the topic + 1), so releases grow
even when publishers' clocks disagree. Consumers also refuse a version whose card says it failed
its quality gate (`gate`), unless they are configured to take demo material.

The holdout set travels with the model so every consumer can run the integration check before
it swaps (services/core/lifecycle.py: the holdout scored through the consumer's own input path
against the card's claimed accuracy). The tag covers it like every other byte, and its sha256
is checked like the model's.

Format version 1 (no holdout set) is refused as `malformed`, naming the reason: without the
holdout set the integration check cannot run, so such a version could never be accepted
anyway. Republish it with the current publisher.

Why this shape: the tag covers the exact bytes on the wire, so there is no JSON
canonicalisation to get wrong, and the receiver checks it before parsing anything but the fixed
framing. Nothing is unpickled, ever: the header is JSON, the model is ONNX bytes that ONNX
Runtime parses, the holdout set is CSV.

Signing: HMAC-SHA256 with a shared secret (stdlib only; every publisher and every consuming app
holds the same key, from a Kubernetes Secret in a cluster). Where the key is found, first hit
wins: an explicit key file (`signing_key_file` settings / `--key-file`), `$MODEL_SIGNING_KEY`
(the key itself), `$MODEL_SIGNING_KEY_FILE` (a file holding it; the local stack points it at
`.run/model-signing.key`, which `make up` creates with 32 random bytes). Keys shorter than 16
bytes are refused. Anyone holding the key can publish; if publishers and consumers must be
separated (consumers unable to sign), switch to Ed25519 public-key signatures: the framing
keeps its place for a 64-byte signature under a new format version.

Verification order, each failure an `ArtifactError` whose `code` is the reason recorded:
    malformed  framing, format version, header JSON, or header fields wrong (`Malformed`)
    signature  tag does not verify: tampered bytes, or signed with another key, which the key
               ids name (`SignatureMismatch`)
    checksum   sha256 of the ONNX bytes differs from the header's or the card's, or the holdout
               set's from the header's (`ChecksumMismatch`)
    name       card name/version disagree with the header or the record key (`NameMismatch`)
(`gate`, `replay` and `downgrade` are the follower's release rules: services/kafka/follower.py.)
(`contract`, `load`, `holdout` and `skew` are the consumer's lifecycle: services/core/lifecycle.py.)

Size: one message carries the whole model and its holdout set, up to `MAX_MODEL_MESSAGE_BYTES`
(the broker's 16 MiB limit less room for record framing); the limits are raised on topic,
producer and consumer instead of chunking (see topics.py). A larger model needs the limits
raised further, or a model store plus a signed pointer message.
"""

from __future__ import annotations

import getpass
import hashlib
import hmac
import json
import os
import secrets
import socket
import struct
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from services.core.card import ModelCard
from services.core.errors import ArtifactError, IntegrityError
from services.core.lifecycle import Artifact, ChecksumMismatch, NameMismatch
from services.kafka.topics import MAX_MESSAGE_BYTES

MAGIC = b"SPMD"
FORMAT_VERSION = 2
HEADER_SCHEMA = 3
SIGNATURE_ALG = "hmac-sha256"
_TAG_AT, _TAG_LEN = 5, 32
_HLEN_AT = _TAG_AT + _TAG_LEN  # 37
_HEADER_AT = _HLEN_AT + 4  # 41
MAX_HEADER_BYTES = 1024 * 1024
MAX_MODEL_MESSAGE_BYTES = MAX_MESSAGE_BYTES - 64 * 1024

ENV_KEY = "MODEL_SIGNING_KEY"
ENV_KEY_FILE = "MODEL_SIGNING_KEY_FILE"
MIN_KEY_BYTES = 16



class Malformed(ArtifactError):
    """Not a model message this reader can parse (framing, format version, header)."""

    code = "malformed"


class SignatureMismatch(IntegrityError):
    code = "signature"


class GateFailed(ArtifactError):
    """The card says the version failed its quality gate, and this consumer does not take demo material."""

    code = "gate"


class Replay(ArtifactError):
    """The release is not newer than the one serving: an old record sent again."""

    code = "replay"


class Downgrade(ArtifactError):
    """A newer release naming an older version without saying it is a rollback."""

    code = "downgrade"


class SigningKeyError(RuntimeError):
    """No usable signing key was found."""


# -- signing key ---------------------------------------------------------------------------------


def key_id(key: bytes) -> str:
    """A short, non-secret name for a key: lets a receiver say "signed with another key"."""
    return hashlib.sha256(b"serving-patterns/model-signing-key-id\0" + key).hexdigest()[:16]


def _read_key_file(path: Path) -> bytes:
    try:
        key = path.read_bytes().strip()
    except OSError as exc:
        raise SigningKeyError(f"cannot read the signing key file {path}: {exc.strerror}") from exc
    return _checked(key, str(path))


def _checked(key: bytes, source: str) -> bytes:
    if len(key) < MIN_KEY_BYTES:
        raise SigningKeyError(f"the signing key from {source} has {len(key)} bytes; at least {MIN_KEY_BYTES} needed")
    return key


def load_signing_key(key_file: Path | None = None, env: Mapping[str, str] | None = None) -> bytes:
    """The HMAC key: `key_file`, else $MODEL_SIGNING_KEY, else $MODEL_SIGNING_KEY_FILE.
    Raises SigningKeyError when none is set."""
    env = os.environ if env is None else env
    if key_file is not None:
        return _read_key_file(Path(key_file))
    if env.get(ENV_KEY):
        return _checked(env[ENV_KEY].encode(), f"${ENV_KEY}")
    if env.get(ENV_KEY_FILE):
        return _read_key_file(Path(env[ENV_KEY_FILE]))
    raise SigningKeyError(
        f"no model signing key: set ${ENV_KEY} or ${ENV_KEY_FILE} (the local stack's key is "
        "`.run/model-signing.key`, created by `make up PATTERN=model-as-data`)"
    )


def ensure_key_file(path: Path) -> Path:
    """Create a key file (32 random bytes, hex, mode 0600) unless it exists."""
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32) + "\n")
    return path


# -- encode / decode -----------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelMessage:
    """A verified model message."""

    header: dict[str, Any]
    card: ModelCard
    onnx_bytes: bytes
    holdout_csv: bytes

    @property
    def model_name(self) -> str:
        return self.card.name

    @property
    def model_version(self) -> int:
        return self.card.version

    @property
    def sha256(self) -> str:
        return self.header["sha256"]

    @property
    def release(self) -> int:
        return self.header["release"]

    @property
    def rollback(self) -> bool:
        return self.header["rollback"]

    @property
    def gate(self) -> dict[str, Any]:
        gate = self.header["card"].get("gate")
        return gate if isinstance(gate, dict) else {}

    def artifact(self, source: str) -> Artifact:
        return Artifact(self.card, self.onnx_bytes, self.holdout_csv, source)


def _tag(key: bytes, value: bytes | memoryview) -> bytes:
    mac = hmac.new(key, value[:_TAG_AT], hashlib.sha256)
    mac.update(value[_HLEN_AT:])
    return mac.digest()


def encode(
    card: Mapping[str, Any],
    onnx_bytes: bytes,
    holdout_csv: bytes,
    key: bytes,
    *,
    sha256: str | None = None,
    published_at: str | None = None,
    publisher: str | None = None,
    release: int | None = None,
    rollback: bool = False,
) -> bytes:
    """Build a signed message. `sha256` defaults to the ONNX bytes' hash (tests pass a wrong one);
    `release` to now in microseconds (the publisher passes one newer than any on the topic)."""
    header = {
        "schema": HEADER_SCHEMA,
        "model_name": card["name"],
        "model_version": card["version"],
        "sha256": sha256 or hashlib.sha256(onnx_bytes).hexdigest(),
        "onnx_size": len(onnx_bytes),
        "holdout_sha256": hashlib.sha256(holdout_csv).hexdigest(),
        "holdout_size": len(holdout_csv),
        "card": dict(card),
        "key_id": key_id(key),
        "signature_alg": SIGNATURE_ALG,
        "published_at": published_at or time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "publisher": publisher or f"{getpass.getuser()}@{socket.gethostname()}",
        "release": release if release is not None else now_release(),
        "rollback": bool(rollback),
    }
    raw_header = json.dumps(header, separators=(",", ":"), sort_keys=True).encode()
    if len(raw_header) > MAX_HEADER_BYTES:
        raise ArtifactError(f"model message header is {len(raw_header)} bytes; the limit is {MAX_HEADER_BYTES}")
    body = struct.pack(">I", len(raw_header)) + raw_header + onnx_bytes + holdout_csv
    unsigned = MAGIC + bytes([FORMAT_VERSION]) + bytes(_TAG_LEN) + body
    value = MAGIC + bytes([FORMAT_VERSION]) + _tag(key, unsigned) + body
    if len(value) > MAX_MODEL_MESSAGE_BYTES:
        raise ArtifactError(
            f"model message is {len(value)} bytes; the limit is {MAX_MODEL_MESSAGE_BYTES} "
            f"(broker message.max.bytes {MAX_MESSAGE_BYTES} less framing room)"
        )
    return value


def now_release() -> int:
    return time.time_ns() // 1000


def read_header(value: bytes) -> dict[str, Any]:
    """The header WITHOUT verifying anything: for listings and diagnostics only, never to serve."""
    _framing(value)
    (n,) = struct.unpack_from(">I", value, _HLEN_AT)
    return _parse_header(value[_HEADER_AT : _HEADER_AT + n])


def _framing(value: bytes | None) -> None:
    if not value:
        raise Malformed("empty value (a tombstone), not a model message")
    if len(value) < _HEADER_AT or value[:4] != MAGIC:
        raise Malformed("not a model message (no SPMD magic)")
    if value[4] == 1:
        raise Malformed("model message format version 1 carries no holdout set, so the integration check "
                        f"cannot run; this reader takes format version {FORMAT_VERSION}: republish the version "
                        "with the current publisher")
    if value[4] != FORMAT_VERSION:
        raise Malformed(f"model message format version {value[4]} is unknown (this reader knows {FORMAT_VERSION})")
    (n,) = struct.unpack_from(">I", value, _HLEN_AT)
    if n > MAX_HEADER_BYTES or _HEADER_AT + n > len(value):
        raise Malformed(f"header length {n} does not fit a {len(value)}-byte message")


def _parse_header(raw: bytes) -> dict[str, Any]:
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, ValueError) as exc:
        raise Malformed(f"header is not JSON: {exc}") from exc
    if not isinstance(header, dict):
        raise Malformed("header is not a JSON object")
    return header


_REQUIRED = ("model_name", "model_version", "sha256", "onnx_size", "holdout_sha256", "holdout_size", "card",
             "release", "rollback")


def decode(value: bytes | None, key: bytes, *, record_key: str | None = None) -> ModelMessage:
    """Verify and parse a message, or raise the `ArtifactError` saying why it must not be served."""
    _framing(value)
    assert value is not None
    (n,) = struct.unpack_from(">I", value, _HLEN_AT)
    expected = _tag(key, value)
    if not hmac.compare_digest(expected, value[_TAG_AT:_HLEN_AT]):
        # Only now look at the (untrusted) header, to say which key signed it.
        try:
            signer = _parse_header(value[_HEADER_AT : _HEADER_AT + n]).get("key_id")
        except Malformed:
            signer = None
        mine = key_id(key)
        if isinstance(signer, str) and signer != mine:
            raise SignatureMismatch(f"signed with key id {signer}; this service holds key id {mine}")
        raise SignatureMismatch("signature does not verify: the message was altered after signing")

    header = _parse_header(value[_HEADER_AT : _HEADER_AT + n])
    if header.get("schema") == 2:
        raise Malformed("header schema 2 carries no release sequence, so a re-sent old record could not be told "
                        f"from a new one; this reader takes schema {HEADER_SCHEMA}: republish the version with the "
                        "current publisher")
    if header.get("schema") != HEADER_SCHEMA:
        raise Malformed(f"header schema {header.get('schema')!r} is unknown (this reader knows {HEADER_SCHEMA})")
    missing = [f for f in _REQUIRED if f not in header]
    if missing:
        raise Malformed(f"header lacks {missing}")
    if not (isinstance(header["release"], int) and not isinstance(header["release"], bool) and header["release"] > 0
            and isinstance(header["rollback"], bool)):
        raise Malformed(f"release {header['release']!r} / rollback {header['rollback']!r}: a positive integer and a "
                        "boolean are needed")
    onnx_size, holdout_size = header["onnx_size"], header["holdout_size"]
    body = value[_HEADER_AT + n :]
    if not (isinstance(onnx_size, int) and isinstance(holdout_size, int) and onnx_size >= 0 and holdout_size >= 0
            and onnx_size + holdout_size == len(body)):
        raise Malformed(f"header says {onnx_size} ONNX bytes and {holdout_size} holdout bytes, the message has "
                        f"{len(body)} bytes after the header")
    onnx_bytes, holdout_csv = body[:onnx_size], body[onnx_size:]
    try:
        card = ModelCard.model_validate(header["card"])
    except ValueError as exc:
        raise Malformed(f"the model card does not parse: {exc}") from exc

    actual = hashlib.sha256(onnx_bytes).hexdigest()
    if not hmac.compare_digest(actual, str(header["sha256"])):
        raise ChecksumMismatch(f"sha256 of the ONNX bytes is {actual}; the message says {header['sha256']}")
    if not hmac.compare_digest(actual, card.sha256):
        raise ChecksumMismatch(f"sha256 of the ONNX bytes is {actual}; the model card says {card.sha256}")
    holdout_actual = hashlib.sha256(holdout_csv).hexdigest()
    if not hmac.compare_digest(holdout_actual, str(header["holdout_sha256"])):
        raise ChecksumMismatch(f"sha256 of the holdout set is {holdout_actual}; the message says "
                               f"{header['holdout_sha256']}")

    if card.name != header["model_name"] or card.version != header["model_version"]:
        raise NameMismatch(
            f"header names {header['model_name']} v{header['model_version']}, the card {card.name} v{card.version}",
        )
    if record_key is not None and record_key != card.name:
        raise NameMismatch(f"record key {record_key!r} differs from the card's model name {card.name!r}")
    return ModelMessage(header=header, card=card, onnx_bytes=onnx_bytes, holdout_csv=holdout_csv)
