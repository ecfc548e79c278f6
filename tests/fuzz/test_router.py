"""Fuzz: the router (REST predict, feedback, admin API with a token, gRPC front) in front of two real model servers."""

from __future__ import annotations

import grpc
import httpx
import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from tests.fuzz import grpc_cases as g
from tests.fuzz import strategies as s
from tests.fuzz.checks import ServerGuard, check_grpc, check_http, fuzz_settings
from tests.fuzz.conftest import ADMIN_TOKEN, RouterStack

pytestmark = [pytest.mark.integration, pytest.mark.fuzz]

HEADER_TEXT = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0xFF), max_size=300).map(
    lambda v: v.strip(" \t").encode("latin-1"))  # a client library refuses edge whitespace itself
"""Header values a client can send (latin-1), including DEL, 0x80-0xFF and long values."""
HEADERS = st.dictionaries(st.sampled_from(["x-variant", "x-user-id", "x-request-id", "content-type", "traceparent"]),
                          st.one_of(st.sampled_from(["stable", "candidate", "nope", "application/json",
                                                     "text/plain", "x" * 8000]), HEADER_TEXT), max_size=3)


def guard(router: RouterStack, client: httpx.Client) -> ServerGuard:
    """Still serves, and no client input ejected a variant: each answers when asked for by name."""
    def still_serves() -> None:
        for variant in ("stable", "candidate"):
            r = client.post("/v2/models/breast-cancer/infer", content=s.VALID_V2, headers={"x-variant": variant})
            assert r.status_code == 200, r.text
            assert r.json()["variant"] == variant, f"asked for {variant}, served by {r.json()['variant']}"

    return ServerGuard("router", router.proc.pid, still_serves)


@pytest.fixture(scope="module")
def client(router: RouterStack):
    with httpx.Client(base_url=router.url, timeout=30) as c:
        yield c


def test_predict_bodies_and_headers(router: RouterStack, client: httpx.Client) -> None:
    with guard(router, client):
        @fuzz_settings(3)
        @given(body=s.bodies(s.VALID_V2, s.v2_body()), headers=HEADERS,
               version=st.sampled_from(["", "/versions/1", "/versions/2"]))
        def run(body: bytes, headers: dict[str, str], version: str) -> None:
            check_http("router REST infer", client.post(f"/v2/models/breast-cancer{version}/infer", content=body,
                                                        headers=headers))

        run()


def test_paths_and_methods(router: RouterStack, client: httpx.Client) -> None:
    with guard(router, client):
        @fuzz_settings(2)
        @given(path=st.one_of(s.v2_path(), s.RAW_PATHS, st.sampled_from(
                   ["/feedback", "/policy", "/bandit", "/quality", "/shadow/summary", "/admin/routing"]),
                   st.text(max_size=20).map(lambda x: "/experiments/" + s.segment(x))),
               method=st.sampled_from(["GET", "POST", "PUT", "DELETE"]))
        def run(path: str, method: str) -> None:
            check_http("router REST paths", client.request(method, path, content=s.VALID_V2
                                                           if method in ("POST", "PUT") else None))

        run()


@st.composite
def feedback_body(draw, request_ids: list[str]) -> dict:
    body: dict = {}
    body[draw(st.sampled_from(["request_id", "request_id", "key"]))] = s.sometimes(
        draw, draw(st.sampled_from(request_ids)), st.one_of(s.TEXT, s.JSON))
    for name, values in (("reward", st.one_of(st.floats(-10, 10), s.FLOATS, s.INTS, s.JSON)),
                         ("label", st.one_of(st.sampled_from([0, 1]), s.INTS, s.JSON)),
                         ("labels", st.one_of(st.lists(st.sampled_from([0, 1]), max_size=3), s.JSON)),
                         ("outcome", st.one_of(st.sampled_from([0, 1]), s.JSON))):
        if draw(st.integers(0, 3)) == 0:
            body[name] = draw(values)
    return body


def test_feedback(router: RouterStack, client: httpx.Client) -> None:
    with guard(router, client):
        @fuzz_settings(3)
        @given(body=s.bodies(s.dumps({"request_id": router.request_ids[0], "reward": 1.0}),
                             feedback_body(router.request_ids)))
        def run(body: bytes) -> None:
            # connection: close - after a 500 (a known finding) the router drops the kept-alive connection
            check_http("router REST feedback", client.post("/feedback", content=body, headers={"connection": "close"}))
            check_http("router REST policy after feedback", client.get("/policy"))

        run()


TOKENS = st.one_of(st.just(f"Bearer {ADMIN_TOKEN}"), st.just(f"Bearer {ADMIN_TOKEN}"), st.just("Bearer"),
                   st.just(ADMIN_TOKEN), HEADER_TEXT, st.just(f"bearer {ADMIN_TOKEN}x"))


@st.composite
def yaml_doc(draw) -> bytes:
    """Deeply nested YAML flows, anchors/aliases (billion laughs), tags, and random documents."""
    kind = draw(st.sampled_from(["deep", "laughs", "tag", "random", "mapping"]))
    if kind == "deep":
        depth = draw(st.sampled_from([100, 1000, 5000, 20000]))
        return b"a: " + b"[" * depth + b"]" * depth
    if kind == "laughs":
        lines = ["a: &a [x, x, x, x, x, x, x, x, x]"] + [f"{chr(98 + i)}: &{chr(98 + i)} [" +
                                                        ", ".join([f"*{chr(97 + i)}"] * 9) + "]" for i in range(8)]
        return "\n".join(lines).encode()
    if kind == "tag":
        return draw(st.sampled_from([b"!!python/object/apply:os.system ['true']", b"a: !!binary AAAA",
                                     b"a: !!set {x}", b"--- !<tag:yaml.org,2002:str> x"]))
    if kind == "mapping":
        return yaml.safe_dump(draw(st.dictionaries(s.TEXT, s.JSON, max_size=4)), allow_unicode=True).encode()
    return draw(st.text(max_size=200)).encode()


def test_admin_routing(router: RouterStack, client: httpx.Client) -> None:
    current = client.get("/admin/routing", headers=router.admin())
    assert current.status_code == 200, current.text
    original = yaml.safe_dump(current.json()["config"] if "config" in current.json() else current.json()).encode()
    with guard(router, client):
        @fuzz_settings(2)
        @given(body=st.one_of(yaml_doc(), s.bodies(original, st.just({}))), token=TOKENS,
               content_type=st.sampled_from(["application/yaml", "application/json", "text/plain", ""]))
        def run(body: bytes, token: str, content_type: str) -> None:
            r = client.put("/admin/routing", content=body,
                           headers={"authorization": token, "content-type": content_type})
            check_http("router REST admin PUT", r)
            if r.status_code == 200:  # a mutation that is still a valid config: put the fuzzed router back
                restore = client.put("/admin/routing", content=original, headers=router.admin())
                assert restore.status_code == 200, restore.text
            check_http("router REST admin GET", client.get("/admin/routing", headers={"authorization": token}))

        run()


@pytest.fixture(scope="module")
def channel(router: RouterStack):
    ch = grpc.insecure_channel(router.grpc)
    yield ch
    ch.close()


METADATA = st.lists(st.tuples(st.sampled_from(["x-variant", "x-user-id", "x-request-id"]),
                              st.one_of(st.sampled_from(["stable", "candidate"]),
                                        st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E),
                                                max_size=100))), max_size=2)


@pytest.mark.parametrize(("method", "messages"), [(g.PREDICT, g.predict_request()),
                                                  (g.METADATA, g.metadata_request()),
                                                  (g.MODEL_INFER, g.infer_request()),
                                                  (g.MODEL_METADATA, g.infer_request())])
def test_grpc_front_messages(router: RouterStack, client: httpx.Client, channel: grpc.Channel, method: str,
                             messages) -> None:
    call = g.unary(channel, method)
    with guard(router, client):
        @fuzz_settings(2)
        @given(req=messages, metadata=METADATA)
        def run(req, metadata) -> None:
            check_grpc(f"router gRPC {method.rsplit('/', 1)[1]} message",
                       lambda: call(req.SerializeToString(), tuple(metadata)), req)

        run()


@pytest.mark.parametrize("method", [g.PREDICT, g.METADATA, g.MODEL_METADATA, g.MODEL_INFER])
def test_grpc_front_bytes(router: RouterStack, client: httpx.Client, channel: grpc.Channel, method: str) -> None:
    valid = (g.valid_infer() if "inference" in method else g.valid_predict()).SerializeToString()
    call = g.unary(channel, method)
    with guard(router, client):
        @fuzz_settings(1)
        @given(payload=g.raw_bytes(valid))
        def run(payload: bytes) -> None:
            check_grpc(f"router gRPC bytes {method.rsplit('/', 1)[1]}", lambda: call(payload), payload)

        run()


def test_client_errors_never_eject_a_variant(router: RouterStack, client: httpx.Client,
                                             channel: grpc.Channel) -> None:
    """A burst of bad requests pinned to one variant (more than outlier_detection's 5 in a row) leaves it serving:
    a client's mistake is never counted as the variant failing."""
    predict = g.unary(channel, g.PREDICT)
    with guard(router, client):
        @fuzz_settings(0.4)
        @given(requests=st.lists(st.one_of(g.predict_request(), s.v2_body()), min_size=6, max_size=10),
               variant=st.sampled_from(["stable", "candidate"]))
        def run(requests: list, variant: str) -> None:
            for req in requests:
                if isinstance(req, dict):
                    check_http("router burst pinned to a variant", client.post(
                        "/v2/models/breast-cancer/infer", content=s.dumps(req), headers={"x-variant": variant}))
                else:
                    check_grpc("router burst pinned to a variant",
                               lambda req=req: predict(req.SerializeToString(), (("x-variant", variant),)), req)
            r = client.post("/v2/models/breast-cancer/infer", content=s.VALID_V2, headers={"x-variant": variant})
            assert r.status_code == 200 and r.json()["variant"] == variant, r.text[:300]

        run()
