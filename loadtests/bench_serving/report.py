"""The serving benchmark's report: `serving.md` (tables, goals met / not met), `serving.json`, PNG charts."""

from __future__ import annotations

import importlib.metadata as md
import math
import os
import platform
from pathlib import Path
from typing import Any

GOAL_FACTOR_VS_MLSERVER = 4.0
GOAL_P99_MS = 15.0
GOAL_P50_C1_MS = 0.5

ORDER = [
    "ort-in-process", "embedded", "model-server-rest-off", "model-server-rest-on", "model-server-grpc-off",
    "model-server-grpc-on", "model-server-oip-off", "model-server-oip-on", "fastapi", "grpc-aio", "mlserver-off",
    "mlserver-on", "mlserver-grpc-off", "mlserver-grpc-on",
]
SHORT = {
    "ort-in-process": "ORT in-process",
    "embedded": "embedded app",
    "model-server-rest-off": "MS REST",
    "model-server-rest-on": "MS REST +batch",
    "model-server-grpc-off": "MS gRPC",
    "model-server-grpc-on": "MS gRPC +batch",
    "model-server-oip-off": "MS OIP gRPC",
    "model-server-oip-on": "MS OIP gRPC +batch",
    "fastapi": "FastAPI",
    "grpc-aio": "grpc.aio",
    "mlserver-off": "MLServer",
    "mlserver-on": "MLServer +batch",
    "mlserver-grpc-off": "MLServer gRPC",
    "mlserver-grpc-on": "MLServer gRPC +batch",
}


def machine_info() -> dict[str, Any]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gib = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem_gib = round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gib": mem_gib, "kernel": platform.release(),
            "python": platform.python_version()}


def source_state() -> dict[str, str]:
    """Which code was measured: the commit, and a hash of the model server's and the app's sources
    (they may carry uncommitted changes)."""
    import hashlib
    import subprocess

    root = Path(__file__).resolve().parents[2]
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True,
                              timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "services"], cwd=root, capture_output=True,
                               text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        head, dirty = "", ""
    digest = hashlib.sha256()
    for path in sorted((root / "services").rglob("*.py")):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes())
    return {"commit": head or "unknown", "services_tree": "uncommitted changes" if dirty else "clean",
            "services_sha256": digest.hexdigest()[:12]}


def versions(mlserver: str | None) -> dict[str, str]:
    out = {}
    for dist in ("onnxruntime", "numpy", "grpcio", "protobuf", "starlette", "uvicorn", "uvloop", "httptools",
                 "orjson", "fastapi", "locust", "psutil"):
        try:
            out[dist] = md.version(dist)
        except md.PackageNotFoundError:
            out[dist] = "not installed"
    out["mlserver (own venv)"] = mlserver or "not installed"
    return out


# -- lookups -------------------------------------------------------------------------------------------


def _index(cells: list[dict]) -> dict[tuple, dict]:
    return {(c["target"], c["model_kind"], c["rows"], c["concurrency"]): c for c in cells}


def _ok(cell: dict | None) -> bool:
    return bool(cell) and cell["requests"] > 0 and not math.isnan(cell["throughput"])


def _fmt(x: float | None, digits: int = 0) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "—"
    return f"{x:,.{digits}f}"


def goals(cells: list[dict]) -> list[dict]:
    """The issue's goals, each evaluated per model, row count and batching mode: met / not met / n/a."""
    idx = _index(cells)
    rows_seen = sorted({c["rows"] for c in cells})
    conc = sorted({c["concurrency"] for c in cells if c["target"] != "ort-in-process"})
    hi = max(conc) if conc else 32
    lo = min(conc) if conc else 1
    results = []
    for kind in ("light", "heavy"):
        for rows in rows_seen:
            ml = [idx.get((t, kind, rows, c)) for t in ("mlserver-off", "mlserver-on") for c in conc]
            ml_best = max((c["throughput"] for c in ml if _ok(c)), default=None)
            fa = idx.get(("fastapi", kind, rows, hi))
            ga = idx.get(("grpc-aio", kind, rows, hi))
            for mode in ("off", "on"):
                rest = idx.get((f"model-server-rest-{mode}", kind, rows, hi))
                base = {"model": kind, "rows": rows, "batching": mode}
                if _ok(rest) and ml_best:
                    ratio = rest["throughput"] / ml_best
                    met = ratio >= GOAL_FACTOR_VS_MLSERVER and rest["p99_ms"] < GOAL_P99_MS
                    results.append({**base, "goal": f"REST @{hi}: >= {GOAL_FACTOR_VS_MLSERVER:g}x MLServer's best, "
                                    f"p99 < {GOAL_P99_MS:g} ms", "met": met,
                                    "evidence": f"{_fmt(rest['throughput'])} req/s = {ratio:.1f}x MLServer's best "
                                    f"{_fmt(ml_best)}; p99 {rest['p99_ms']:.2f} ms"})
                else:
                    results.append({**base, "goal": f"REST @{hi}: >= {GOAL_FACTOR_VS_MLSERVER:g}x MLServer's best",
                                    "met": None, "evidence": "not measured"})
                if _ok(rest) and _ok(fa):
                    ratio = rest["throughput"] / fa["throughput"]
                    results.append({**base, "goal": f"REST @{hi}: no slower than bare FastAPI", "met": ratio >= 1.0,
                                    "evidence": f"{_fmt(rest['throughput'])} vs {_fmt(fa['throughput'])} req/s "
                                    f"({ratio:.2f}x)"})
                else:
                    results.append({**base, "goal": f"REST @{hi}: no slower than bare FastAPI", "met": None,
                                    "evidence": "not measured"})
                for proto, name in (("grpc", "gRPC"), ("oip", "OIP gRPC")):
                    grpc = idx.get((f"model-server-{proto}-{mode}", kind, rows, hi))
                    if grpc is None and proto == "oip":
                        continue  # reports of runs before OIP was measured
                    if _ok(grpc) and _ok(ga):
                        ratio = grpc["throughput"] / ga["throughput"]
                        results.append({**base, "goal": f"{name} @{hi}: no slower than bare grpc.aio",
                                        "met": ratio >= 1.0,
                                        "evidence": f"{_fmt(grpc['throughput'])} vs {_fmt(ga['throughput'])} req/s "
                                        f"({ratio:.2f}x)"})
                    else:
                        results.append({**base, "goal": f"{name} @{hi}: no slower than bare grpc.aio", "met": None,
                                        "evidence": "not measured"})
                if rows == 1:
                    for proto, name in (("rest", "REST"), ("grpc", "gRPC"), ("oip", "OIP gRPC")):
                        c1 = idx.get((f"model-server-{proto}-{mode}", kind, rows, lo))
                        if c1 is None and proto == "oip":
                            continue  # as above
                        if _ok(c1):
                            results.append({**base, "goal": f"{name} @{lo}: p50 < {GOAL_P50_C1_MS:g} ms",
                                            "met": c1["p50_ms"] < GOAL_P50_C1_MS,
                                            "evidence": f"p50 {c1['p50_ms']:.3f} ms"})
                        else:
                            results.append({**base, "goal": f"{name} @{lo}: p50 < {GOAL_P50_C1_MS:g} ms",
                                            "met": None, "evidence": "not measured"})
    return results


def _verdict(met: bool | None) -> str:
    return "n/a" if met is None else ("**met**" if met else "**not met**")


# -- markdown ------------------------------------------------------------------------------------------


def summary_table(cells: list[dict], rows: int = 1) -> list[str]:
    """One line per target: the numbers the README shows (light and heavy model, `rows` per request)."""
    idx = _index(cells)
    conc = sorted({c["concurrency"] for c in cells if c["target"] != "ort-in-process"})
    hi, lo = (max(conc), min(conc)) if conc else (32, 1)
    lines = [
        f"| target ({rows}-row requests) | light req/s @{hi} | light p50 / p99 ms @{hi} | light p50 ms @{lo} | "
        f"heavy req/s @{hi} | heavy p50 / p99 ms @{hi} | heavy p50 ms @{lo} | server CPU µs/req light / heavy @{hi} |",
        "|---|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for key in ORDER:
        here = [c for c in cells if c["target"] == key and c["rows"] == rows]
        if not here:
            continue
        label = here[0]["label"]
        parts = [label]
        cpus = []
        for kind in ("light", "heavy"):
            c_hi = idx.get((key, kind, rows, 1 if key == "ort-in-process" else hi))
            c_lo = idx.get((key, kind, rows, lo if key != "ort-in-process" else 1))
            if _ok(c_hi):
                parts += [_fmt(c_hi["throughput"]), f"{c_hi['p50_ms']:.2f} / {c_hi['p99_ms']:.2f}"]
                cpus.append(_fmt(c_hi["server_cpu_us"]))
            else:
                parts += ["—", (c_hi or {}).get("note", "—")[:40] or "—"]
                cpus.append("—")
            parts.append(f"{c_lo['p50_ms']:.3f}" if _ok(c_lo) else "—")
        parts.append(" / ".join(cpus))
        lines.append("| " + " | ".join(parts) + " |")
    return lines


def full_table(cells: list[dict], kind: str, rows: int) -> list[str]:
    lines = [
        "| target | in flight | req/s | rows/s | p50 ms | p95 ms | p99 ms | server CPU µs/req | client CPU µs/req "
        "| errors | note |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|",
    ]
    here = [c for c in cells if c["model_kind"] == kind and c["rows"] == rows]
    here.sort(key=lambda c: (ORDER.index(c["target"]) if c["target"] in ORDER else 99, c["concurrency"]))
    for c in here:
        lines.append(
            f"| {c['label']} | {c['concurrency']} | {_fmt(c['throughput'])} | {_fmt(c['rows_per_s'])} | "
            f"{_fmt(c['p50_ms'], 3)} | {_fmt(c['p95_ms'], 3)} | {_fmt(c['p99_ms'], 3)} | {_fmt(c['server_cpu_us'])} | "
            f"{_fmt(c['client_cpu_us'])} | {c['errors']} | {c['note']} |"
        )
    return lines


def write(out: Path, meta: dict, calibration: dict | None, cells: list[dict], *, light, heavy) -> Path:
    charts = write_charts(out, cells)
    g = goals(cells)
    v = meta.get("versions", {})
    lines = [
        "# Serving benchmark",
        "",
        f"Generated by `make bench-serving` (`python -m loadtests.bench_serving`) on {meta['started']} UTC, "
        f"{meta['elapsed_s']:.0f} s in all. A report, not a test: nothing here fails a build.",
        "",
        "## Setup",
        "",
        f"- **Machine:** {meta['cpu']}, {meta['cores']} cores, {meta['memory_gib']} GiB, Linux {meta['kernel']}, "
        f"Python {meta['python']}. Shared and noisy: load average {_load(meta['loadavg_before'])} before the run, "
        f"{_load(meta['loadavg_after'])} after.",
        "- **Pinning:** " + (f"the load generator runs on CPU {meta['client_cpu']}, every server on CPU "
                             f"{meta['server_cpu']} (`taskset`), so each server has exactly one core and the client "
                             "never steals it; MLServer's worker process shares the server core with its front end."
                             if meta["pinned"] else "none (`--no-pin`): client and server share both cores."),
        f"- **Cells:** {meta['warmup_s']} s warm-up then {meta['duration_s']} s measured, closed loop (N requests "
        "in flight, each sent as soon as the previous one is answered). All servers run at once and the matrix is "
        f"walked {meta.get('rounds', 1)} time(s), every target for one cell before the next cell, so a burst from "
        "another tenant of the machine hits all targets alike; each cell shows its best round (highest throughput; "
        "all numbers of a row come from that one round). Throughput = responses completed in the "
        "window / window; latency = client-side, send to full response; **server CPU per request** = user+system "
        "CPU time of the server process and its children (psutil) over the window / requests.",
        f"- **Models:** light = `{light}` (scaler + logistic regression), heavy = `{heavy}` (200-tree random "
        "forest); ONNX Runtime with 1 intra-op and 1 inter-op thread everywhere.",
        "- **Versions:** " + ", ".join(f"{k} {val}" for k, val in v.items()) + ".",
        f"- **Code measured:** commit {meta.get('source', {}).get('commit', '?')}, `services/` "
        f"{meta.get('source', {}).get('services_tree', '?')} (sha256 of its .py files "
        f"{meta.get('source', {}).get('services_sha256', '?')}). Model server settings: "
        "`MODEL_SERVER_VERSION_POLICY=all`, `MODEL_SERVER_BATCHING` false / true, "
        "the rest default (64 rows per batch, max delay 0: a batch is what queued while the previous one ran, "
        "run on the event loop; log level INFO); the embedded app with its defaults (range policy `flag`).",
        "- **Peers:** MLServer 1.7.1 in its own venv (`.venv-mlserver`, pinned by "
        "`loadtests/baselines/mlserver-requirements.txt`; uvloop 0.21 since 0.23 crashes its worker) with a "
        "custom ONNX Runtime `MLModel` (`loadtests/baselines/mlserver_onnx_runtime.py`; there is no mlserver-onnx "
        "package), `debug: false`, otherwise defaults (one parallel inference worker process); adaptive batching "
        "= `max_batch_size` 32 requests, `max_batch_time` 1 ms. Model server batching = 64 rows, no added delay. "
        "Baselines: "
        "`loadtests/baselines/fastapi_app.py`, `loadtests/baselines/grpc_aio_server.py`.",
    ]
    for note in meta.get("env_notes") or []:
        lines.append(f"- {note}")
    busiest = max((meta.get("loadavg_before") or [0])[0], (meta.get("loadavg_after") or [0])[0])
    if busiest > (meta.get("cores") or 2):
        lines.append(f"- **Caution:** the machine was busy with other work during this run (1-minute load average "
                     f"up to {busiest:.1f} on {meta.get('cores')} cores): absolute numbers are low and ratios between "
                     "targets are noisier than usual. Server CPU per request is the least affected column.")
    lines += ["", "## Goals (from issue 3; reported, not asserted)", "",
              "| goal | model | rows | batching off | batching on |", "|---|---|--:|---|---|"]
    by = {}
    for r in g:
        by.setdefault((r["goal"], r["model"], r["rows"]), {})[r["batching"]] = r
    for (goal, kind, rows), modes in by.items():
        cols = [f"{_verdict(modes[m]['met'])}: {modes[m]['evidence']}" if m in modes else "n/a" for m in ("off", "on")]
        lines.append(f"| {goal} | {kind} | {rows} | {cols[0]} | {cols[1]} |")
    lines += ["", "## Summary", ""]
    for rows in sorted({c["rows"] for c in cells}):
        lines += summary_table(cells, rows) + [""]
    lines += ["The ceiling row is ONNX Runtime called back to back in one process (no server, no concurrency).", ""]
    for chart in charts:
        lines += [f"![{chart.stem}]({chart.name})", ""]
    lines += ["## The load generator", "", CLIENT_TEXT, ""]
    lines += calibration_lines(calibration or {})
    lines += ["## All cells", ""]
    for kind in ("light", "heavy"):
        for rows in sorted({c["rows"] for c in cells}):
            model = light if kind == "light" else heavy
            lines += [f"### {kind} model ({model}), {rows}-row requests", ""] + full_table(cells, kind, rows) + [""]
    lines += ["Raw numbers: `serving.json` beside this file.", ""]
    path = out / "serving.md"
    path.write_text("\n".join(lines))
    return path


CLIENT_TEXT = """\
Locust drives the project's load tests (`loadtests/locust_*.py`), but it is the wrong tool for this
matrix on 2 cores: its per-request cost (gevent greenlets, request events, statistics) is several
times that of a lean client (table below), so at 32 in flight a single Locust process saturates its
core before a fast server saturates its own, and the benchmark would measure Locust. The matrix
therefore uses a lean closed-loop asyncio client (`loadtests/bench_serving/client.py`), the same
for every target of a protocol: for REST, raw HTTP/1.1 keep-alive on uvloop with one connection per
in-flight request, the request bytes built once and only the status line and framing parsed; for
gRPC, one channel with N unary calls in flight through grpcio's future API (each completion
callback, on grpcio's own thread, sends the next call), the request serialized once and the
response kept as bytes. grpc.aio was measured too and costs more client CPU per call and adds
latency at 1 in flight (table below), so the futures client was chosen. Every response's status
is checked, and the first answer of each cell is decoded and checked in full before the cell is
timed. The client's own CPU per request is in every row of the full tables (`client CPU µs/req`);
the gRPC client is the more expensive of the two, which bounds what the gRPC cells can show."""


def calibration_lines(calibration: dict) -> list[str]:
    lines: list[str] = []
    rest = calibration.get("rest")
    if rest:
        le, lo = rest["lean"], rest["locust"]
        lines += [
            "Measured in this run, REST: against the bare FastAPI baseline (light model, 1 row, 32 in flight, "
            "client pinned to its own core):",
            "",
            "| client | req/s | p50 ms | p99 ms | client CPU µs/req | server CPU µs/req |",
            "|---|--:|--:|--:|--:|--:|",
            f"| lean HTTP/1.1 on uvloop (this benchmark) | {_fmt(le['throughput'])} | {_fmt(le['p50_ms'], 2)} | "
            f"{_fmt(le['p99_ms'], 2)} | {_fmt(le['client_cpu_us'])} | {_fmt(le['server_cpu_us'])} |",
        ]
        if "error" in lo:
            lines.append(f"| Locust FastHttpUser | failed: {lo['error'][:100]} | | | | |")
        else:
            lines.append(
                f"| Locust FastHttpUser (1 process) | {_fmt(lo['throughput'])} | {_fmt(lo['p50_ms'], 2)} | "
                f"{_fmt(lo['p99_ms'], 2)} | {_fmt(lo['client_cpu_us'])} | {_fmt(lo['server_cpu_us'])} |")
            lines += ["", f"(Locust: {lo['note']}; its percentiles are rounded by Locust.)"]
        lines.append("")
    grpc = calibration.get("grpc")
    if grpc:
        lines += [
            "gRPC: against the bare grpc.aio baseline (light model, 1 row):",
            "",
            "| client | in flight | req/s | p50 ms | p99 ms | client CPU µs/req | server CPU µs/req |",
            "|---|--:|--:|--:|--:|--:|--:|",
        ]
        for c in grpc:
            lines.append(f"| {c['client']} | {c['concurrency']} | {_fmt(c['throughput'])} | {_fmt(c['p50_ms'], 3)} | "
                         f"{_fmt(c['p99_ms'], 3)} | {_fmt(c['client_cpu_us'])} | {_fmt(c['server_cpu_us'])} |")
        lines.append("")
    return lines


def _load(avg) -> str:
    return " / ".join(f"{x:.2f}" for x in avg) if avg else "?"


# -- charts --------------------------------------------------------------------------------------------


def write_charts(out: Path, cells: list[dict]) -> list[Path]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    served = [c for c in cells if c["target"] != "ort-in-process"]
    if not served:
        return []
    kinds = [k for k in ("light", "heavy") if any(c["model_kind"] == k for c in served)]
    rows_list = sorted({c["rows"] for c in served})
    conc = sorted({c["concurrency"] for c in served})
    keys = [k for k in ORDER if any(c["target"] == k for c in served)]
    idx = _index(cells)
    paths = []

    fig, axes = plt.subplots(len(kinds), len(rows_list), figsize=(7 * len(rows_list), 4.2 * len(kinds)),
                             squeeze=False)
    width = 0.8 / max(1, len(conc))
    for i, kind in enumerate(kinds):
        for j, rows in enumerate(rows_list):
            ax = axes[i][j]
            for k, c in enumerate(conc):
                vals = [(idx.get((key, kind, rows, c)) or {}).get("throughput", 0) or 0 for key in keys]
                vals = [0 if isinstance(v, float) and math.isnan(v) else v for v in vals]
                ax.bar([x + (k - (len(conc) - 1) / 2) * width for x in range(len(keys))], vals, width,
                       label=f"{c} in flight")
            ax.set_xticks(range(len(keys)), [SHORT.get(key, key) for key in keys], rotation=35, ha="right",
                          fontsize=8)
            ax.set_title(f"{kind} model, {rows}-row requests: throughput", fontsize=10)
            ax.set_ylabel("requests / s")
            ax.grid(axis="y", alpha=0.3)
            ax.legend(fontsize=8)
    fig.tight_layout()
    path = out / "serving-throughput.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    paths.append(path)

    hi = max(conc)
    fig, axes = plt.subplots(len(kinds), len(rows_list), figsize=(7 * len(rows_list), 4.2 * len(kinds)),
                             squeeze=False)
    for i, kind in enumerate(kinds):
        for j, rows in enumerate(rows_list):
            ax = axes[i][j]
            for k, (field, name) in enumerate((("p50_ms", "p50"), ("p95_ms", "p95"), ("p99_ms", "p99"))):
                vals = []
                for key in keys:
                    v = (idx.get((key, kind, rows, hi)) or {}).get(field)
                    vals.append(0 if v is None or math.isnan(v) else v)
                ax.bar([x + (k - 1) * 0.27 for x in range(len(keys))], vals, 0.27, label=name)
            ax.set_xticks(range(len(keys)), [SHORT.get(key, key) for key in keys], rotation=35, ha="right",
                          fontsize=8)
            ax.set_title(f"{kind} model, {rows}-row requests: latency at {hi} in flight", fontsize=10)
            ax.set_ylabel("ms (log)")
            ax.set_yscale("log")
            ax.grid(axis="y", alpha=0.3)
            ax.legend(fontsize=8)
    fig.tight_layout()
    path = out / "serving-latency.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    paths.append(path)
    return paths
