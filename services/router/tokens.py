"""Signed request ids: the handle for feedback that any router replica can verify.

A token is what the router hands to the client as the request id (x-request-id, the body's
`request_id`, gRPC metadata) when the client sent none, and as `x-feedback-token` always. It
carries what feedback needs, so a replica that never saw the request can take its feedback:

    rt1~<variant>~<config version>~<policy epoch>~<issued, ms since epoch, hex>~<nonce>~<labels>~<mac>

* variant: who answered (empty: the decision is closed, its chosen variant failed under a
  learning policy; feedback gets 409 everywhere);
* config version and policy epoch: a learning policy refuses a reward for a decision made under
  an earlier policy (the epoch; replicas reading one config source count the same epochs);
* issued: the TTL (410) is measured from it;
* nonce: the router's own correlation id (the one forwarded to the model server as
  x-request-id), so the token is unique and ties back to the model server's logs;
* labels: the predicted class of each row when the answer had at most MAX_LABELS rows of small
  integer labels (label feedback on another replica can then be scored); empty otherwise;
* mac: HMAC-SHA256 over everything before it, truncated to 128 bits, base64url.

Every field is visible ASCII without `~` (variant names are [A-Za-z0-9_.-]), so a token is a
legal request id (at most 128 characters) and a legal header value. The key is a secret the
replicas share (`ROUTER_TOKEN_KEY` / `ROUTER_TOKEN_KEY_FILE`); a key file may hold several keys,
one per line: the first signs, all verify (rotation: add the new key second, roll out, move it
first, roll out, drop the old one). Without a configured key, each process makes a random one:
tokens verify only on the replica that issued them (and not after its restart).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

from services.core.errors import InvalidInput

PREFIX = "rt1~"
MAX_LABELS = 8
"""Rows whose labels ride in the token; larger answers keep them only in the answering replica."""
MAX_LABEL = 9999
MAX_FUTURE_S = 300.0
"""Clock skew tolerated between replicas: a token issued further in the future is refused."""
_MAC_BYTES = 16
_FIELD = re.compile(r"^[A-Za-z0-9_.\-]*$")
_MIN_KEY_BYTES = 16


class TokenError(InvalidInput):
    """A request id that claims to be a token but is not one this router signed."""

    code = "bad_token"


@dataclass(frozen=True, slots=True)
class Claims:
    variant: str
    """Who answered; "" when the decision was closed (its chosen variant failed)."""
    config_version: int
    epoch: int
    issued: float
    """Wall-clock seconds (millisecond resolution)."""
    nonce: str
    labels: tuple[int, ...] | None


def is_token(request_id: str) -> bool:
    return request_id.startswith(PREFIX)


def load_keys(text: str) -> list[bytes]:
    """Keys from a key file's text: one per line (hex or any text of >= 16 bytes); blank lines skipped."""
    keys = []
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            key = bytes.fromhex(line)
        except ValueError:
            key = line.encode()
        if len(key) < _MIN_KEY_BYTES:
            raise ValueError(f"a token key must be at least {_MIN_KEY_BYTES} bytes, got {len(key)}")
        keys.append(key)
    if not keys:
        raise ValueError("no token key found")
    return keys


def key_source(key: str | None, key_file: Path | None) -> tuple[list[bytes], str]:
    """(keys, where they came from): the setting, the file, or a random key of this process."""
    if key:
        return load_keys(key), "setting"
    if key_file is not None:
        try:
            return load_keys(Path(key_file).read_text()), str(key_file)
        except (OSError, ValueError) as exc:
            raise SystemExit(f"router: cannot read the token key file {key_file}: {exc}") from None
    return [secrets.token_bytes(32)], "random (this process only)"


class TokenCodec:
    def __init__(self, keys: list[bytes]) -> None:
        if not keys:
            raise ValueError("a token codec needs at least one key")
        self._keys = list(keys)

    @staticmethod
    def _mac(key: bytes, body: str) -> str:
        digest = hmac.digest(key, body.encode(), hashlib.sha256)  # one-shot, in C: on every answer
        return base64.urlsafe_b64encode(digest[:_MAC_BYTES]).rstrip(b"=").decode()

    def mint(self, variant: str, config_version: int, epoch: int, nonce: str, labels: tuple | None = None,
             issued: float | None = None) -> str:
        at = int((time.time() if issued is None else issued) * 1000)
        carried = ""
        if labels and len(labels) <= MAX_LABELS and all(
                type(v) is int and 0 <= v <= MAX_LABEL for v in labels):
            carried = ".".join(map(str, labels))
        body = f"{PREFIX}{variant}~{config_version}~{epoch}~{at:x}~{nonce}~{carried}"
        return f"{body}~{self._mac(self._keys[0], body)}"

    def verify(self, token: str, now: float | None = None) -> Claims:
        """The claims of a token this router's key signed; TokenError (400) naming the problem."""
        if not is_token(token):
            raise TokenError("request_id is not a feedback token", field="request_id")
        body, _, mac = token.rpartition("~")
        parts = body[len(PREFIX):].split("~")
        if len(parts) != 6 or not mac or len(token) > 256:
            raise TokenError("request_id: malformed feedback token (expected 8 '~'-separated fields)",
                             field="request_id")
        if not any(hmac.compare_digest(self._mac(k, body), mac) for k in self._keys):
            raise TokenError("request_id: the feedback token's signature does not verify (altered, or not "
                             "issued by this router's key)", field="request_id")
        variant, version, epoch, issued, nonce, labels = parts
        try:
            if not _FIELD.match(variant) or not _FIELD.match(nonce):
                raise ValueError
            claims = Claims(variant, int(version), int(epoch), int(issued, 16) / 1000, nonce,
                            tuple(int(v) for v in labels.split(".")) if labels else None)
        except ValueError:  # signed by our key, so only a bug or a leaked key gets here
            raise TokenError("request_id: feedback token fields unreadable", field="request_id") from None
        if claims.issued - (time.time() if now is None else now) > MAX_FUTURE_S:
            raise TokenError("request_id: the feedback token was issued in the future (clock skew between "
                             f"replicas beyond {MAX_FUTURE_S:g} s)", field="request_id")
        return claims
