"""The router benchmark: the same load straight to a model server and through the router, per policy.

    python -m loadtests.bench_router                 writes reports/router.md (+ router.json, router.png)
    python -m loadtests.bench_router --quick         shorter windows, writes .run/bench-router/

Not a test: it reports and never fails on a number; it exits non-zero only when it could not run.

Set-up (one run, one machine): model server A (breast-cancer v1, one row per request) and the
router under test are pinned to the *server core* (taskset, core 1); the load generator runs on
core 0, and so does model server B, the shadow variant's server (a shadow lives on other hardware
in production; on the server core it would take the primary's CPU and measure the machine, not
the mirror). Every policy routes between two variants that are the same model version on server
A, so the model work per request is identical with and without the router:

    direct        client -> model server A
    canary        client -> router (canary 50/50, sticky key per request) -> A
    shadow        client -> router (primary A; every request mirrored to B off the response path) -> A
    ab            client -> router (A/B 50/50, sticky, assignments recorded) -> A
    thompson      client -> router (Thompson sampling, decisions recorded for feedback) -> A

Closed loop: N workers each send the next request as soon as the previous answer arrived (N =
requests in flight: 1, 8, 32). CPU seconds of the router process and of model server A are read
(psutil) at the edges of each measured window and divided by the requests completed in it.
Windows alternate (direct, routed, direct, routed, ...) so that load from elsewhere on a shared
machine hits both alike; each figure is the median of its windows. Reported per N: throughput,
p50/p99, added p50/p99 (router - direct), throughput ratio, router CPU per request, model-server
CPU per request, and their ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import orjson
import psutil
import uvloop
import yaml

from services.core.settings import DEFAULT_MODEL_REPOSITORY
from services.router.upstream import Pool
from services.stack.demo_common import load_holdout
from services.stack.process import REPO_ROOT, ServiceProcess, free_port, http_ready
from services.stack.routed import router_process

SERVER_CORE, CLIENT_CORE = 1, 0
MODEL, VERSION = "breast-cancer", 1
POLICIES = {
    "canary": {"kind": "canary", "params": {"weights": {"a": 50, "b": 50}}},
    "shadow": {"kind": "shadow", "params": {"primary": "a", "shadows": ["shadow"]}},
    "ab": {"kind": "ab", "params": {"split": {"a": 50, "b": 50}}},
    "thompson": {"kind": "thompson", "params": {}},
}
LAYOUTS = {"server-core": SERVER_CORE, "client-core": CLIENT_CORE, "unpinned": None}
LAYOUT_TEXT = {
    "server-core": f"router pinned to core {SERVER_CORE}, with model server A: its CPU is taken from the model "
                   "server's (the conservative case: a sidecar on a full node)",
    "client-core": f"router pinned to core {CLIENT_CORE}, with the load generator",
    "unpinned": "router not pinned: the OS places it on whichever core is free",
}
GOAL_ADDED_P50_MS = 1.0
GOAL_CPU_RATIO = 0.5


@dataclass
class Cell:
    target: str
    concurrency: int
    requests: int
    errors: int
    rps: float
    p50_ms: float
    p99_ms: float
    router_cpu_us: float | None
    server_cpu_us: float | None
    layout: str = ""


def pinned(argv: list[str], core: int) -> list[str]:
    return ["taskset", "-c", str(core), sys.executable, *argv]


def model_server(name: str, core: int) -> tuple[ServiceProcess, str]:
    port, grpc = free_port(), free_port()
    url = f"http://127.0.0.1:{port}"
    proc = ServiceProcess(name, pinned(["-m", "services.model_server"], core),
                          env={"MODEL_SERVER_PORT": str(port), "MODEL_SERVER_GRPC_PORT": str(grpc),
                               "MODEL_SERVER_VERSION_POLICY": "all", "MODEL_SERVER_LOG_LEVEL": "WARNING"},
                          ready=http_ready(f"{url}/v2/health/ready"))
    return proc, url


def routing(policy: dict, a_url: str, shadow_url: str) -> dict:
    variants = {name: {"url": a_url, "model": MODEL, "version": VERSION, "timeout_s": 5.0} for name in ("a", "b")}
    if policy["kind"] == "shadow":
        variants = {"a": variants["a"], "shadow": {"url": shadow_url, "model": MODEL, "version": VERSION,
                                                   "timeout_s": 5.0}}
    return {"name": "bench", "model": MODEL, "variants": variants, "policy": policy, "fallback": "a",
            "shadow": {"queue_size": 1000, "workers": 4, "timeout_s": 5.0},
            "feedback": {"ttl_s": 600, "max_pending": 1_000_000}}


async def closed_loop(url: str, path: bytes, body: bytes, concurrency: int, warmup_s: float, duration_s: float,
                      meters: list[psutil.Process | None]) -> tuple[Cell, list[float | None]]:
    pool = Pool(url, connect_timeout_s=2.0, max_idle=256, idle_timeout_s=60.0)
    latencies: list[int] = []
    window = [float("inf"), float("inf")]
    state = {"requests": 0, "errors": 0, "stop": False, "n": 0}
    perf = time.perf_counter_ns

    async def worker() -> None:
        while not state["stop"]:
            state["n"] += 1
            key = b"x-user-id: u%d\r\n" % state["n"]
            t0 = perf()
            try:
                resp = await pool.request(b"POST", path, body, timeout_s=10.0, headers=key)
                ok = resp.status == 200
            except Exception:
                ok = False
            t1 = perf()
            if window[0] <= t1 <= window[1]:
                state["requests"] += 1
                latencies.append(t1 - t0)
                state["errors"] += not ok

    def cpu() -> list[float | None]:
        out = []
        for p in meters:
            if p is None:
                out.append(None)
                continue
            t = p.cpu_times()
            out.append(t.user + t.system)
        return out

    tasks = [asyncio.create_task(worker()) for _ in range(concurrency)]
    await asyncio.sleep(warmup_s)
    c0 = cpu()
    start = perf()
    window[0], window[1] = start, start + int(duration_s * 1e9)
    await asyncio.sleep(duration_s)
    c1 = cpu()
    end = perf()
    state["stop"] = True
    await asyncio.gather(*tasks, return_exceptions=True)
    pool.close()
    elapsed = (min(end, window[1]) - start) / 1e9
    n = state["requests"]
    lat = np.asarray(latencies, dtype=np.float64) / 1e6
    per_request = [None if a is None or b is None or not n else (b - a) / n * 1e6 for a, b in zip(c0, c1, strict=True)]
    cell = Cell("", concurrency, n, state["errors"], n / elapsed if elapsed else 0.0,
                float(np.percentile(lat, 50)) if n else float("nan"),
                float(np.percentile(lat, 99)) if n else float("nan"), None, None)
    return cell, per_request


def measure(url: str, path: str, body: bytes, concurrency: int, warmup_s: float, duration_s: float,
            router_pid: int | None, server_pid: int) -> Cell:
    meters = [psutil.Process(router_pid) if router_pid else None, psutil.Process(server_pid)]
    cell, cpu = uvloop.run(closed_loop(url, path.encode(), body, concurrency, warmup_s, duration_s, meters))
    cell.router_cpu_us, cell.server_cpu_us = cpu
    return cell


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtests.bench_router", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="short windows; writes .run/bench-router/")
    parser.add_argument("--concurrency", default="1,8,32", help="requests in flight, comma-separated")
    parser.add_argument("--policies", default=",".join(POLICIES), help=f"subset of {','.join(POLICIES)}")
    parser.add_argument("--out", type=Path, default=None, help="output directory (default reports/)")
    parser.add_argument("--layouts", default="server-core,unpinned",
                        help="where the router runs: server-core (pinned with the model server), client-core "
                             "(pinned with the load generator), unpinned (the OS places it); comma-separated")
    parser.add_argument("--from-json", type=Path, default=None,
                        help="re-render the report from a router.json of an earlier run (no load is run)")
    args = parser.parse_args(argv)
    warmup_s, duration_s, rounds = (0.5, 2.0, 1) if args.quick else (0.75, 2.5, 3)
    if args.from_json is not None:
        data = json.loads(args.from_json.read_text())
        cells = [Cell(**c) for c in data["cells"]]
        meta = data.get("meta", {})
        out = args.out or args.from_json.parent
        path = write_report(out, cells, meta.get("levels", sorted({c.concurrency for c in cells})),
                            meta.get("policies", list(dict.fromkeys(c.target for c in cells if c.target != "direct"))),
                            quick=meta.get("quick", False), warmup_s=meta.get("warmup_s", warmup_s),
                            duration_s=meta.get("duration_s", duration_s), rounds=meta.get("rounds", rounds),
                            notes=meta.get("notes"), when=meta.get("when"), load=meta.get("load"))
        print(f"wrote {path}")
        return 0
    out = args.out or (REPO_ROOT / ".run" / "bench-router" if args.quick else REPO_ROOT / "reports")
    levels = [int(c) for c in args.concurrency.split(",")]
    policies = [p for p in args.policies.split(",") if p]
    layouts = [lay for lay in args.layouts.split(",") if lay]
    unknown = [lay for lay in layouts + policies if lay not in LAYOUTS and lay not in POLICIES]
    if unknown:
        parser.error(f"unknown layout or policy: {unknown}")
    if os.cpu_count() and os.cpu_count() >= 2:
        os.sched_setaffinity(0, {CLIENT_CORE})

    _, x, _ = load_holdout(DEFAULT_MODEL_REPOSITORY / MODEL / str(VERSION) / "holdout.csv")
    body = orjson.dumps({"inputs": [{"name": "input", "shape": [1, x.shape[1]], "datatype": "FP32",
                                     "data": x[0].tolist()}]})
    log_dir = Path(tempfile.mkdtemp(prefix="bench-router-"))
    started: list[ServiceProcess] = []
    cells: list[Cell] = []
    shadow_notes: list[str] = []
    try:
        server, a_url = model_server("model-server-a", SERVER_CORE)
        shadow_server, shadow_url = model_server("model-server-shadow", CLIENT_CORE)
        for proc in (server, shadow_server):
            proc.start(log_dir)
            started.append(proc)
        for proc in (server, shadow_server):
            proc.wait_ready(90)
        assert server.popen is not None
        server_pid = server.popen.pid  # taskset execs the server: same pid
        direct_path = f"/v2/models/{MODEL}/versions/{VERSION}/infer"
        for layout in layouts:
            for policy in policies:
                cfg_path = log_dir / f"{policy}.yaml"
                cfg_path.write_text(yaml.safe_dump(routing(POLICIES[policy], a_url, shadow_url)))
                router, router_url = router_process(cfg_path, None, name=f"router-{policy}-{layout}",
                                                    ROUTER_LOG_LEVEL="WARNING")
                if LAYOUTS[layout] is not None:
                    router.argv = ["taskset", "-c", str(LAYOUTS[layout]), sys.executable, *router.argv]
                router.start(log_dir)
                started.append(router)
                router.wait_ready(60)
                assert router.popen is not None
                for n in levels:
                    for _ in range(rounds):  # alternate, so load from elsewhere hits both alike
                        direct = measure(a_url, direct_path, body, n, warmup_s, duration_s, None, server_pid)
                        direct.target, direct.layout = "direct", layout
                        cells.append(direct)
                        routed = measure(router_url, f"/v2/models/{MODEL}/infer", body, n, warmup_s, duration_s,
                                         router.popen.pid, server_pid)
                        routed.target, routed.layout = policy, layout
                        cells.append(routed)
                        print(f"  {layout:<11} {policy:<9} N={n:<3} direct p50 {direct.p50_ms:.3f} ms, routed p50 "
                              f"{routed.p50_ms:.3f} ms, router {routed.router_cpu_us:.0f} us/req, server "
                              f"{routed.server_cpu_us:.0f} us/req", flush=True)
                if policy == "shadow":
                    import httpx

                    summary = httpx.get(f"{router_url}/shadow/summary", timeout=10).json()["shadows"]["shadow"]
                    shadow_notes.append(
                        f"layout `{layout}`: over the whole run (all concurrency levels, warm-up included) "
                        f"{summary['mirrored']} mirrors sent, {summary['dropped_queue_full']} dropped (queue full), "
                        f"{summary['error_count']} failed; label agreement {summary['label_agreement_rate']}, "
                        f"mean shadow − primary latency {summary['latency']['mean_diff_ms']} ms")
                router.stop()
                started.remove(router)
    finally:
        for proc in reversed(started):
            proc.stop()
    out.mkdir(parents=True, exist_ok=True)
    path = write_report(out, cells, levels, policies, quick=args.quick, warmup_s=warmup_s, duration_s=duration_s,
                        rounds=rounds, notes=shadow_notes)
    print(f"wrote {path}")
    return 0


def summarise(cells: list[Cell], levels: list[int], policies: list[str], layout: str) -> list[dict]:
    rows = []
    cells = [c for c in cells if c.layout == layout]
    for n in levels:
        direct = [c for c in cells if c.target == "direct" and c.concurrency == n]
        if not direct:
            continue
        base_p50 = statistics.median(c.p50_ms for c in direct)
        base_p99 = statistics.median(c.p99_ms for c in direct)
        base_rps = statistics.median(c.rps for c in direct)
        base_cpu = statistics.median(c.server_cpu_us for c in direct if c.server_cpu_us is not None)
        rows.append({"target": "direct", "concurrency": n, "rps": base_rps, "p50_ms": base_p50, "p99_ms": base_p99,
                     "added_p50_ms": 0.0, "added_p99_ms": 0.0, "throughput_ratio": 1.0, "router_cpu_us": None,
                     "server_cpu_us": base_cpu, "cpu_ratio": None, "errors": sum(c.errors for c in direct)})
        for policy in policies:
            mine = [c for c in cells if c.target == policy and c.concurrency == n]
            if not mine:
                continue
            p50 = statistics.median(c.p50_ms for c in mine)
            p99 = statistics.median(c.p99_ms for c in mine)
            rps = statistics.median(c.rps for c in mine)
            router_cpu = statistics.median(c.router_cpu_us for c in mine if c.router_cpu_us is not None)
            rows.append({
                "target": policy, "concurrency": n, "rps": rps, "p50_ms": p50, "p99_ms": p99,
                "added_p50_ms": p50 - base_p50, "added_p99_ms": p99 - base_p99,
                "throughput_ratio": rps / base_rps if base_rps else None,
                "router_cpu_us": router_cpu, "server_cpu_us": base_cpu,
                "cpu_ratio": router_cpu / base_cpu if router_cpu and base_cpu else None,
                "errors": sum(c.errors for c in mine),
            })
    return rows


def write_report(out: Path, cells: list[Cell], levels: list[int], policies: list[str], *, quick: bool,
                 warmup_s: float, duration_s: float, rounds: int, notes: list[str] | None = None,
                 when: str | None = None, load: list[float] | None = None) -> Path:
    layouts = list(dict.fromkeys(c.layout for c in cells))
    summary = {layout: summarise(cells, levels, policies, layout) for layout in layouts}
    when = when or time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    load = load or list(os.getloadavg())
    meta = {"levels": levels, "policies": policies, "quick": quick, "warmup_s": warmup_s, "duration_s": duration_s,
            "rounds": rounds, "notes": notes or [], "when": when, "load": load}
    (out / "router.json").write_text(json.dumps({"meta": meta, "cells": [asdict(c) for c in cells],
                                                 "summary": summary}, indent=2))
    cpu = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    lines = [
        "# Router overhead",
        "",
        f"`python -m loadtests.bench_router{' --quick' if quick else ''}` on {when}: "
        f"{os.cpu_count()} cores ({cpu}), Python {platform.python_version()}, load average at the end "
        f"{load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f} (the machine is shared: other work adds noise).",
        "",
        f"Model server A ({MODEL} v{VERSION}, one row per request, KServe V2 REST) is pinned to core {SERVER_CORE}; "
        f"the load generator and the shadow's model server to core {CLIENT_CORE}. Closed loop, {warmup_s:g} s "
        f"warm-up and {duration_s:g} s measured per window; each routed cell alternates {rounds} windows straight "
        f"to the model server with {rounds} through the router, and every figure is the median of its windows "
        "(`direct`: the median over all windows of that concurrency). Every policy routes between two "
        "variants that are the same model version on server A, so the model work is identical. CPU is user + "
        "system time of the process over the measured "
        "window, per completed request (both processes' CPU includes the kernel's loopback TCP work). Method: "
        "`loadtests/bench_router.py`.",
        "",
        "How to read it: this is a 2-core machine running the load generator, one or two model servers and "
        "the router at once, shared with other work. In the `server-core` layout every microsecond the "
        "router spends is taken from the model server's core, so the added latency there is the router's "
        "CPU cost showing up as queueing; `unpinned` is closer to a router with a core of its own. A "
        "negative added latency or a throughput ratio above 1 means the difference is below this "
        "machine's noise, not that the router speeds anything up. At 1 request in flight, CPU per "
        "request is dominated by waking idle processes and says little about the per-request work.",
        "",
    ]
    for layout in layouts:
        rows = summary[layout]
        lines += [f"## Layout `{layout}`: {LAYOUT_TEXT[layout]}", ""]
        goals = []
        for n in levels:
            lines += [f"### {n} request{'s' if n > 1 else ''} in flight", "",
                      "| target | req/s | p50 ms | p99 ms | added p50 ms | added p99 ms | throughput ratio | "
                      "router CPU µs/req | model server CPU µs/req | router / server CPU | errors |",
                      "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
            for r in rows:
                if r["concurrency"] != n:
                    continue
                lines.append(
                    f"| {r['target']} | {r['rps']:.0f} | {r['p50_ms']:.3f} | {r['p99_ms']:.3f} | "
                    f"{_f(r['added_p50_ms'], 3)} | {_f(r['added_p99_ms'], 3)} | {_f(r['throughput_ratio'], 2)} | "
                    f"{_f(r['router_cpu_us'], 0)} | {_f(r['server_cpu_us'], 0)} | {_f(r['cpu_ratio'], 2)} | "
                    f"{r['errors']} |")
            lines.append("")
            if n == 8:
                goals = [r for r in rows if r["concurrency"] == 8 and r["target"] != "direct"]
        if goals:
            lines += ["### Goals at 8 in flight", "",
                      "| policy | added p50 ≤ 1 ms | router CPU ≤ half the model server's |", "|---|---|---|"]
            for r in goals:
                p50_ok = r["added_p50_ms"] <= GOAL_ADDED_P50_MS
                cpu_ok = r["cpu_ratio"] is not None and r["cpu_ratio"] <= GOAL_CPU_RATIO
                lines.append(f"| {r['target']} | {'met' if p50_ok else 'NOT met'} ({r['added_p50_ms']:.3f} ms) | "
                             f"{'met' if cpu_ok else 'NOT met'} ({_f(r['cpu_ratio'], 2)}) |")
            by = {r["target"]: r for r in goals}
            if "shadow" in by and "canary" in by:
                d99 = by["shadow"]["p99_ms"] - by["canary"]["p99_ms"]
                lines += ["", f"Shadow against canary (the same primary path plus one mirror per request): p99 "
                              f"{by['shadow']['p99_ms']:.3f} vs {by['canary']['p99_ms']:.3f} ms ({d99:+.3f} ms); "
                              f"router CPU {by['shadow']['router_cpu_us']:.0f} vs "
                              f"{by['canary']['router_cpu_us']:.0f} µs/req."]
            lines.append("")
        chart = _chart(out, rows, levels, layout)
        if chart:
            lines += [f"![p50 and p99 by target, layout {layout}]({chart.name})", ""]
    if notes:
        lines += ["## Shadow mirror", "", *[f"- {note}" for note in notes], ""]
    path = out / "router.md"
    path.write_text("\n".join(lines))
    return path


def _f(value: float | None, digits: int) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _chart(out: Path, rows: list[dict], levels: list[int], layout: str) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, axes = plt.subplots(1, len(levels), figsize=(4.2 * len(levels), 3.6), squeeze=False)
    for ax, n in zip(axes[0], levels, strict=True):
        sel = [r for r in rows if r["concurrency"] == n]
        names = [r["target"] for r in sel]
        xs = np.arange(len(sel))
        ax.bar(xs - 0.2, [r["p50_ms"] for r in sel], 0.4, label="p50")
        ax.bar(xs + 0.2, [r["p99_ms"] for r in sel], 0.4, label="p99")
        ax.set_xticks(xs, names, rotation=30)
        ax.set_title(f"{layout}: {n} in flight")
        ax.set_ylabel("ms")
    axes[0][0].legend()
    fig.tight_layout()
    path = out / f"router-{layout}.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


if __name__ == "__main__":
    sys.exit(main())
