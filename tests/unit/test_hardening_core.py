"""The hardening helpers of services.core (issue #11 part 2) and the routing config's YAML bounds, as
pure functions and, for Starlette's routing answers, through the ASGI app (a process adds nothing)."""

from __future__ import annotations

import pytest
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from services.apps.embedded import EmbeddedSettings
from services.core.errors import (
    MAX_MESSAGE_CHARS,
    InvalidInput,
    UnsupportedMediaType,
    echo,
)
from services.core.http import (
    EXCEPTION_HANDLERS,
    JSON_ONLY,
    PROTOCOL_BODIES,
    check_content_type,
    client_request_id,
)
from services.core.settings import GrpcServerSettings
from services.model_server.settings import ModelServerSettings
from services.router.config import MAX_YAML_DEPTH, RoutingConfigError, parse_config
from services.supervisor.settings import SupervisorSettings


def test_echo_bounds_a_client_value_and_names_its_length():
    assert echo("serving_default") == "'serving_default'"
    long = echo("s" * 10_000)
    assert len(long) < 100 and "10000 characters" in long


def test_every_error_message_is_bounded():
    exc = InvalidInput("unknown thing " + "x" * 50_000)
    assert len(exc.message) <= MAX_MESSAGE_CHARS and exc.message.endswith("(truncated)")
    assert len(exc.to_dict()["error"]) <= MAX_MESSAGE_CHARS


@pytest.mark.parametrize("value", ["application/json", "Application/JSON; charset=utf-8", b"application/json",
                                   "application/vnd.api+json"])
def test_json_only_accepts_json(value):
    check_content_type(value, JSON_ONLY)


@pytest.mark.parametrize("value", [None, "", "text/plain", "application/x-www-form-urlencoded",
                                   "multipart/form-data; boundary=x", "text/json+x", "application/xml"])
def test_json_only_refuses_the_rest_with_415_naming_the_type(value):
    with pytest.raises(UnsupportedMediaType) as err:
        check_content_type(value, JSON_ONLY)
    assert err.value.http_status == 415 and err.value.field == "Content-Type"
    assert "application/json" in err.value.message


@pytest.mark.parametrize("value", [None, "", "application/json", "application/octet-stream",
                                   "application/x-www-form-urlencoded"])
def test_protocol_endpoints_accept_what_protocol_clients_send(value):
    check_content_type(value, PROTOCOL_BODIES, missing_ok=True)


@pytest.mark.parametrize("value", ["text/plain", "multipart/form-data; boundary=x", "text/html", "image/png"])
def test_protocol_endpoints_refuse_other_types(value):
    with pytest.raises(UnsupportedMediaType):
        check_content_type(value, PROTOCOL_BODIES, missing_ok=True)


def test_client_request_id_keeps_a_sane_id_and_replaces_anything_else():
    assert client_request_id("order-42:a.b_c") == "order-42:a.b_c"
    assert client_request_id(b"abc") == "abc"
    for bad in ["r" * 129, "id-\x80\xff", "has space", 'q"<', "", None, b"\xff\xfe"]:
        fresh = client_request_id(bad)
        assert fresh != bad and 1 <= len(fresh) <= 128 and fresh.isascii() and fresh.isalnum()


def test_http_bounds_are_settings_of_every_service_and_grpc_bounds_become_options():
    for settings_class in (ModelServerSettings, EmbeddedSettings, SupervisorSettings):
        fields = settings_class.model_fields
        for name in ("http_header_timeout_s", "http_keep_alive_s", "http_max_header_bytes", "http_max_connections"):
            assert fields[name].description, name  # documented (the chart renders the description)
    assert issubclass(ModelServerSettings, GrpcServerSettings)
    options = dict(GrpcServerSettings(grpc_max_connection_idle_s=1.5).grpc_connection_options())
    assert options["grpc.max_connection_idle_ms"] == 1500 and options["grpc.max_concurrent_streams"] == 256


def test_starlette_routing_answers_are_json_errors():
    async def hello(_):
        return PlainTextResponse("hi")

    app = Starlette(routes=[Route("/hello", hello)], exception_handlers=EXCEPTION_HANDLERS)
    with TestClient(app) as client:
        missing = client.get("/nowhere")
        assert missing.status_code == 404 and missing.json()["code"] == "not_found"
        wrong = client.post("/hello")
        assert wrong.status_code == 405 and wrong.json()["code"] == "method_not_allowed"
        assert "GET" in wrong.headers["allow"]


@pytest.mark.parametrize("text", ["name: " + "[" * 5000 + "]" * 5000, "name: " + "{a: " * 2000 + "1" + "}" * 2000,
                                  "- " * 3000 + "x", "a:\n" + "".join("  " * i + "- \n" for i in range(1, 200))])
def test_deep_yaml_is_refused_before_it_is_built(text):
    with pytest.raises(RoutingConfigError) as err:
        parse_config(text, "body")
    assert err.value.http_status == 400 and f"nested deeper than {MAX_YAML_DEPTH}" in err.value.message


def test_alias_bombs_are_refused_before_they_are_built():
    text = "a: &a [" + ",".join(["x"] * 10) + "]\n" + "".join(
        f"{c}: &{c} [" + ",".join([f"*{p}"] * 10) + "]\n" for p, c in zip("abcdefg", "bcdefgh", strict=True))
    with pytest.raises(RoutingConfigError) as err:
        parse_config(text, "body")
    assert "expands to more than" in err.value.message


def test_a_real_config_with_an_anchor_still_parses():
    text = """
name: bc
model: breast-cancer
defaults: &d {model: breast-cancer, timeout_s: 1.0}
"""
    with pytest.raises(RoutingConfigError) as err:  # `defaults` is no key of the config: named, not a crash
        parse_config(text, "body")
    assert "defaults: unknown key" in err.value.message
    ok = """
name: bc
variants:
  stable: &v {url: "http://127.0.0.1:1", model: breast-cancer, version: 1}
  candidate: {url: "http://127.0.0.1:2", model: breast-cancer, version: 2}
policy: {kind: canary, params: {weights: {stable: 90, candidate: 10}}}
fallback: stable
"""
    assert parse_config(ok, "body").name == "bc"
