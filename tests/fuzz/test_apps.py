"""Fuzz: the apps' /predict (embedded, and remote calling the model server over gRPC) on real processes."""

from __future__ import annotations

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.fuzz import strategies as s
from tests.fuzz.checks import ServerGuard, check_http, fuzz_settings
from tests.fuzz.conftest import Apps

pytestmark = [pytest.mark.integration, pytest.mark.fuzz]

VALID = s.dumps({"instances": [[0.5] * s.FEATURES]})
HEADER_TEXT = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0xFF), max_size=300).map(
    lambda v: v.strip(" \t").encode("latin-1"))  # a client library refuses edge whitespace itself


@st.composite
def app_body(draw) -> dict:
    rows = draw(st.one_of(st.just([[0.5] * s.FEATURES]), s.ROWS,
                          st.lists(st.dictionaries(s.TEXT, s.FLOATS, max_size=3), max_size=3)))
    body = {s.sometimes(draw, "instances", st.sampled_from(["inputs", "rows", "Instances"])):
            s.sometimes(draw, rows, s.JSON)}
    if draw(st.booleans()):
        body[draw(s.TEXT)] = draw(s.JSON)
    return body


@pytest.mark.parametrize("which", ["embedded", "remote"])
def test_predict(apps: Apps, which: str) -> None:
    url = getattr(apps, which)
    with httpx.Client(base_url=url, timeout=30) as client:
        def still_serves() -> None:
            r = client.post("/predict", content=VALID, headers={"content-type": "application/json"})
            assert r.status_code == 200, r.text

        with ServerGuard(f"{which} app", apps.procs[which].pid, still_serves):
            @fuzz_settings(3)
            @given(body=s.bodies(VALID, app_body()),
                   headers=st.dictionaries(st.sampled_from(["x-request-id", "content-type", "x-user-id"]),
                                           st.one_of(st.sampled_from(["application/json", "text/plain",
                                                                      "application/x-www-form-urlencoded"]),
                                                     HEADER_TEXT), max_size=2))
            def run(body: bytes, headers: dict[str, str]) -> None:
                headers = {"content-type": b"application/json", **headers}  # most cases get past the 415
                check_http(f"{which} app /predict", client.post("/predict", content=body, headers=headers))

            run()

            @fuzz_settings(1)
            @given(path=s.RAW_PATHS, method=st.sampled_from(["GET", "POST", "PUT", "DELETE"]))
            def paths(path: str, method: str) -> None:
                check_http(f"{which} app paths", client.request(method, path))

            paths()
