"""Fuzz: the model server's REST API (KServe V2 and TF Serving REST) on a real process."""

from __future__ import annotations

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.fuzz import strategies as s
from tests.fuzz.checks import ServerGuard, check_http, fuzz_settings
from tests.integration.model_server_helpers import Server

pytestmark = [pytest.mark.integration, pytest.mark.fuzz]


def guard(server: Server, client: httpx.Client) -> ServerGuard:
    def still_serves() -> None:
        r = client.post("/v2/models/breast-cancer/infer", content=s.VALID_V2)
        assert r.status_code == 200, r.text
        r = client.post("/v1/models/breast-cancer:predict", content=s.VALID_TFS)
        assert r.status_code == 200, r.text

    return ServerGuard("model-server", server.proc.pid, still_serves)


def test_v2_infer_bodies(model_server: Server) -> None:
    with httpx.Client(base_url=model_server.rest, timeout=30) as client, guard(model_server, client):
        @fuzz_settings(4)
        @given(body=s.bodies(s.VALID_V2, s.v2_body()), version=st.sampled_from(["", "/versions/1", "/versions/2"]))
        def run(body: bytes, version: str) -> None:
            check_http("model-server REST V2 infer body",
                       client.post(f"/v2/models/breast-cancer{version}/infer", content=body,
                                   headers={"content-type": "application/json"}))

        run()


def test_tfs_rest_bodies(model_server: Server) -> None:
    with httpx.Client(base_url=model_server.rest, timeout=30) as client, guard(model_server, client):
        @fuzz_settings(3)
        @given(body=s.bodies(s.VALID_TFS, s.tfs_body()),
               verb=st.sampled_from([":predict", ":classify", ":regress", "/versions/1:predict"]))
        def run(body: bytes, verb: str) -> None:
            check_http("model-server REST TFS body", client.post(f"/v1/models/breast-cancer{verb}", content=body))

        run()


def test_paths_and_methods(model_server: Server) -> None:
    with httpx.Client(base_url=model_server.rest, timeout=30) as client, guard(model_server, client):
        @fuzz_settings(4)
        @given(path=st.one_of(s.v2_path(), s.tfs_path(), s.RAW_PATHS),
               method=st.sampled_from(["GET", "POST", "PUT", "DELETE", "HEAD"]),
               body=st.one_of(st.just(s.VALID_V2), st.just(s.VALID_TFS), st.binary(max_size=50)))
        def run(path: str, method: str, body: bytes) -> None:
            r = client.request(method, path, content=body if method in ("POST", "PUT") else None)
            if method == "HEAD":  # no body by definition: only the status is checked
                assert r.status_code < 500, f"HEAD {path} -> {r.status_code}"
                return
            check_http("model-server REST paths", r)

        run()
