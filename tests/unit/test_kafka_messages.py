"""The models-topic message: signing, verification and every way a message is refused."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import struct

import pytest

from services.core.errors import ArtifactError, IntegrityError
from services.kafka import messages

KEY = b"k" * 32
OTHER_KEY = b"o" * 32


@pytest.fixture(scope="module")
def artifact(model_repo):
    d = model_repo / "breast-cancer" / "1"
    return (json.loads((d / "model-card.json").read_text()), (d / "model.onnx").read_bytes(),
            (d / "holdout.csv").read_bytes())


def reason_of(value: bytes, key: bytes = KEY, record_key: str | None = "breast-cancer") -> ArtifactError:
    with pytest.raises(ArtifactError) as info:
        messages.decode(value, key, record_key=record_key)
    return info.value


def test_round_trip_keeps_card_bytes_holdout_and_header(artifact):
    card, onnx, holdout = artifact
    value = messages.encode(card, onnx, holdout, KEY, published_at="2025-01-01T00:00:00Z", publisher="ci@test",
                            release=5)
    msg = messages.decode(value, KEY, record_key="breast-cancer")
    assert msg.onnx_bytes == onnx and msg.holdout_csv == holdout
    assert (msg.model_name, msg.model_version) == ("breast-cancer", 1)
    assert msg.sha256 == hashlib.sha256(onnx).hexdigest() == card["sha256"]
    assert msg.header["holdout_sha256"] == hashlib.sha256(holdout).hexdigest()
    assert msg.header["key_id"] == messages.key_id(KEY)
    assert msg.header["signature_alg"] == "hmac-sha256"
    assert msg.header["card"] == card
    # The framing: magic, format version, then the ONNX bytes and the holdout CSV raw at the end (no base64).
    assert value[:5] == b"SPMD\x02" and value.endswith(onnx + holdout)
    # Deterministic for the same inputs.
    assert value == messages.encode(card, onnx, holdout, KEY, published_at="2025-01-01T00:00:00Z",
                                    publisher="ci@test", release=5)
    artifact = msg.artifact("models[0]@3")
    assert (artifact.card.version, artifact.holdout_csv, artifact.source) == (1, holdout, "models[0]@3")


@pytest.mark.parametrize("where", ["onnx", "holdout", "header", "tag", "magic-version"])
def test_any_flipped_byte_breaks_the_signature(artifact, where):
    card, onnx, holdout = artifact
    value = bytearray(messages.encode(card, onnx, holdout, KEY))
    (hlen,) = struct.unpack_from(">I", value, 37)
    index = {"onnx": 41 + hlen + len(onnx) - 10, "holdout": len(value) - 10, "header": 41 + hlen // 2, "tag": 20,
             "magic-version": 4}[where]
    value[index] ^= 0x01
    err = reason_of(bytes(value))
    expected = "malformed" if where == "magic-version" else "signature"  # format version 3 is unknown
    assert err.code == expected, err.message
    assert isinstance(err, IntegrityError) == (expected == "signature")


def test_wrong_key_is_named_by_key_id(artifact):
    err = reason_of(messages.encode(*artifact, OTHER_KEY))
    assert err.code == "signature"
    assert messages.key_id(OTHER_KEY) in err.message and messages.key_id(KEY) in err.message


def test_header_sha256_that_does_not_match_the_bytes(artifact):
    err = reason_of(messages.encode(*artifact, KEY, sha256="0" * 64))
    assert err.code == "checksum" and "the message says" in err.message


def test_card_sha256_that_does_not_match_the_bytes(artifact, model_repo):
    card, _, holdout = artifact
    other_onnx = (model_repo / "breast-cancer" / "2" / "model.onnx").read_bytes()
    err = reason_of(messages.encode(card, other_onnx, holdout, KEY))  # v1's card, v2's bytes: signed, inconsistent
    assert err.code == "checksum" and "the model card says" in err.message


def test_holdout_that_does_not_match_its_header_sha256(artifact):
    card, onnx, holdout = artifact
    value = messages.encode(card, onnx, holdout, KEY)
    (hlen,) = struct.unpack_from(">I", value, 37)
    header = json.loads(value[41 : 41 + hlen])
    header["holdout_sha256"] = "0" * 64
    err = reason_of(resigned(header, onnx + holdout))
    assert err.code == "checksum" and "holdout set" in err.message


def test_record_key_and_card_name_must_agree(artifact):
    err = reason_of(messages.encode(*artifact, KEY), record_key="wine")
    assert err.code == "name"


def test_format_version_1_is_refused_with_the_reason(artifact):
    """The previous format carried no holdout set: refused as malformed, saying why and what to do."""
    card, onnx, _ = artifact
    raw = json.dumps({"schema": 1, "model_name": card["name"], "model_version": 1, "sha256": card["sha256"],
                      "onnx_size": len(onnx), "card": card}).encode()
    body = struct.pack(">I", len(raw)) + raw + onnx
    value = b"SPMD\x01" + messages._tag(KEY, b"SPMD\x01" + bytes(32) + body) + body
    err = reason_of(value)
    assert err.code == "malformed"
    assert "format version 1 carries no holdout set" in err.message and "republish" in err.message


def resigned(header: dict, payload: bytes) -> bytes:
    raw = json.dumps(header).encode()
    body = struct.pack(">I", len(raw)) + raw + payload
    return b"SPMD\x02" + messages._tag(KEY, b"SPMD\x02" + bytes(32) + body) + body


@pytest.mark.parametrize(
    ("value", "words"),
    [
        (b"", "tombstone"),
        (None, "tombstone"),
        (b"PK\x03\x04 a zip file" + bytes(64), "magic"),
        (b"SPMD\x03" + bytes(64), "format version 3"),
        (b"SPMD\x02" + bytes(32) + struct.pack(">I", 10_000) + b"{}", "does not fit"),
    ],
)
def test_malformed_values(value, words):
    err = reason_of(value)
    assert err.code == "malformed" and words in err.message


def test_signed_garbage_header_is_malformed_not_a_crash():
    header = b"not json"
    body = struct.pack(">I", len(header)) + header + b"onnx"
    value = b"SPMD\x02" + messages._tag(KEY, b"SPMD\x02" + bytes(32) + body) + body
    assert reason_of(value).code == "malformed"


def test_unknown_header_schema_is_refused(artifact):
    card, onnx, holdout = artifact
    value = messages.encode(card, onnx, holdout, KEY)
    (hlen,) = struct.unpack_from(">I", value, 37)
    header = json.loads(value[41 : 41 + hlen])
    header["schema"] = 4
    err = reason_of(resigned(header, onnx + holdout))
    assert err.code == "malformed" and "schema 4" in err.message


def test_schema_2_without_a_release_is_refused_naming_why(artifact):
    card, onnx, holdout = artifact
    value = messages.encode(card, onnx, holdout, KEY)
    (hlen,) = struct.unpack_from(">I", value, 37)
    header = json.loads(value[41 : 41 + hlen])
    header["schema"] = 2
    del header["release"], header["rollback"]
    err = reason_of(resigned(header, onnx + holdout))
    assert err.code == "malformed" and "no release sequence" in err.message


def test_release_and_rollback_are_signed_and_checked(artifact):
    card, onnx, holdout = artifact
    msg = messages.decode(messages.encode(card, onnx, holdout, KEY, release=7, rollback=True), KEY)
    assert (msg.release, msg.rollback) == (7, True)
    default = messages.decode(messages.encode(card, onnx, holdout, KEY), KEY)
    assert default.release > 1_700_000_000_000_000 and default.rollback is False
    value = messages.encode(card, onnx, holdout, KEY, release=7)
    (hlen,) = struct.unpack_from(">I", value, 37)
    header = json.loads(value[41 : 41 + hlen])
    for bad in ({"release": -1}, {"release": "7"}, {"release": True}, {"rollback": "yes"}):
        err = reason_of(resigned({**header, **bad}, onnx + holdout))
        assert err.code == "malformed" and "release" in err.message, bad
    # Raising the release without the key is a signature failure, not a newer release.
    forged = bytearray(value)
    at = bytes(forged).index(b'"release":7')
    forged[at : at + 11] = b'"release":9'
    assert reason_of(bytes(forged)).code == "signature"


def test_sizes_that_do_not_add_up_are_malformed(artifact):
    card, onnx, holdout = artifact
    value = messages.encode(card, onnx, holdout, KEY)
    (hlen,) = struct.unpack_from(">I", value, 37)
    header = json.loads(value[41 : 41 + hlen])
    header["holdout_size"] += 1
    err = reason_of(resigned(header, onnx + holdout))
    assert err.code == "malformed" and "holdout bytes" in err.message


def test_oversized_model_is_refused_before_sending(artifact):
    card, _, holdout = artifact
    with pytest.raises(ArtifactError, match="limit"):
        messages.encode(card, os.urandom(messages.MAX_MODEL_MESSAGE_BYTES), holdout, KEY)


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
