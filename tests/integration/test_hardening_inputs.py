"""Hostile input at the HTTP and gRPC fronts (issue #11 part 2), against real processes: two model
servers (the routed tests' shared `servers`), a router in front of them with its gRPC port, and the
embedded app. Each test reproduces a finding of the fuzzing run and fails without its fix:

- a 10 kB TF Serving `signature_name` overflowed gRPC metadata in the error (the client saw a
  transport error, not INVALID_ARGUMENT) and, through the router, counted as a variant failure;
- deeply nested YAML on `PUT /admin/routing` answered 500 (RecursionError); the admin body was
  bounded only by the 1 MiB inference limit;
- the app echoed `x-request-id` unvalidated (10 kB values, raw 0x80-0xFF bytes);
- the app parsed text/plain and form bodies as JSON; so did the model server (and the router, by
  passing them through).
"""

from __future__ import annotations

import json
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
import yaml

from services.protocols.tfs import model_pb2, predict_pb2
from services.protocols.tfs.tensors import from_numpy
from services.router.grpc_predict import PREDICT
from services.stack.demo_routed import v2_body
from services.stack.process import ServiceProcess, free_port, http_ready
from services.stack.routed import router_process

pytestmark = pytest.mark.integration

TOKEN = "hardening-token"
ROW = [12.75, 16.7, 82.51, 493.8, 0.1125, 0.1117, 0.0388, 0.02995, 0.212, 0.06623, 0.3834, 1.003, 2.495, 28.62,
       0.007509, 0.01561, 0.01977, 0.009199, 0.01805, 0.003629, 14.45, 21.74, 93.63, 624.1, 0.1475, 0.1979, 0.1423,
       0.08045, 0.3071, 0.08557]
EJECT_AFTER = 2


def routing(servers: dict[str, str]) -> dict[str, Any]:
    variants = {name: {"url": servers[name], "grpc": servers[f"{name}-grpc"], "model": "breast-cancer",
                       "version": version, "timeout_s": 5.0}
                for name, version in (("stable", 1), ("candidate", 2))}
    return {"name": "bc", "model": "breast-cancer", "variants": variants,
            "policy": {"kind": "canary", "params": {"weights": {"stable": 50, "candidate": 50}}},
            "fallback": "stable",
            "outlier_detection": {"consecutive_failures": EJECT_AFTER, "base_ejection_s": 60, "max_ejection_s": 60}}


@pytest.fixture(scope="module")
def router(servers, tmp_path_factory) -> Iterator[tuple[str, int]]:
    """(REST URL, gRPC port) of a router in front of `servers`, with an admin token."""
    tmp = tmp_path_factory.mktemp("router")
    config_path = tmp / "routing.yaml"
    config_path.write_text(yaml.safe_dump(routing(servers), sort_keys=False))
    grpc_port = free_port()
    proc, url = router_process(config_path, None, name="router-hardening", ROUTER_ADMIN_TOKEN=TOKEN,
                               ROUTER_GRPC_PORT=str(grpc_port), ROUTER_ADMIN_WRITES_CONFIG="false")
    proc.start(tmp / "logs")
    try:
        proc.wait_ready(120)
        yield url, grpc_port
    finally:
        proc.stop()


def predict_request(signature_name: str = "") -> predict_pb2.PredictRequest:
    req = predict_pb2.PredictRequest(model_spec=model_pb2.ModelSpec(name="breast-cancer",
                                                                    signature_name=signature_name))
    req.inputs["input"].CopyFrom(from_numpy(np.asarray([ROW], dtype=np.float32)))
    return req


def predict_call(address: str) -> tuple[grpc.Channel, Callable[..., Any]]:
    channel = grpc.insecure_channel(address)
    return channel, channel.unary_unary(PREDICT, request_serializer=predict_pb2.PredictRequest.SerializeToString,
                                        response_deserializer=predict_pb2.PredictResponse.FromString)


def variant_health(url: str, name: str) -> dict[str, Any]:
    status = httpx.get(f"{url}/policy", headers={"authorization": f"Bearer {TOKEN}"}, timeout=30).json()
    return status["variants"][name]


# -- signature_name --------------------------------------------------------------------------


@pytest.mark.parametrize("length", [200, 10_000])
def test_long_signature_name_is_invalid_argument_at_the_model_server(servers, length):
    channel, predict = predict_call(servers["stable-grpc"])
    with channel, pytest.raises(grpc.RpcError) as err:
        predict(predict_request("s" * length), timeout=30)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
    assert "signature_name" in err.value.details() and len(err.value.details()) < 1000


@pytest.mark.parametrize("length", [200, 10_000])
def test_long_signature_name_through_the_router_never_counts_against_the_variant(router, length):
    url, grpc_port = router
    channel, predict = predict_call(f"127.0.0.1:{grpc_port}")
    with channel:
        for _ in range(EJECT_AFTER + 3):
            with pytest.raises(grpc.RpcError) as err:
                predict(predict_request("s" * length), metadata=(("x-variant", "candidate"),), timeout=30)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
            assert "signature_name" in err.value.details() and len(err.value.details()) < 1000
        health = variant_health(url, "candidate")
        assert health["ejected"] is False and health["consecutive_failures"] == 0
        reply, call = predict.with_call(predict_request(), metadata=(("x-variant", "candidate"),), timeout=30)
        assert dict(call.trailing_metadata())["x-variant"] == "candidate" and "label" in reply.outputs


def test_long_names_in_errors_are_bounded(router, servers):
    _, grpc_port = router
    for address in (f"127.0.0.1:{grpc_port}", servers["stable-grpc"]):
        channel, predict = predict_call(address)
        req = predict_request()
        req.model_spec.name = "m" * 10_000  # echoed in "not routed here" / "no such model"
        with channel, pytest.raises(grpc.RpcError) as err:
            predict(req, timeout=30)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND, err.value.details()
        assert len(err.value.details()) <= 1000


# -- admin API -------------------------------------------------------------------------------


def test_deeply_nested_yaml_on_the_admin_api_is_400_naming_the_nesting(router):
    url, _ = router
    admin = {"authorization": f"Bearer {TOKEN}"}
    for body in ("name: " + "[" * 5000 + "]" * 5000, "name: " + "{a: " * 3000 + "1" + "}" * 3000):
        r = httpx.put(f"{url}/admin/routing", content=body, headers=admin, timeout=60)
        assert r.status_code == 400, r.text
        assert "nested deeper than" in r.json()["error"]
    laughs = "a: &a [" + ",".join(["x"] * 10) + "]\n" + "".join(
        f"{c}: &{c} [" + ",".join([f"*{p}"] * 10) + "]\n" for p, c in zip("abcdefg", "bcdefgh", strict=True))
    r = httpx.put(f"{url}/admin/routing", content=laughs, headers=admin, timeout=60)
    assert r.status_code == 400 and "expands to more than" in r.json()["error"], r.text
    r = httpx.put(f"{url}/admin/routing", content="name: x\n" + "#" * 70_000, headers=admin, timeout=60)
    assert r.status_code == 413 and r.json()["field"] == "body", r.text
    assert httpx.get(f"{url}/v2/health/ready", timeout=30).status_code == 200


# -- x-request-id ----------------------------------------------------------------------------


def raw_post(port: int, path: str, headers: bytes, body: bytes) -> tuple[int, dict[str, bytes], bytes]:
    """POST with header bytes as given (httpx refuses non-ASCII header values)."""
    with socket.create_connection(("127.0.0.1", port), timeout=60) as s:
        s.sendall(b"POST " + path.encode() + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n" + headers
                  + b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, payload = data.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    fields = dict(line.split(b": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), {k.lower().decode(): v for k, v in fields.items()}, payload


BAD_IDS = [b"r" * 10_000, b"id-\x80\xff\xfe", b"has space", b"quote\"<script>"]


@pytest.fixture(scope="module")
def app_port(tmp_path_factory) -> Iterator[int]:
    port = free_port()
    proc = ServiceProcess("embedded-hardening", ["-m", "services.apps.embedded"],
                          env={"EMBEDDED_PORT": str(port), "EMBEDDED_MODEL_VERSION": "2"},
                          ready=http_ready(f"http://127.0.0.1:{port}/readyz"))
    proc.start(Path(tmp_path_factory.mktemp("app-logs")))
    try:
        proc.wait_ready(120)
        yield port
    finally:
        proc.stop()


def test_app_replaces_a_malformed_request_id_and_keeps_a_good_one(app_port):
    body = json.dumps({"instances": [ROW]}).encode()
    for bad in BAD_IDS:
        status, headers, payload = raw_post(app_port, "/predict", b"Content-Type: application/json\r\n"
                                            b"X-Request-Id: " + bad + b"\r\n", body)
        assert status == 200, payload
        echoed = headers["x-request-id"]
        assert echoed != bad and len(echoed) <= 128 and echoed.isascii()
        assert json.loads(payload)["request_id"] == echoed.decode()
    status, headers, payload = raw_post(app_port, "/predict", b"Content-Type: application/json\r\n"
                                        b"X-Request-Id: order-42:a.b_c\r\n", body)
    assert status == 200 and headers["x-request-id"] == b"order-42:a.b_c"


def test_router_replaces_a_malformed_request_id(router):
    url, grpc_port = router
    port = int(url.rsplit(":", 1)[1])
    body = json.dumps(v2_body(ROW)).encode()
    for bad in (b"r" * 10_000, b"id-\x80\xff\xfe"):
        status, headers, payload = raw_post(port, "/v2/models/breast-cancer/infer",
                                            b"Content-Type: application/json\r\nX-Request-Id: " + bad + b"\r\n", body)
        assert status == 200, payload
        assert headers["x-request-id"] != bad and len(headers["x-request-id"]) <= 128
        assert headers["x-request-id"].isascii()
    channel, predict = predict_call(f"127.0.0.1:{grpc_port}")
    with channel:
        _, call = predict.with_call(predict_request(), metadata=(("x-request-id", "r" * 4000),), timeout=30)
        rid = dict(call.initial_metadata())["x-request-id"]
    assert rid != "r" * 4000 and len(rid) <= 128


# -- media types -----------------------------------------------------------------------------


NOT_JSON = ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", "text/html"]


def test_app_requires_application_json(app_port):
    body = json.dumps({"instances": [ROW]})
    url = f"http://127.0.0.1:{app_port}/predict"
    for media in NOT_JSON:
        r = httpx.post(url, content=body, headers={"content-type": media}, timeout=60)
        assert r.status_code == 415, (media, r.text)
        assert r.json()["code"] == "unsupported_media_type" and media.split(";")[0] in r.json()["error"]
    r = httpx.post(url, content=body, timeout=60)  # no Content-Type at all
    assert r.status_code == 415 and "application/json" in r.json()["error"]
    for media in ("application/json", "application/json; charset=utf-8"):
        assert httpx.post(url, content=body, headers={"content-type": media}, timeout=60).status_code == 200


REFUSED = ["text/plain", "multipart/form-data; boundary=x", "text/html", "application/xml"]
ACCEPTED = [None, "application/json", "application/json; charset=utf-8", "application/octet-stream",
            "application/x-www-form-urlencoded"]  # none: tritonclient.http; form: curl -d's default label


def test_model_server_and_router_refuse_non_json_bodies_and_accept_what_protocol_clients_send(servers, router):
    url, _ = router
    v2 = json.dumps(v2_body(ROW))
    v1 = json.dumps({"instances": [ROW]})
    targets = [(f"{servers['stable']}/v2/models/breast-cancer/infer", v2),
               (f"{servers['stable']}/v1/models/breast-cancer:predict", v1),
               (f"{url}/v2/models/breast-cancer/infer", v2)]
    for target, body in targets:
        for media in REFUSED:
            r = httpx.post(target, content=body, headers={"content-type": media, "x-variant": "candidate"},
                           timeout=60)
            assert r.status_code == 415, (target, media, r.text)
            assert r.json()["code"] == "unsupported_media_type"
        for media in ACCEPTED:
            headers = {"content-type": media} if media else {}
            r = httpx.post(target, content=body, headers=headers, timeout=60)
            assert r.status_code == 200, (target, media, r.text)
    health = variant_health(url, "candidate")  # a client's 415 never counts against the variant
    assert health["ejected"] is False and health["consecutive_failures"] == 0


def test_model_server_v2_id_is_bounded(servers):
    target = f"{servers['stable']}/v2/models/breast-cancer/infer"
    for bad in ("i" * 300, {"nested": [1, 2]}, 42):
        r = httpx.post(target, json={**v2_body(ROW), "id": bad}, timeout=60)
        assert r.status_code == 400 and r.json()["field"] == "id", r.text
    r = httpx.post(target, json={**v2_body(ROW), "id": "req-1"}, timeout=60)
    assert r.status_code == 200 and r.json()["id"] == "req-1"


# -- found on the way: TF Serving GetModelMetadata on the router's gRPC port ----------------------


def test_router_grpc_front_serves_tf_serving_metadata_from_the_variant(router):
    from services.protocols.tfs import get_model_metadata_pb2
    from services.router.grpc_predict import GET_MODEL_METADATA

    _, grpc_port = router
    with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
        call = channel.unary_unary(
            GET_MODEL_METADATA, request_serializer=get_model_metadata_pb2.GetModelMetadataRequest.SerializeToString,
            response_deserializer=get_model_metadata_pb2.GetModelMetadataResponse.FromString)

        def ask(version: int | None) -> get_model_metadata_pb2.GetModelMetadataResponse:
            spec = model_pb2.ModelSpec(name="breast-cancer")
            if version is not None:
                spec.version.value = version
            return call(get_model_metadata_pb2.GetModelMetadataRequest(model_spec=spec,
                                                                         metadata_field=["signature_def"]), timeout=30)

        assert ask(None).model_spec.version.value == 1  # the fallback (stable) answers
        reply = ask(2)  # the version pins the variant serving it
        assert reply.model_spec.version.value == 2 and "signature_def" in reply.metadata
        with pytest.raises(grpc.RpcError) as err:
            ask(7)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND and "not routed here" in err.value.details()
