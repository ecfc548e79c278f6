"""The models-topic message: signing, verification and every way a message is refused."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import struct

import pytest

from services.kafka import messages
from services.kafka.messages import Rejection

KEY = b"k" * 32
OTHER_KEY = b"o" * 32


@pytest.fixture(scope="module")
def artifact(model_repo):
    d = model_repo / "breast-cancer" / "1"
    return json.loads((d / "model-card.json").read_text()), (d / "model.onnx").read_bytes()


def reason_of(value: bytes, key: bytes = KEY, record_key: str | None = "breast-cancer") -> Rejection:
    with pytest.raises(Rejection) as info:
        messages.decode(value, key, record_key=record_key)
    return info.value


def test_round_trip_keeps_card_bytes_and_header(artifact):
    card, onnx = artifact
    value = messages.encode(card, onnx, KEY, published_at="2025-01-01T00:00:00Z", publisher="ci@test")
    msg = messages.decode(value, KEY, record_key="breast-cancer")
    assert msg.onnx_bytes == onnx
    assert (msg.model_name, msg.model_version) == ("breast-cancer", 1)
    assert msg.sha256 == hashlib.sha256(onnx).hexdigest() == card["sha256"]
    assert msg.header["key_id"] == messages.key_id(KEY)
    assert msg.header["signature_alg"] == "hmac-sha256"
    assert msg.header["card"] == card
    # The framing: magic, format version, then the ONNX bytes raw at the end (no base64).
    assert value[:5] == b"SPMD\x01" and value.endswith(onnx)
    # Deterministic for the same inputs.
    assert value == messages.encode(card, onnx, KEY, published_at="2025-01-01T00:00:00Z", publisher="ci@test")


@pytest.mark.parametrize("where", ["onnx", "header", "tag", "magic-version"])
def test_any_flipped_byte_breaks_the_signature(artifact, where):
    card, onnx = artifact
    value = bytearray(messages.encode(card, onnx, KEY))
    (hlen,) = struct.unpack_from(">I", value, 37)
    index = {"onnx": len(value) - 10, "header": 41 + hlen // 2, "tag": 20, "magic-version": 4}[where]
    value[index] ^= 0x01
    err = reason_of(bytes(value))
    expected = "malformed" if where == "magic-version" else "signature"  # format version 0 is unknown
    assert err.reason == expected, err.message


def test_wrong_key_is_named_by_key_id(artifact):
    card, onnx = artifact
    err = reason_of(messages.encode(card, onnx, OTHER_KEY))
    assert err.reason == "signature"
    assert messages.key_id(OTHER_KEY) in err.message and messages.key_id(KEY) in err.message


def test_header_sha256_that_does_not_match_the_bytes(artifact):
    card, onnx = artifact
    err = reason_of(messages.encode(card, onnx, KEY, sha256="0" * 64))
    assert err.reason == "checksum" and "the message says" in err.message


def test_card_sha256_that_does_not_match_the_bytes(artifact, model_repo):
    card, _ = artifact
    other_onnx = (model_repo / "breast-cancer" / "2" / "model.onnx").read_bytes()
    err = reason_of(messages.encode(card, other_onnx, KEY))  # v1's card, v2's bytes: signed, but inconsistent
    assert err.reason == "checksum" and "the model card says" in err.message


def test_record_key_and_card_name_must_agree(artifact):
    card, onnx = artifact
    err = reason_of(messages.encode(card, onnx, KEY), record_key="wine")
    assert err.reason == "name"


@pytest.mark.parametrize(
    ("value", "words"),
    [
        (b"", "tombstone"),
        (None, "tombstone"),
        (b"PK\x03\x04 a zip file" + bytes(64), "magic"),
        (b"SPMD\x02" + bytes(64), "format version 2"),
        (b"SPMD\x01" + bytes(32) + struct.pack(">I", 10_000) + b"{}", "does not fit"),
    ],
)
def test_malformed_values(value, words):
    err = reason_of(value)
    assert err.reason == "malformed" and words in err.message


def test_signed_garbage_header_is_malformed_not_a_crash():
    header = b"not json"
    body = struct.pack(">I", len(header)) + header + b"onnx"
    value = b"SPMD\x01" + messages._tag(KEY, b"SPMD\x01" + bytes(32) + body) + body
    assert reason_of(value).reason == "malformed"


def test_unknown_header_schema_is_refused(artifact):
    card, onnx = artifact
    value = messages.encode(card, onnx, KEY)
    (hlen,) = struct.unpack_from(">I", value, 37)
    header = json.loads(value[41 : 41 + hlen])
    header["schema"] = 2
    raw = json.dumps(header).encode()
    body = struct.pack(">I", len(raw)) + raw + onnx
    resigned = b"SPMD\x01" + messages._tag(KEY, b"SPMD\x01" + bytes(32) + body) + body
    err = reason_of(resigned)
    assert err.reason == "malformed" and "schema 2" in err.message


def test_oversized_model_is_refused_before_sending(artifact):
    card, _ = artifact
    with pytest.raises(Exception, match="limit"):
        messages.encode(card, os.urandom(messages.MAX_MODEL_MESSAGE_BYTES), KEY)


def test_signing_key_sources_in_order(tmp_path):
    f = tmp_path / "key"
    f.write_text("file-key-0123456789abcdef\n")
    env = {messages.ENV_KEY: "env-key-0123456789abcdef", messages.ENV_KEY_FILE: str(f)}
    assert messages.load_signing_key(f, env={}) == b"file-key-0123456789abcdef"
    assert messages.load_signing_key(None, env=env) == b"env-key-0123456789abcdef"
    assert messages.load_signing_key(None, env={messages.ENV_KEY_FILE: str(f)}) == b"file-key-0123456789abcdef"
    with pytest.raises(messages.SigningKeyError, match="no model signing key"):
        messages.load_signing_key(None, env={})
    with pytest.raises(messages.SigningKeyError, match="at least 16"):
        messages.load_signing_key(None, env={messages.ENV_KEY: "short"})


def test_key_file_is_random_private_and_kept(tmp_path):
    path = messages.ensure_key_file(tmp_path / ".run" / "model-signing.key")
    first = path.read_bytes()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(first.strip()) == 64
    assert messages.ensure_key_file(path).read_bytes() == first
