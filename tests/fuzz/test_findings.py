"""Regressions for what the fuzzing found, minimised. Each is a strict xfail while the fix belongs to another
area: when the owner fixes it the test XPASSes, which fails the run, and the xfail marker (and the matching
entry of checks.KNOWN_FINDINGS) is deleted with the fix."""

from __future__ import annotations

import grpc
import httpx
import pytest

from tests.fuzz import grpc_cases as g
from tests.fuzz.conftest import ADMIN_TOKEN, Apps, RouterStack
from tests.integration.model_server_helpers import Server

pytestmark = [pytest.mark.integration, pytest.mark.fuzz]


def assert_json_error(r: httpx.Response, *statuses: int) -> None:
    assert r.status_code in statuses, f"{r.status_code} {r.text[:200]!r}"
    body = r.json()  # raises on a plain-text body
    assert isinstance(body.get("error"), str) and body["error"]


@pytest.mark.parametrize(("method", "path", "status"), [("GET", "/", 404), ("GET", "/v3", 404),
                                                        ("PUT", "/v2/models/breast-cancer", 405)])
def test_model_server_unrouted_answers_json(model_server: Server, method: str, path: str, status: int) -> None:
    assert_json_error(httpx.request(method, model_server.rest + path, timeout=30), status)


@pytest.mark.parametrize(("method", "path", "status"), [("GET", "/", 404), ("GET", "/predict", 405)])
def test_apps_unrouted_answers_json(apps: Apps, method: str, path: str, status: int) -> None:
    assert_json_error(httpx.request(method, apps.embedded + path, timeout=30), status)


def test_router_feedback_deep_json_is_a_400(router: RouterStack) -> None:
    r = httpx.post(router.url + "/feedback", content=b"[" * 5000 + b"]" * 5000, timeout=30,
                   headers={"connection": "close"})
    assert_json_error(r, 400)


@pytest.mark.parametrize("depth", [1000, 5000])
def test_router_admin_deep_yaml_is_a_400(router: RouterStack, depth: int) -> None:
    r = httpx.put(router.url + "/admin/routing", content=b"a: " + b"[" * depth + b"]" * depth, timeout=30,
                  headers={"authorization": f"Bearer {ADMIN_TOKEN}", "connection": "close"})
    assert_json_error(r, 400, 413)


def test_del_in_a_header_value_answers_json(router: RouterStack) -> None:
    r = httpx.post(router.url + "/v2/models/breast-cancer/infer", content=b"{}", timeout=30,
                   headers={"x-request-id": b"a\x7fb"})
    assert_json_error(r, 400)


def test_router_grpc_front_serves_tfs_metadata(router: RouterStack) -> None:
    with grpc.insecure_channel(router.grpc) as ch:
        g.unary(ch, g.METADATA)(g.metadata_request_valid().SerializeToString())


@pytest.mark.parametrize("shape", [[0, 2**61], [2**61, 0], [0, 2**63 - 1]])
def test_oip_zero_element_tensor_with_a_huge_dimension_is_invalid_argument(model_server: Server,
                                                                           shape: list[int]) -> None:
    """Found at 20x (make fuzz): numpy's reshape refused the shape inside the OIP codec -> INTERNAL. Fixed in
    services/protocols/oip/tensors.py (the shape is checked before any array is built)."""
    from services.protocols.oip import open_inference_pb2 as oip

    req = oip.ModelInferRequest(model_name="breast-cancer")
    req.inputs.add(name="input", datatype="FP32", shape=shape).contents.SetInParent()
    with grpc.insecure_channel(model_server.grpc) as ch, pytest.raises(grpc.RpcError) as err:
        g.unary(ch, g.MODEL_INFER)(req.SerializeToString())
    assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "too large" in err.value.details()
