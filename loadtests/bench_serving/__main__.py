"""`make bench-serving`: one run, one machine, every way of serving the same ONNX models, side by side.

    python -m loadtests.bench_serving            full matrix (about 13 minutes), writes reports/serving.md + PNGs
    python -m loadtests.bench_serving --quick    smoke run (about 3 minutes), writes .run/bench-quick/
    python -m loadtests.bench_serving --targets model-server-rest-off,fastapi --rows 1 --concurrency 32

Targets: in-process ONNX Runtime (the ceiling), the embedded app over HTTP, the model server over
REST, TF Serving gRPC and Open Inference Protocol gRPC with dynamic batching off and on, MLServer
1.7.1 (own venv, custom ONNX runtime) over REST and OIP gRPC with adaptive batching off and on, a
bare FastAPI endpoint and a bare grpc.aio servicer.
Matrix: light model (wine v1, logistic regression) and heavy model (wine v2, 200-tree forest) x
1-row and 64-row requests x 1, 8 and 32 requests in flight.

Not a test: it reports and never fails on a number. It exits non-zero only when it could not run.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from loadtests.bench_serving import client as lean
from loadtests.bench_serving import report, targets
from loadtests.payloads import (
    DEFAULT_REPOSITORY,
    OIP_INFER_METHOD,
    REPO_ROOT,
    TFS_PREDICT_METHOD,
    ModelRef,
    app_predict_body,
    check_app_response,
    check_oip_response,
    check_tfs_response,
    check_v2_response,
    oip_infer_request,
    rows_for,
    tfs_predict_request,
    v2_infer_body,
    v2_infer_path,
)

LIGHT = ModelRef("wine", 1)
HEAVY = ModelRef("wine", 2)
ALL_TARGETS = [
    "ort-in-process", "embedded", "model-server-rest-off", "model-server-grpc-off", "model-server-oip-off",
    "model-server-rest-on", "model-server-grpc-on", "model-server-oip-on", "fastapi", "grpc-aio", "mlserver-off",
    "mlserver-on", "mlserver-grpc-off", "mlserver-grpc-on",
]
MLSERVER_TARGETS = {"mlserver-off", "mlserver-on", "mlserver-grpc-off", "mlserver-grpc-on"}


@dataclass
class Cell:
    target: str
    label: str
    group: str
    protocol: str
    model: str
    model_kind: str
    rows: int
    concurrency: int
    requests: int
    errors: int
    window_s: float
    throughput: float
    rows_per_s: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    server_cpu_us: float | None
    client_cpu_us: float | None
    note: str = ""


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def model_kind(model: ModelRef) -> str:
    return "light" if model == LIGHT else "heavy" if model == HEAVY else str(model)


def to_cell(target: targets.Target, model: ModelRef, rows: int, concurrency: int, m: lean.Measurement,
            note: str = "") -> Cell:
    p50, p95, p99 = m.percentiles_ms()

    def per_req(seconds: float | None) -> float | None:
        return seconds / m.requests * 1e6 if m.requests and seconds is not None else None

    return Cell(
        target=target.key, label=target.label, group=target.group, protocol=target.protocol, model=str(model),
        model_kind=model_kind(model), rows=rows, concurrency=concurrency, requests=m.requests, errors=m.errors,
        window_s=round(m.window_s, 3), throughput=m.throughput, rows_per_s=m.throughput * rows, p50_ms=p50,
        p95_ms=p95, p99_ms=p99, server_cpu_us=per_req(m.server_cpu_s), client_cpu_us=per_req(m.client_cpu_s),
        note=note or (m.first_error or "")[:160],
    )


# -- the ceiling ---------------------------------------------------------------------------------


def run_ceiling(models: list[ModelRef], rows_list: list[int], warmup_s: float, duration_s: float) -> list[Cell]:
    """ONNX Runtime in this process, one thread, calls back to back: what no server can beat."""
    import onnxruntime as ort

    target = targets.Target("ort-in-process", "in-process ONNX Runtime (ceiling)", "in-process", "ceiling")
    cells = []
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    for model in models:
        session = ort.InferenceSession(str(DEFAULT_REPOSITORY / model.name / str(model.version) / "model.onnx"),
                                       options, providers=["CPUExecutionProvider"])
        for rows in rows_list:
            x = np.asarray(rows_for(model, rows), dtype=np.float32)
            feeds = {"input": x}
            end = time.perf_counter() + warmup_s
            while time.perf_counter() < end:
                session.run(None, feeds)
            m = lean.Measurement()
            perf = time.perf_counter_ns
            cpu0, t0 = time.process_time(), perf()
            stop = t0 + int(duration_s * 1e9)
            lat = m.latencies_ns
            while True:
                a = perf()
                session.run(None, feeds)
                b = perf()
                lat.append(b - a)
                if b >= stop:
                    break
            m.window_s = (perf() - t0) / 1e9
            m.requests = len(lat)
            m.server_cpu_s = time.process_time() - cpu0
            m.client_cpu_s = 0.0
            cells.append(to_cell(target, model, rows, 1, m, note="calls back to back; server CPU = this process"))
            log(f"  ceiling {model} x{rows}: {m.throughput:,.0f} calls/s, {m.throughput * rows:,.0f} rows/s")
    return cells


# -- one target ------------------------------------------------------------------------------------


def request_for(target: targets.Target, model: ModelRef, rows: int):
    """(run, check): run(concurrency, warmup_s, duration_s, meter) -> Measurement, and the answer's check."""
    if target.protocol in ("tfs", "oip"):
        if target.protocol == "tfs":
            method, raw, check = TFS_PREDICT_METHOD, tfs_predict_request(model, rows), check_tfs_response
        else:
            method, raw, check = OIP_INFER_METHOD, oip_infer_request(model, rows), check_oip_response
        request = raw.SerializeToString()

        def run_grpc(c, w, d, meter):
            return lean.run_grpc(target.url, method, request, c, w, d, meter)

        return run_grpc, check
    host, port = target.url.removeprefix("http://").split(":")
    if target.protocol == "app":
        path, body, check = "/predict", app_predict_body(model, rows), check_app_response
    else:
        path, body, check = v2_infer_path(model), v2_infer_body(model, rows), check_v2_response

    def run_http(c, w, d, meter):
        import uvloop  # the client's loop: cheaper per request than asyncio's own

        return uvloop.run(lean.run_http(host, int(port), path, body, c, w, d, meter))

    return run_http, check


def start_servers(servers: list[targets.Server], log_dir: Path) -> list[targets.Server]:
    """Start every server (all pinned to the server core; idle ones cost next to nothing); return those up."""
    up = []
    for server in servers:
        log(f"starting {server.name} ...")
        t0 = time.perf_counter()
        try:
            server.process.start(log_dir)
            server.process.wait_ready(server.ready_timeout_s)
        except Exception as exc:
            server.process.stop()
            server.notes.append(f"did not start: {str(exc).splitlines()[0][:120]}")
            log(f"  {server.name} did not start: {str(exc)[:2000]}")
            continue
        log(f"  ready in {time.perf_counter() - t0:.1f}s (pid {server.process.pid})")
        up.append(server)
    return up


def probe(server: targets.Server, target: targets.Target, model: ModelRef, rows: int) -> str | None:
    """One short call first: the answer must be right before anything is timed. None when it is."""
    run, check = request_for(target, model, rows)
    m = run(1, 0.0, 0.2, lean.CpuMeter(None))
    try:
        if m.first_body is None:
            raise ValueError(m.first_error or "no successful response")
        check(m.first_body, rows)
    except Exception as exc:
        return f"wrong answer: {str(exc)[:200]}"
    return None


def measure(servers: list[targets.Server], only: set[str], rows_list: list[int], concurrencies: list[int],
            warmup_s: float, duration_s: float, rounds: int) -> list[Cell]:
    """Every cell, in interleaved rounds; per cell the round with the highest throughput is kept.

    Interleaving (all targets for one cell, then the next cell; then the whole matrix again) spreads
    bursts from other tenants of a shared machine over all targets instead of one, and keeping the
    best round drops the cells such a burst hit.
    """
    plan = []  # (server, target, model) in report order
    for server in servers:
        for target in server.targets:
            if target.key in only:
                plan += [(server, target, model) for model in server.models]
    best: dict[tuple, Cell] = {}
    broken: dict[tuple, str] = {}
    for server, target, model in plan:
        for rows in rows_list:
            problem = probe(server, target, model, rows)
            if problem:
                log(f"  {target.key} {model} x{rows}: {problem}; skipped")
                broken[(target.key, str(model), rows)] = problem
    for r in range(rounds):
        log(f"round {r + 1} of {rounds}")
        for model in sorted({m for _, _, m in plan}, key=str):
            for rows in rows_list:
                for c in concurrencies:
                    for server, target, m_ref in plan:
                        if m_ref != model:
                            continue
                        key = (target.key, str(model), rows, c)
                        if (target.key, str(model), rows) in broken:
                            best[key] = _skipped(target, model, rows, c, broken[(target.key, str(model), rows)])
                            continue
                        run, _ = request_for(target, model, rows)
                        cell = to_cell(target, model, rows, c, run(c, warmup_s, duration_s,
                                                                   lean.CpuMeter(server.process.pid)))
                        cpu = f"{cell.server_cpu_us:,.0f}" if cell.server_cpu_us is not None else "?"
                        log(f"  {target.key:<22} {model} x{rows:<2} c={c:<2} {cell.throughput:>8,.0f} req/s  "
                            f"p50 {cell.p50_ms:6.2f}  p99 {cell.p99_ms:7.2f} ms  server {cpu} us/req  "
                            f"client {cell.client_cpu_us or 0:,.0f} us/req  errors {cell.errors}")
                        if key not in best or cell.throughput > best[key].throughput:
                            best[key] = cell
    return list(best.values())


def _skipped(target: targets.Target, model: ModelRef, rows: int, c: int, note: str) -> Cell:
    nan = float("nan")
    return Cell(target.key, target.label, target.group, target.protocol, str(model), model_kind(model), rows, c,
                0, 0, 0.0, 0.0, 0.0, nan, nan, nan, None, None, note)


# -- client calibration: Locust vs the lean client ------------------------------------------------------


def calibrate_locust(url: str, model: ModelRef, concurrency: int, duration_s: float, client_cpu: int | None,
                     server_meter: lean.CpuMeter) -> dict:
    """Locust (FastHttpUser, one process) against the same cell, to compare client cost per request."""
    with tempfile.TemporaryDirectory() as tmp:
        prefix = Path(tmp) / "locust"
        argv = [sys.executable, "-m", "locust", "-f", str(REPO_ROOT / "loadtests" / "locust_kserve_v2.py"),
                "--headless", "--only-summary", "--loglevel", "WARNING", "-u", str(concurrency), "-r", "1000",
                "-t", f"{max(2, round(duration_s + 1))}s", "--host", url, "--model", model.name,
                "--model-version", str(model.version), "--csv", str(prefix), "V2OneRow"]
        if client_cpu is not None:
            argv = ["taskset", "-c", str(client_cpu), *argv]
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        server0 = server_meter.read()
        t0 = time.perf_counter()
        proc = subprocess.run(argv, cwd=REPO_ROOT, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        server1 = server_meter.read()
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        stats_file = Path(f"{prefix}_stats.csv")
        if not stats_file.exists():
            return {"error": (proc.stderr or proc.stdout)[-500:]}
        import csv

        rows = list(csv.DictReader(stats_file.open()))
        agg = next(r for r in rows if r["Name"] == "Aggregated")
    requests = int(agg["Request Count"])
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {
        "requests": requests,
        "failures": int(agg["Failure Count"]),
        "throughput": float(agg["Requests/s"]),
        "p50_ms": float(agg["50%"]),
        "p99_ms": float(agg["99%"]),
        "client_cpu_us": cpu / requests * 1e6 if requests else None,
        "server_cpu_us": (server1 - server0) / requests * 1e6 if requests and server0 is not None else None,
        "wall_s": wall,
        "note": "includes Locust's start-up and spawn; RPS over the whole run",
    }


# -- main ---------------------------------------------------------------------------------------------


def parse_models(raw: str) -> list[ModelRef]:
    out = []
    for item in raw.split(","):
        name, _, version = item.strip().partition(":")
        out.append(ModelRef(name, int(version)))
    return out


def _exit_on_signal(signum, _frame) -> None:
    # SIGTERM/SIGHUP/SIGINT unwind through the `finally` that stops every server this run started
    # (SIGINT is ignored in a background job, so `kill` is the way to stop a run started with `&`).
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    global LIGHT, HEAVY
    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        signal.signal(sig, _exit_on_signal)
    parser = argparse.ArgumentParser(prog="python -m loadtests.bench_serving", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: short cells, concurrency 1 and 32")
    parser.add_argument("--warmup", type=float, default=None, help="seconds of warm-up per cell (default 0.5)")
    parser.add_argument("--duration", type=float, default=None, help="measured seconds per cell (default 2.5)")
    parser.add_argument("--rounds", type=int, default=None,
                        help="interleaved rounds over the matrix; best round per cell is kept (default 2, quick 1)")
    parser.add_argument("--targets", default=",".join(ALL_TARGETS), help="comma-separated; default all")
    parser.add_argument("--models", default=f"{LIGHT.name}:{LIGHT.version},{HEAVY.name}:{HEAVY.version}",
                        help="light,heavy as name:version (default wine:1,wine:2)")
    parser.add_argument("--rows", default="1,64", help="rows per request (default 1,64)")
    parser.add_argument("--concurrency", default=None, help="requests in flight (default 1,8,32)")
    parser.add_argument("--no-pin", action="store_true", help="do not pin client and server to separate cores")
    parser.add_argument("--client-cpu", type=int, default=0)
    parser.add_argument("--server-cpu", type=int, default=1)
    parser.add_argument("--skip-calibration", action="store_true", help="skip the Locust-vs-lean client comparison")
    parser.add_argument("--out", type=Path, default=None,
                        help="report folder (default reports/; with --quick .run/bench-quick/)")
    parser.add_argument("--from-json", type=Path, default=None,
                        help="only rewrite the report (Markdown + PNGs) from a serving.json of an earlier run")
    args = parser.parse_args(argv)
    if args.from_json:
        data = json.loads(args.from_json.read_text())
        kinds = {c["model_kind"]: c["model"] for c in data["cells"]}
        out = args.out or args.from_json.parent
        out.mkdir(parents=True, exist_ok=True)
        md = report.write(out, data["meta"], data["calibration"], data["cells"],
                          light=kinds.get("light", LIGHT), heavy=kinds.get("heavy", HEAVY))
        print(f"wrote {md}")
        return 0

    warmup = args.warmup if args.warmup is not None else (0.3 if args.quick else 0.5)
    duration = args.duration if args.duration is not None else (1.0 if args.quick else 2.5)
    rounds = args.rounds if args.rounds is not None else (1 if args.quick else 2)
    concurrencies = [int(c) for c in (args.concurrency or ("1,32" if args.quick else "1,8,32")).split(",")]
    rows_list = [int(r) for r in args.rows.split(",")]
    models = parse_models(args.models)
    LIGHT, HEAVY = models[0], models[-1]
    only = set(args.targets.split(","))
    unknown = only - set(ALL_TARGETS)
    if unknown:
        parser.error(f"unknown target(s) {sorted(unknown)}; known: {', '.join(ALL_TARGETS)}")
    out = args.out or (REPO_ROOT / ".run" / "bench-quick" if args.quick else REPO_ROOT / "reports")
    for model in models:
        if not (DEFAULT_REPOSITORY / model.name / str(model.version) / "model.onnx").exists():
            print(f"{model} is missing from {DEFAULT_REPOSITORY}: run `make models`", file=sys.stderr)
            return 2

    pin = not args.no_pin and (os.cpu_count() or 1) >= 2
    client_cpu = args.client_cpu if pin else None
    server_cpu = args.server_cpu if pin else None
    if pin:
        os.sched_setaffinity(0, {client_cpu})
    env_notes = []
    # The machine notes say: OpenBLAS overrides slow a current numpy; a benchmark unsets both together.
    removed = [k for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE") if os.environ.pop(k, None) is not None]
    if removed:
        env_notes.append(f"unset {' and '.join(removed)} for this run (the machine sets them for old OpenBLAS)")

    run_dir = REPO_ROOT / ".run" / "bench"
    log_dir = run_dir / "logs"
    started = dt.datetime.now(dt.UTC)
    t_start = time.perf_counter()
    log(f"bench-serving: models {[str(m) for m in models]}, rows {rows_list}, concurrency {concurrencies}, "
        f"warm-up {warmup}s + {duration}s per cell, {rounds} round(s), "
        + (f"client on CPU {client_cpu}, servers on CPU {server_cpu}" if pin else "no pinning"))
    meta = report.machine_info()
    meta.update(started=started.isoformat(timespec="seconds"), warmup_s=warmup, duration_s=duration, rounds=rounds,
                pinned=pin, client_cpu=client_cpu, server_cpu=server_cpu, env_notes=env_notes,
                loadavg_before=os.getloadavg(), quick=args.quick)

    cells: list[Cell] = []
    if "ort-in-process" in only:
        log("in-process ONNX Runtime (ceiling)")
        best: dict[tuple, Cell] = {}
        for _ in range(rounds):
            for cell in run_ceiling(models, rows_list, max(warmup, 0.5), duration):
                key = (cell.model, cell.rows)
                if key not in best or cell.throughput > best[key].throughput:
                    best[key] = cell
        cells += best.values()

    mlserver_wanted = bool(only & MLSERVER_TARGETS)
    if mlserver_wanted:
        try:
            targets.ensure_mlserver_venv(log)
        except (subprocess.CalledProcessError, OSError) as exc:
            log(f"MLServer's venv could not be created ({exc}); MLServer is skipped")
            mlserver_wanted = False
            meta["env_notes"].append(f"MLServer skipped: its venv could not be created ({exc})")

    servers: list[targets.Server] = []
    if "embedded" in only:
        servers += [targets.embedded(m, server_cpu) for m in models]
    servers += [targets.model_server(models, batching, server_cpu) for batching in (False, True)]
    servers += [targets.fastapi_baseline(models, server_cpu), targets.grpc_aio_baseline(models, server_cpu)]
    if mlserver_wanted:
        servers += [targets.mlserver(models, batching, server_cpu, run_dir, DEFAULT_REPOSITORY)
                    for batching in (False, True)]
    servers = [s for s in servers if any(t.key in only for t in s.targets)]

    calibration = None
    up = start_servers(servers, log_dir)
    try:
        for server in servers:
            if server not in up:
                meta["env_notes"].append(f"{server.name} {'; '.join(server.notes)}")
        if not args.skip_calibration:
            calibration = calibrate(up, client_cpu, duration)
        cells += measure(up, only, rows_list, concurrencies, warmup, duration, rounds)
    finally:
        for server in reversed(up):
            status = server.process.stop()
            log(f"stopped {server.name} (exit {status})")
    for server in servers:
        if server not in up:
            for t in server.targets:
                if t.key in only:
                    cells += [_skipped(t, m, r, c, f"server {'; '.join(server.notes)}") for m in server.models
                              for r in rows_list for c in concurrencies]

    meta["finished"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    meta["elapsed_s"] = round(time.perf_counter() - t_start, 1)
    meta["loadavg_after"] = os.getloadavg()
    meta["versions"] = report.versions(targets.mlserver_version())
    meta["source"] = report.source_state()
    out.mkdir(parents=True, exist_ok=True)
    (out / "serving.json").write_text(json.dumps({"meta": meta, "calibration": calibration,
                                                  "cells": [asdict(c) for c in cells]}, indent=1, default=str))
    md = report.write(out, meta, calibration, [asdict(c) for c in cells], light=LIGHT, heavy=HEAVY)
    log(f"done in {meta['elapsed_s']:.0f}s: {md.relative_to(REPO_ROOT) if md.is_relative_to(REPO_ROOT) else md}")
    return 0


def calibrate(servers: list[targets.Server], client_cpu: int | None, duration: float) -> dict:
    """Which client can measure these servers: each candidate against a bare baseline, same cell.

    REST: Locust (FastHttpUser, one process) vs the lean HTTP client, FastAPI baseline, 32 in flight.
    gRPC: grpc.aio vs grpcio futures, grpc.aio baseline, 1 and 32 in flight.
    """
    result: dict = {}
    by_name = {s.name: s for s in servers}
    rest, grpc_server = by_name.get("fastapi-baseline"), by_name.get("grpc-aio-baseline")
    if rest is not None:
        log("client calibration (REST): Locust vs the lean client; FastAPI baseline, light model, 1 row, 32 in flight")
        meter = lean.CpuMeter(rest.process.pid)
        target = rest.targets[0]
        run, _ = request_for(target, LIGHT, 1)
        lean_cell = to_cell(target, LIGHT, 1, 32, run(32, 1.0, duration, meter))
        locust = calibrate_locust(target.url, LIGHT, 32, duration, client_cpu, meter)
        result["rest"] = {"lean": asdict(lean_cell), "locust": locust}
        log(f"  lean: {lean_cell.throughput:,.0f} req/s, {lean_cell.client_cpu_us:,.0f} us client CPU/req; "
            f"Locust: {locust.get('throughput', 0):,.0f} req/s, {locust.get('client_cpu_us') or 0:,.0f} us client "
            "CPU/req")
    if grpc_server is not None:
        log("client calibration (gRPC): grpc.aio vs grpcio futures; grpc.aio baseline, light model, 1 row")
        meter = lean.CpuMeter(grpc_server.process.pid)
        target = grpc_server.targets[0]
        raw = tfs_predict_request(LIGHT, 1).SerializeToString()
        rows = []
        for c in (1, 32):
            for name in ("grpc.aio (asyncio loop)", "grpcio futures (this benchmark)"):
                if name.startswith("grpc.aio"):
                    m = asyncio.run(lean.run_grpc_aio(target.url, TFS_PREDICT_METHOD, raw, c, 1.0, duration, meter))
                else:
                    m = lean.run_grpc(target.url, TFS_PREDICT_METHOD, raw, c, 1.0, duration, meter)
                cell = asdict(to_cell(target, LIGHT, 1, c, m))
                cell["client"] = name
                rows.append(cell)
                log(f"  {name:<32} c={c:<2} {cell['throughput']:>7,.0f} req/s  p50 {cell['p50_ms']:.3f} ms  "
                    f"client {cell['client_cpu_us'] or 0:,.0f} us/req  server {cell['server_cpu_us'] or 0:,.0f} us/req")
        result["grpc"] = rows
    return result


if __name__ == "__main__":
    sys.exit(main())
