"""The benchmark's load generator: lean closed-loop clients, one per protocol, and the CPU meter.

Why not Locust here: on a 2-core machine the client competes with the server for CPU, and what we
measure is the server. Locust (gevent, per-request stats and events) spends several times more
CPU per request than these clients (the benchmark measures both, see `calibrate_locust` in
`__main__`), so these clients do as little as possible per request:

- HTTP/1.1 (`run_http`): one keep-alive TCP connection per in-flight request on uvloop, the
  request bytes built once, the response parsed only as far as the status line and
  Content-Length (or chunked framing). Every response's status is checked; the first response
  body of each run is checked in full by the caller.
- gRPC (`run_grpc`): one channel (HTTP/2, as gRPC clients use it) with N unary calls in flight
  through grpcio's future API, the request serialized once and the response left as bytes.
  (`run_grpc_aio`, the same loop on grpc.aio, costs more client CPU per call; the benchmark's
  calibration step measures both.)

Closed loop: each of the N workers sends its next request as soon as the previous one is answered,
so N is the number of requests in flight. Warm-up first, then a measured window: a request counts
(and its latency is kept) when it completes inside the window. CPU time of the server's process
tree and of this process is read at the window's edges.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import numpy as np
import psutil


@dataclass
class Measurement:
    requests: int = 0
    errors: int = 0
    window_s: float = 0.0
    latencies_ns: list[int] = field(default_factory=list)
    server_cpu_s: float | None = None
    client_cpu_s: float = 0.0
    first_error: str | None = None
    first_body: bytes | None = None

    @property
    def throughput(self) -> float:
        return self.requests / self.window_s if self.window_s else 0.0

    def percentiles_ms(self) -> tuple[float, float, float]:
        if not self.latencies_ns:
            return (float("nan"),) * 3
        p50, p95, p99 = np.percentile(np.asarray(self.latencies_ns, dtype=np.float64), [50, 95, 99]) / 1e6
        return float(p50), float(p95), float(p99)


class CpuMeter:
    """CPU seconds (user + system) of a process and all its descendants, e.g. MLServer's workers."""

    def __init__(self, pid: int | None) -> None:
        self.process = psutil.Process(pid) if pid else None

    def read(self) -> float | None:
        if self.process is None:
            return None
        total = 0.0
        try:
            procs = [self.process, *self.process.children(recursive=True)]
        except psutil.NoSuchProcess:
            return None
        for proc in procs:
            try:
                t = proc.cpu_times()
            except psutil.NoSuchProcess:
                continue
            total += t.user + t.system
        return total


async def _closed_loop(
    call: Callable[[], Awaitable[tuple[bool, bytes | None, str | None]]],
    concurrency: int,
    warmup_s: float,
    duration_s: float,
    meter: CpuMeter,
) -> Measurement:
    m = Measurement()
    window = [float("inf"), float("inf")]  # start, end (perf_counter_ns)
    stop = False
    perf = time.perf_counter_ns
    latencies = m.latencies_ns

    async def worker() -> None:
        nonlocal stop
        while not stop:
            t0 = perf()
            ok, body, error = await call()
            t1 = perf()
            if window[0] <= t1 <= window[1]:
                m.requests += 1
                latencies.append(t1 - t0)
                if not ok:
                    m.errors += 1
            if not ok and m.first_error is None:
                m.first_error = error
            if ok and body is not None and m.first_body is None:
                m.first_body = body

    tasks = [asyncio.create_task(worker()) for _ in range(concurrency)]
    try:
        await asyncio.sleep(warmup_s)
        cpu0, client0 = meter.read(), time.process_time()
        start = perf()
        window[0], window[1] = start, start + int(duration_s * 1e9)
        await asyncio.sleep(duration_s)
        end = perf()
        cpu1, client1 = meter.read(), time.process_time()
        window[1] = min(window[1], end)
        m.window_s = (window[1] - window[0]) / 1e9
        m.client_cpu_s = client1 - client0
        m.server_cpu_s = cpu1 - cpu0 if cpu0 is not None and cpu1 is not None else None
    finally:
        stop = True
        done, pending = await asyncio.wait(tasks, timeout=30)
        for t in pending:
            t.cancel()
        for t in done:
            if t.exception() is not None and m.first_error is None:
                m.first_error = repr(t.exception())
    return m


# -- HTTP/1.1 keep-alive ----------------------------------------------------------------------


class _HttpConnection(asyncio.Protocol):
    """One keep-alive connection with at most one request in flight."""

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.waiter: asyncio.Future | None = None
        self.transport: asyncio.Transport | None = None
        self.closed: Exception | None = None

    def connection_made(self, transport) -> None:
        self.transport = transport

    def connection_lost(self, exc) -> None:
        self.closed = exc or ConnectionError("connection closed by the server")
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(self.closed)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if self.waiter is None or self.waiter.done():
            return
        parsed = _parse_response(self.buffer)
        if parsed is not None:
            status, body, consumed = parsed
            del self.buffer[:consumed]
            self.waiter.set_result((status, body))

    async def request(self, raw: bytes) -> tuple[int, bytes]:
        if self.closed is not None:
            raise self.closed
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(raw)
        return await self.waiter


def _parse_response(buf: bytearray) -> tuple[int, bytes, int] | None:
    """(status, body, bytes consumed) once a whole response is in `buf`, else None."""
    head_end = buf.find(b"\r\n\r\n")
    if head_end < 0:
        return None
    head = bytes(buf[:head_end]).lower()
    status = int(head[9:12])
    body_start = head_end + 4
    i = head.find(b"\r\ncontent-length:")
    if i >= 0:
        j = head.find(b"\r\n", i + 2)
        length = int(head[i + 17 : j if j >= 0 else len(head)])
        if len(buf) < body_start + length:
            return None
        return status, bytes(buf[body_start : body_start + length]), body_start + length
    if b"\r\ntransfer-encoding: chunked" in head:
        pos, body = body_start, bytearray()
        while True:
            line_end = buf.find(b"\r\n", pos)
            if line_end < 0:
                return None
            size = int(bytes(buf[pos:line_end]).split(b";")[0], 16)
            chunk_start = line_end + 2
            if len(buf) < chunk_start + size + 2:
                return None
            if size == 0:
                return status, bytes(body), chunk_start + 2
            body += buf[chunk_start : chunk_start + size]
            pos = chunk_start + size + 2
    return status, b"", body_start  # no body (e.g. 204)


def http_request_bytes(host: str, port: int, path: str, body: bytes) -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


async def run_http(host: str, port: int, path: str, body: bytes, concurrency: int, warmup_s: float,
                   duration_s: float, meter: CpuMeter) -> Measurement:
    raw = http_request_bytes(host, port, path, body)
    loop = asyncio.get_running_loop()
    connections: list[_HttpConnection] = []
    for _ in range(concurrency):
        _, proto = await loop.create_connection(_HttpConnection, host, port)
        connections.append(proto)
    free = list(connections)

    async def call() -> tuple[bool, bytes | None, str | None]:
        conn = free.pop()
        try:
            status, resp = await conn.request(raw)
        except Exception as exc:  # a dropped connection is an error; reconnect for the next call
            _, conn = await loop.create_connection(_HttpConnection, host, port)
            return False, None, repr(exc)
        finally:
            free.append(conn)
        if status != 200:
            return False, None, f"HTTP {status}: {resp[:300]!r}"
        return True, resp, None

    try:
        return await _closed_loop(call, concurrency, warmup_s, duration_s, meter)
    finally:
        for conn in connections + free:
            if conn.transport is not None:
                conn.transport.close()


# -- gRPC ---------------------------------------------------------------------------------------


def run_grpc(target: str, method: str, request: bytes, concurrency: int, warmup_s: float, duration_s: float,
             meter: CpuMeter) -> Measurement:
    """gRPC closed loop on one channel with grpcio's future API: N calls in flight, each completion
    callback (run on grpcio's own completion-queue thread) sends the next call. Cheaper per call and
    quicker to answer than grpc.aio on either event loop (see `run_grpc_aio` and the report)."""
    import threading

    import grpc

    m = Measurement()
    window = [float("inf"), float("inf")]
    perf = time.perf_counter_ns
    lock = threading.Lock()
    stopping = False
    in_flight = concurrency
    all_done = threading.Event()
    channel = grpc.insecure_channel(target)
    stub = channel.unary_unary(method)  # no (de)serializers: bytes out as serialized once, bytes back

    def fire() -> None:
        t0 = perf()
        stub.future(request, timeout=30).add_done_callback(lambda f: completed(f, t0))

    def completed(future, t0: int) -> None:
        nonlocal in_flight
        t1 = perf()
        error = future.exception()
        with lock:
            if window[0] <= t1 <= window[1]:
                m.requests += 1
                m.latencies_ns.append(t1 - t0)
                if error is not None:
                    m.errors += 1
            if error is not None and m.first_error is None:
                m.first_error = f"{error.code().name}: {error.details()}"
            if error is None and m.first_body is None:
                m.first_body = future.result()
            if stopping:
                in_flight -= 1
                if in_flight == 0:
                    all_done.set()
                return
        fire()

    try:
        for _ in range(concurrency):
            fire()
        time.sleep(warmup_s)
        cpu0, client0 = meter.read(), time.process_time()
        start = perf()
        window[0], window[1] = start, start + int(duration_s * 1e9)
        time.sleep(duration_s)
        end = perf()
        cpu1, client1 = meter.read(), time.process_time()
        window[1] = min(window[1], end)
        m.window_s = (window[1] - window[0]) / 1e9
        m.client_cpu_s = client1 - client0
        m.server_cpu_s = cpu1 - cpu0 if cpu0 is not None and cpu1 is not None else None
        with lock:
            stopping = True
        all_done.wait(30)
    finally:
        channel.close()
    return m


async def run_grpc_aio(target: str, method: str, request: bytes, concurrency: int, warmup_s: float,
                       duration_s: float, meter: CpuMeter) -> Measurement:
    """The same closed loop with grpc.aio: one channel, N coroutines. Kept for the client calibration."""
    import grpc

    async with grpc.aio.insecure_channel(target) as channel:
        stub = channel.unary_unary(method)

        async def call() -> tuple[bool, bytes | None, str | None]:
            try:
                return True, await stub(request, timeout=30), None
            except grpc.aio.AioRpcError as exc:
                return False, None, f"{exc.code().name}: {exc.details()}"

        return await _closed_loop(call, concurrency, warmup_s, duration_s, meter)
