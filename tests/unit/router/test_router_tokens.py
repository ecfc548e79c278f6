"""Signed request ids (services/router/tokens.py) and what the router does with them: the codec,
feedback on a replica that never saw the request (two routers in-process sharing a key, no
Kafka), forged and altered ids, the TTL measured from the token, the feedback bearer token,
`max_pending` lowered at run time, and `/policy` without the admin token."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import yaml

from services.core.errors import Gone
from services.router.errors import Conflict
from services.router.feedback import PendingStore
from services.router.tokens import MAX_LABELS, TokenCodec, TokenError, is_token, load_keys
from tests.unit.router import test_router_service_proxy as proxy
from tests.unit.router.test_router_service_proxy import TOKEN, Harness, config, metric

# the stub upstreams and the in-process router harness of the proxy tests
stubs, harness, anyio_backend = proxy.stubs, proxy.harness, proxy.anyio_backend

KEY = b"k" * 32
OTHER = b"o" * 32


# -- the codec --------------------------------------------------------------------------------------


def test_a_token_round_trips_its_claims() -> None:
    codec = TokenCodec([KEY])
    token = codec.mint("candidate", 7, 2, "ab12cd34-1f", (1,), issued=1_700_000_000.123)
    assert is_token(token) and len(token) <= 128 and token.isascii() and " " not in token
    claims = codec.verify(token, now=1_700_000_001)
    assert (claims.variant, claims.config_version, claims.epoch, claims.nonce, claims.labels) == (
        "candidate", 7, 2, "ab12cd34-1f", (1,))
    assert claims.issued == pytest.approx(1_700_000_000.123, abs=0.001)


def test_labels_ride_only_for_small_answers_of_small_integers() -> None:
    codec = TokenCodec([KEY])
    assert codec.verify(codec.mint("a", 1, 0, "n", tuple(range(MAX_LABELS)))).labels == tuple(range(MAX_LABELS))
    assert codec.verify(codec.mint("a", 1, 0, "n", tuple([0] * (MAX_LABELS + 1)))).labels is None
    assert codec.verify(codec.mint("a", 1, 0, "n", ("yes",))).labels is None
    assert codec.verify(codec.mint("a", 1, 0, "n", (True,))).labels is None


@pytest.mark.parametrize("mutate", [
    lambda t: t.replace("~candidate~", "~stable~"),          # another variant
    lambda t: t.replace("~7~", "~8~", 1),                     # another config version
    lambda t: t[:-1] + ("A" if t[-1] != "A" else "B"),       # the MAC itself
    lambda t: t.replace("~1~", "~0~"),                        # the labels
])
def test_an_altered_token_is_refused_naming_the_signature(mutate) -> None:
    codec = TokenCodec([KEY])
    token = codec.mint("candidate", 7, 2, "n-1", (1,))
    altered = mutate(token)
    assert altered != token
    with pytest.raises(TokenError, match="signature does not verify"):
        codec.verify(altered)


def test_a_token_of_another_key_is_refused_and_rotation_verifies_both() -> None:
    theirs = TokenCodec([OTHER]).mint("a", 1, 0, "n")
    with pytest.raises(TokenError, match="signature"):
        TokenCodec([KEY]).verify(theirs)
    rotating = TokenCodec([KEY, OTHER])  # the new key signs, the old one still verifies
    assert rotating.verify(theirs).variant == "a"
    assert TokenCodec([KEY]).verify(rotating.mint("b", 1, 0, "n")).variant == "b"


@pytest.mark.parametrize("bad", ["rt1~", "rt1~a~b", "rt1~a~1~0~zz~n~~", "rt1~" + "x~" * 300])
def test_a_malformed_token_is_a_400_not_a_500(bad: str) -> None:
    with pytest.raises(TokenError) as err:
        TokenCodec([KEY]).verify(bad)
    assert err.value.http_status == 400 and err.value.field == "request_id"


def test_a_token_from_the_future_is_refused() -> None:
    codec = TokenCodec([KEY])
    with pytest.raises(TokenError, match="future"):
        codec.verify(codec.mint("a", 1, 0, "n", issued=time.time() + 3600))


def test_key_files_hold_one_key_per_line_of_at_least_16_bytes() -> None:
    assert load_keys("00" * 16 + "\n\n" + "a-text-key-of-enough-bytes\n") == [b"\0" * 16, b"a-text-key-of-enough-bytes"]
    with pytest.raises(ValueError, match="at least 16 bytes"):
        load_keys("short")
    with pytest.raises(ValueError, match="no token key"):
        load_keys("\n \n")


# -- the pending table --------------------------------------------------------------------------------


def test_lowering_max_pending_trims_the_table_at_once() -> None:
    s = PendingStore(ttl_s=3600, max_pending=100)
    for i in range(50):
        s.add(f"r{i}", "a", None, 0)
    s.reconfigure(3600, 10)
    assert len(s) == 10 and s.evicted == 40
    with pytest.raises(Gone, match="evicted: more than 10"):
        s.get("r39")  # the newest evicted; tombstones are bounded by max_pending too
    assert s.get("r49")[0] == "r49"


def test_a_verified_token_unknown_here_is_rebuilt_from_its_claims() -> None:
    codec = TokenCodec([KEY])
    s = PendingStore(ttl_s=60, max_pending=10)
    fresh = codec.mint("b", 3, 1, "n-1", (0,))
    rid, entry = s.get_token(fresh, codec.verify(fresh))
    assert (rid, entry.variant, entry.epoch, entry.labels) == (fresh, "b", 1, (0,))
    old = codec.mint("b", 3, 1, "n-2", issued=time.time() - 120)
    with pytest.raises(Gone, match="beyond the feedback TTL of 60 s"):
        s.get_token(old, codec.verify(old))
    closed = codec.mint("", 3, 1, "n-3")
    with pytest.raises(Conflict, match="its chosen variant failed"):
        s.get_token(closed, codec.verify(closed))
    s.close(fresh)
    with pytest.raises(Conflict, match="already has its outcome"):
        s.get_token(fresh, codec.verify(fresh))


# -- two routers sharing a key (no Kafka): any replica takes feedback for any replica's request ---------


@pytest.mark.anyio
async def test_a_replica_that_never_saw_the_request_takes_its_feedback(stubs, tmp_path: Path) -> None:
    a, b = stubs
    key_file = tmp_path / "token.key"
    key_file.write_text(KEY.hex() + "\n")
    first, second = Harness(tmp_path / "r1"), Harness(tmp_path / "r2")
    (tmp_path / "r1").mkdir()
    (tmp_path / "r2").mkdir()
    cfg = config(a, b, kind="thompson", params={})
    try:
        await first.start(cfg, token_key_file=key_file)
        await second.start(cfg, token_key_file=key_file)
        r = await first.infer()
        rid = r.headers["x-request-id"]
        assert rid == r.json()["request_id"] == r.headers["x-feedback-token"] and is_token(rid)
        fb = await second.client.post("/feedback", json={"request_id": rid, "reward": 1, "label": 1})
        assert fb.status_code == 200, fb.text
        assert fb.json()["variant"] == r.headers["x-variant"]
        assert fb.json()["correct"] == (r.headers["x-variant"] == "stable")  # labels rode in the token
        arms = second.router.dispatcher.table.policy.state()["arms"]
        assert arms[r.headers["x-variant"]]["rewards"] == 1
        again = await second.client.post("/feedback", json={"request_id": rid, "reward": 1})
        assert again.status_code == 409

        # altered: one character of the variant changed -> 400 naming the signature, nothing learned
        forged = rid.replace(f"~{r.headers['x-variant']}~", "~stable~" if r.headers["x-variant"] != "stable"
                             else "~candidate~")
        bad = await second.client.post("/feedback", json={"request_id": forged, "reward": 1})
        assert bad.status_code == 400 and "signature" in bad.json()["error"] and bad.json()["field"] == "request_id"
        assert bad.json()["code"] == "bad_token"

        # a client-chosen id: echoed as the correlation id; feedback by it works only where it was answered
        mine = await first.infer({"x-request-id": "client-42"})
        assert mine.headers["x-request-id"] == "client-42" and is_token(mine.headers["x-feedback-token"])
        elsewhere = await second.client.post("/feedback", json={"request_id": "client-42", "reward": 1})
        assert elsewhere.status_code == 404 and "x-feedback-token" in elsewhere.json()["error"]
        by_token = await second.client.post("/feedback", json={"request_id": mine.headers["x-feedback-token"],
                                                               "reward": 0})
        assert by_token.status_code == 200
        here = await first.client.post("/feedback", json={"request_id": "client-42", "reward": 1})
        assert here.status_code == 200  # without a shared log the first replica does not know yet
        twice = await first.client.post("/feedback", json={"request_id": mine.headers["x-feedback-token"],
                                                           "reward": 1})
        assert twice.status_code == 409  # alias and token name the same entry
    finally:
        await first.stop()
        await second.stop()


@pytest.mark.anyio
async def test_without_a_configured_key_tokens_of_another_process_are_refused(stubs, tmp_path: Path) -> None:
    a, b = stubs
    (tmp_path / "r1").mkdir()
    (tmp_path / "r2").mkdir()
    first, second = Harness(tmp_path / "r1"), Harness(tmp_path / "r2")
    try:
        await first.start(config(a, b))
        await second.start(config(a, b))
        rid = (await first.infer()).headers["x-request-id"]
        r = await second.client.post("/feedback", json={"request_id": rid, "label": 1})
        assert r.status_code == 400 and "signature" in r.json()["error"]
    finally:
        await first.stop()
        await second.stop()


# -- the feedback bearer token and /policy ----------------------------------------------------------------


@pytest.mark.anyio
async def test_feedback_can_require_a_bearer_token(stubs, harness) -> None:
    a, b = stubs
    await harness.start(config(a, b), feedback_token="fb-secret")
    rid = (await harness.infer()).headers["x-request-id"]
    before = metric("router_feedback_total", outcome="unauthorized")
    none = await harness.client.post("/feedback", json={"request_id": rid, "label": 1})
    wrong = await harness.client.post("/feedback", json={"request_id": rid, "label": 1},
                                      headers={"Authorization": "Bearer nope"})
    assert (none.status_code, wrong.status_code) == (401, 401)
    assert none.json()["field"] == "Authorization"
    assert metric("router_feedback_total", outcome="unauthorized") == before + 2
    ok = await harness.client.post("/feedback", json={"request_id": rid, "label": 1},
                                   headers={"Authorization": "Bearer fb-secret"})
    assert ok.status_code == 200
    rid = (await harness.infer()).headers["x-request-id"]
    admin = await harness.client.post("/feedback", json={"request_id": rid, "label": 1},
                                      headers={"Authorization": f"Bearer {TOKEN}"})
    assert admin.status_code == 200


@pytest.mark.anyio
async def test_feedback_token_file_unreadable_means_closed(stubs, harness, tmp_path: Path) -> None:
    a, b = stubs
    await harness.start(config(a, b), feedback_token_file=tmp_path / "missing")
    rid = (await harness.infer()).headers["x-request-id"]
    r = await harness.client.post("/feedback", json={"request_id": rid, "label": 1},
                                  headers={"Authorization": "Bearer anything"})
    assert r.status_code == 401


@pytest.mark.anyio
async def test_policy_hides_upstream_addresses_without_the_admin_token(stubs, harness) -> None:
    a, b = stubs
    await harness.start(config(a, b))
    anonymous = (await harness.client.get("/policy")).json()
    assert "hidden" in anonymous["upstreams"]
    assert all("url" not in v and "grpc" not in v for v in anonymous["variants"].values())
    assert a.url not in yaml.safe_dump(anonymous) and "ejected" in anonymous["variants"]["stable"]
    wrong = (await harness.client.get("/policy", headers={"Authorization": "Bearer nope"})).json()
    assert "upstreams" in wrong
    admin = (await harness.client.get("/policy", headers={"Authorization": f"Bearer {TOKEN}"})).json()
    assert admin["variants"]["stable"]["url"] == a.url and "upstreams" not in admin
