"""Connection bounds of `services.core.http.serve` (issue #11, "no idle or header timeouts"), against
real service processes: the model server (REST and gRPC) and the embedded app.

Reproducers of the finding: idle sockets, slowloris sockets (a header byte at a time) and sockets
that send only blank lines stayed open indefinitely; here each is closed by the server. The bounds
are set short (1 s) so the test runs quickly; "closed" is awaited with a generous timeout (the
machine is shared), never timed: before the fix these sockets were never closed at all.
"""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
from collections.abc import Iterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.stack.process import ServiceProcess, free_port, http_ready
from services.stack.routed import model_server

GENEROUS_S = 60.0  # how long a socket may take to be closed on a loaded, shared machine


@pytest.fixture(scope="module")
def short_bounds(tmp_path_factory) -> Iterator[tuple[int, str]]:
    """A model server with 1 s header and keep-alive timeouts, 8 KiB heads, 1 s gRPC idle: (REST port, gRPC)."""
    proc, url = model_server("model-server-bounds", MODEL_SERVER_HTTP_HEADER_TIMEOUT_S="1",
                             MODEL_SERVER_HTTP_KEEP_ALIVE_S="1", MODEL_SERVER_HTTP_MAX_HEADER_BYTES="8192",
                             MODEL_SERVER_GRPC_MAX_CONNECTION_IDLE_S="1")
    proc.start(tmp_path_factory.mktemp("logs"))
    try:
        proc.wait_ready(120)
        yield int(proc.env["MODEL_SERVER_PORT"]), f"127.0.0.1:{proc.env['MODEL_SERVER_GRPC_PORT']}"
    finally:
        proc.stop()


def _closed_by_server(sock: socket.socket, feed: bytes = b"", every_s: float = 0.2) -> bool:
    """True once the server closes `sock` (EOF or reset), sending `feed` every `every_s` meanwhile
    (a slow client); False if it is still open after GENEROUS_S."""
    sock.settimeout(every_s)
    deadline = time.monotonic() + GENEROUS_S
    while time.monotonic() < deadline:
        try:
            if feed:
                sock.sendall(feed)
            data = sock.recv(65536)
            if data == b"":
                return True
        except TimeoutError:
            continue
        except (ConnectionResetError, BrokenPipeError):
            return True
    return False


def _many(count: int, port: int, first: bytes = b"", feed: bytes = b"") -> list[bool]:
    socks = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(count)]
    results: list[bool] = [False] * count
    try:
        if first:
            for s in socks:
                s.sendall(first)

        def watch(i: int) -> None:
            results[i] = _closed_by_server(socks[i], feed)

        threads = [threading.Thread(target=watch, args=(i,)) for i in range(count)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        for s in socks:
            s.close()
    return results


def test_idle_sockets_are_closed(short_bounds):
    port, _ = short_bounds
    assert all(_many(200, port)), "sockets that never sent a byte stayed open"


def test_slowloris_sockets_are_closed(short_bounds):
    port, _ = short_bounds
    closed = _many(20, port, first=b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n", feed=b"X")
    assert all(closed), "sockets sending a header a byte at a time stayed open"


def test_blank_line_sockets_are_closed(short_bounds):
    port, _ = short_bounds
    assert all(_many(10, port, feed=b"\r\n")), "sockets sending only blank lines stayed open"


def test_kept_alive_socket_is_closed_when_idle_and_served_before(short_bounds):
    port, _ = short_bounds
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = b""
        while b"\r\n\r\n" not in answer:
            answer += s.recv(65536)
        assert answer.startswith(b"HTTP/1.1 200"), answer
        assert _closed_by_server(s), "an idle kept-alive connection stayed open"


def test_oversized_head_gets_431_and_a_normal_request_still_works(short_bounds):
    port, _ = short_bounds
    with socket.create_connection(("127.0.0.1", port), timeout=GENEROUS_S) as s:
        s.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20_000 + b"\r\n\r\n")
        answer = b""
        while chunk := s.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 431"), answer[:200]
    assert json.loads(answer.split(b"\r\n\r\n", 1)[1])["code"] == "headers_too_large"
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=GENEROUS_S)
    conn.request("POST", "/v2/models/breast-cancer/infer", body=json.dumps(
        {"inputs": [{"name": "input", "shape": [1, 30], "datatype": "FP32", "data": [1.0] * 30}]}),
        headers={"content-type": "application/json", "x-pad": "p" * 4000})
    assert conn.getresponse().status == 200  # a large body after a head under the limit is no "large head"
    conn.close()


def test_grpc_connection_idle_is_closed(short_bounds):
    _, address = short_bounds
    states: list[grpc.ChannelConnectivity] = []
    with grpc.insecure_channel(address) as channel:
        channel.subscribe(states.append, try_to_connect=False)
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=GENEROUS_S)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        deadline = time.monotonic() + GENEROUS_S
        while time.monotonic() < deadline:
            if grpc.ChannelConnectivity.READY in states and states[-1] == grpc.ChannelConnectivity.IDLE:
                break
            time.sleep(0.2)
        assert states[-1] == grpc.ChannelConnectivity.IDLE, f"the idle connection stayed open: {states}"


# -- connection limits -----------------------------------------------------------------------


def test_over_the_grpc_connection_limit_new_connections_are_refused_and_existing_ones_keep_working(
        tmp_path_factory):
    proc, _ = model_server("model-server-grpc-limit", MODEL_SERVER_GRPC_MAX_CONNECTIONS="3")
    proc.start(tmp_path_factory.mktemp("logs"))
    channels: list[grpc.Channel] = []
    try:
        proc.wait_ready(120)
        address = f"127.0.0.1:{proc.env['MODEL_SERVER_GRPC_PORT']}"

        def check(channel: grpc.Channel) -> grpc.StatusCode:
            try:
                health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
            except grpc.RpcError as exc:
                return exc.code()
            return grpc.StatusCode.OK

        # A local subchannel pool per channel: one TCP connection each (the global pool would share one).
        channels = [grpc.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)])
                    for _ in range(4)]
        assert [check(c) for c in channels[:3]] == [grpc.StatusCode.OK] * 3
        assert check(channels[3]) == grpc.StatusCode.UNAVAILABLE  # the fourth connection is closed on arrival
        assert [check(c) for c in channels[:3]] == [grpc.StatusCode.OK] * 3
        channels[0].close()
        deadline = time.monotonic() + GENEROUS_S
        while check(channels[3]) != grpc.StatusCode.OK and time.monotonic() < deadline:
            time.sleep(0.5)  # once one closed, the newcomer gets in (on its next attempt)
        assert check(channels[3]) == grpc.StatusCode.OK
    finally:
        for c in channels:
            c.close()
        proc.stop()



LIMIT = 8


@pytest.fixture
def limited_app(start_service) -> int:
    """The embedded app with at most LIMIT connections (and timeouts long enough not to interfere)."""
    port = free_port()
    start_service(ServiceProcess(
        "embedded-limited", ["-m", "services.apps.embedded"],
        env={"EMBEDDED_PORT": str(port), "EMBEDDED_HTTP_MAX_CONNECTIONS": str(LIMIT),
             "EMBEDDED_HTTP_HEADER_TIMEOUT_S": "120", "EMBEDDED_HTTP_KEEP_ALIVE_S": "120"},
        ready=http_ready(f"http://127.0.0.1:{port}/readyz"),
    ), 120)
    return port


def _get(conn: http.client.HTTPConnection, path: str) -> tuple[int, bytes, str | None]:
    conn.request("GET", path)
    resp = conn.getresponse()
    return resp.status, resp.read(), resp.getheader("retry-after")


def test_over_the_connection_limit_new_connections_get_503_and_existing_ones_keep_working(limited_app):
    port = limited_app
    existing = http.client.HTTPConnection("127.0.0.1", port, timeout=GENEROUS_S)
    assert _get(existing, "/healthz")[0] == 200
    fillers = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(LIMIT)]
    try:
        newcomer = http.client.HTTPConnection("127.0.0.1", port, timeout=GENEROUS_S)
        status, body, retry_after = _get(newcomer, "/healthz")
        newcomer.close()
        assert status == 503, body
        assert json.loads(body)["code"] == "overloaded" and retry_after == "1"
        for _ in range(3):  # the connection admitted before the limit was reached is still served
            assert _get(existing, "/healthz")[0] == 200
    finally:
        for s in fillers:
            s.close()
    deadline = time.monotonic() + GENEROUS_S
    while True:  # once the fillers are gone, new connections are served again
        fresh = http.client.HTTPConnection("127.0.0.1", port, timeout=GENEROUS_S)
        status = _get(fresh, "/healthz")[0]
        fresh.close()
        if status == 200 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert status == 200
    existing.close()
