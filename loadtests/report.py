"""The comparison report (`make compare`): from Locust's recorded CSVs and summaries to Markdown and PNG charts.

    .venv/bin/python -m loadtests.report reports/loadtests/compare-<run>/results.json [--out reports/comparison.md]

rebuilds the report from a recorded comparison without measuring again. The functions here are pure
(figures in, figures or text out) so they are unit-tested on recorded CSVs (tests/unit/fixtures/loadtests).

- `read_history` / `ramp_stages`: one row per ramp stage from `locust_stats_history.csv` (`--csv-full-history`):
  requests/s from the growth of the total request count over the stage's last two thirds (the first
  third spawns and settles), p50/p99 from Locust's current-window percentiles at the stage's last second
  (the window is half a stage long: `--percentile-window`).
- `client_bound`: a figure at or above 80% of the client's own ceiling (same users against a trivial
  endpoint) says more about the load generator than the server; the report marks it.
- `arm_shares` / `canary_weights`: the bandit's traffic share per interval and the canary's weight
  over time, from the run's `timeline.json` (the router's `/policy` state, the supervisor's status).
- `goals` / `what_to_choose`: the issue's goals as met / NOT met, and the advice, from the figures.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

CLIENT_BOUND = 0.8


def _num(value: str) -> float | None:
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(x) else x


def read_history(path: Path, name: str = "Aggregated") -> list[dict[str, float | None]]:
    """The per-second rows of one entry (default: the aggregate) of a `*_stats_history.csv`."""
    rows = []
    with Path(path).open() as f:
        for r in csv.DictReader(f):
            if r["Name"] != name:
                continue
            rows.append({"t": _num(r["Timestamp"]), "users": _num(r["User Count"]),
                         "count": _num(r["Total Request Count"]), "failures": _num(r["Total Failure Count"]),
                         "p50": _num(r["50%"]), "p99": _num(r["99%"])})
    return rows


def ramp_stages(history: list[dict], rows_per_request: int = 1) -> list[dict[str, Any]]:
    """One entry per run of seconds at the same user count (a ramp stage): users, requests/s, rows/s,
    p50/p99 (ms), seconds. Stages shorter than 2 s (the spawn between two stages) are left out."""
    groups: list[list[dict]] = []
    for row in history:
        if not row["users"]:
            continue
        if groups and groups[-1][0]["users"] == row["users"]:
            groups[-1].append(row)
        else:
            groups.append([row])
    stages = []
    for g in groups:
        if len(g) < 3:
            continue
        first, last = g[len(g) // 3], g[-1]
        span = (last["t"] or 0) - (first["t"] or 0)
        rps = ((last["count"] or 0) - (first["count"] or 0)) / span if span > 0 else None
        stages.append({"users": int(g[0]["users"]), "rps": rps,
                       "rows_per_s": rps * rows_per_request if rps is not None else None,
                       "p50_ms": last["p50"], "p99_ms": last["p99"], "seconds": len(g),
                       "failures": (last["failures"] or 0) - (g[0]["failures"] or 0)})
    return stages


def saturation(stages: list[dict]) -> dict | None:
    """The stage with the most requests/s (where the ramp saturates)."""
    rated = [s for s in stages if s["rps"] is not None]
    return max(rated, key=lambda s: s["rps"]) if rated else None


def client_bound(rps: float | None, ceiling_rps: float | None) -> bool | None:
    if rps is None or not ceiling_rps:
        return None
    return rps >= CLIENT_BOUND * ceiling_rps


def arm_shares(timeline: list[dict]) -> list[dict[str, Any]]:
    """Per timeline interval: each arm's share of the pulls made in it (the bandit's traffic share)."""
    out, last = [], None
    for point in timeline:
        arms = ((point.get("policy") or {}).get("arms")) or {}
        pulls = {name: (a.get("pulls") or a.get("assignments") or 0) for name, a in arms.items()}
        if last is not None and pulls:
            delta = {k: pulls[k] - last.get(k, 0) for k in pulls}
            total = sum(delta.values())
            if total > 0:
                out.append({"t": point["t"], "shares": {k: v / total for k, v in delta.items()}, "pulls": total})
        if pulls:
            last = pulls
    return out


def canary_weights(timeline: list[dict], candidate: str = "candidate") -> list[dict[str, Any]]:
    """The candidate's routing weight (percent) and the supervisor's phase over time."""
    out = []
    for point in timeline:
        weights = ((point.get("policy") or {}).get("weights")) or {}
        if candidate not in weights:
            continue
        total = sum(float(v) for v in weights.values()) or 1.0
        weight = float(weights[candidate]) / total * 100.0  # weights sum to 100 or to 1
        out.append({"t": point["t"], "weight": weight, "phase": (point.get("supervisor") or {}).get("phase")})
    return out


def _f(x: float | None, digits: int = 0) -> str:
    return "-" if x is None else f"{x:,.{digits}f}"


def _ms(x: float | None) -> str:
    """Locust keeps response times in whole milliseconds below 100 ms: 0 means under a millisecond."""
    if x is None:
        return "-"
    return "<1" if x < 1 else f"{x:,.0f}"


def _bound(flag: bool | None) -> str:
    return " (client-bound)" if flag else ""


def goals(r: dict) -> list[dict[str, Any]]:
    """The issue's goals, with what was measured and whether it was met."""
    modes = {m["key"]: m for m in r["modes"]}
    rest = saturation(modes["rest"]["stages"]) if "rest" in modes else None
    stream = saturation(modes["stream-batch"]["stages"]) if "stream-batch" in modes else None
    inproc = r.get("inprocess", {}).get("batch_rows_per_s")
    out = []
    if rest and stream:
        ratio = (stream["rows_per_s"] or 0) / rest["rps"] if rest["rps"] else None
        out.append({"goal": "stream scoring >= 10x the real-time server's requests/s (same model, same cores)",
                    "measured": f"{_f(stream['rows_per_s'])} rows/s vs {_f(rest['rps'])} req/s REST = "
                                f"{_f(ratio, 1)}x", "met": ratio is not None and ratio >= 10})
    if stream and inproc:
        frac = (stream["rows_per_s"] or 0) / inproc
        out.append({"goal": "stream scoring >= 50% of the in-process ONNX Runtime ceiling in rows/s "
                            f"(multi-row records, {r['inprocess'].get('batch_rows', 64)} rows)",
                    "measured": f"{_f(stream['rows_per_s'])} of {_f(inproc)} rows/s = {frac:.0%}", "met": frac >= 0.5})
    bandit = arm_shares(r.get("bandit", {}).get("timeline", []))
    if bandit:
        better = r.get("bandit", {}).get("better", "v1")
        tail = bandit[-max(1, len(bandit) // 4):]
        share = sum(p["shares"].get(better, 0) * p["pulls"] for p in tail) / max(1, sum(p["pulls"] for p in tail))
        out.append({"goal": f"the bandit converges on the better model ({better})",
                    "measured": f"{share:.0%} of the last quarter's traffic on {better}", "met": share >= 0.8})
    weights = canary_weights(r.get("canary", {}).get("timeline", []))
    if weights:
        final = weights[-1]
        first = next((w for w in weights if w["phase"] == final["phase"] and w["weight"] == final["weight"]), final)
        steps = len({w["weight"] for w in weights})
        out.append({"goal": "the supervisor promotes the good canary step by step",
                    "measured": f"{steps} weights seen; {final['phase']} at {final['weight']:.0f}% "
                                f"{first['t']:.0f} s into the run", "met": final["phase"] == "promoted"})
    return out


def what_to_choose(r: dict) -> list[str]:
    """Advice written from the measured figures (never from expectations)."""
    modes = {m["key"]: m for m in r["modes"]}
    low = {k: (m["stages"][0]["p50_ms"] if m["stages"] else None) for k, m in modes.items()}
    sat = {k: saturation(m["stages"]) for k, m in modes.items()}
    out = []

    def rows(k: str) -> float | None:
        return sat[k]["rows_per_s"] if sat.get(k) else None

    if "rest" in modes and "grpc" in modes:
        out.append(f"**One answer per request, now** (a user waits): real-time serving, p50 {_ms(low['rest'])} ms "
                   f"(REST) / {_ms(low['grpc'])} ms (gRPC) at one user; REST peaked at {_f(rows('rest'))} and gRPC "
                   f"at {_f(rows('grpc'))} rows/s here.")
    if "dynamic" in modes:
        out.append(f"**Many small concurrent requests you cannot group yourself**: dynamic batching on the server "
                   f"({_f(rows('dynamic'))} rows/s at saturation vs {_f(rows('rest'))} without; p50 at one user "
                   f"{_ms(low['dynamic'])} ms).")
    if "client-batch" in modes:
        out.append(f"**The caller already has many rows** (a page, a file, a job): send them in one request; "
                   f"{_f(rows('client-batch'))} rows/s with {modes['client-batch']['rows']}-row requests, "
                   f"at p50 {_ms(low['client-batch'])} ms per request at one user.")
    if "stream-batch" in modes:
        out.append(f"**Throughput over latency, decoupled producer and consumer** (events, backfills): stream scoring "
                   f"over Kafka; {_f(rows('stream-batch'))} rows/s with multi-row records and "
                   f"{_f(rows('stream-one'))} with one-row records, at p50 {_ms(low['stream-batch'])} ms request to "
                   "result: tens of milliseconds, never one.")
    pats = {p["key"]: p for p in r.get("patterns", [])}
    if "embedded" in pats and "model-as-service" in pats:
        out.append(f"**Pattern overhead**: embedded {_f(pats['embedded']['rps'])} req/s, model-as-service "
                   f"{_f(pats['model-as-service']['rps'])}, behind the router "
                   + ", ".join(f"{p['key']} {_f(p['rps'])}" for p in r["patterns"] if p.get("via") == "router")
                   + " at the same load: each hop costs a parse and a network round trip; pay it for what it buys "
                   "(independent scaling, experiments, safe rollouts).")
    return out


def _stage_cells(stages: list[dict], ceiling: float | None) -> list[str]:
    return [f"{s['users']}: {_f(s['rps'])} req/s, p50 {_ms(s['p50_ms'])} / p99 {_ms(s['p99_ms'])} ms"
            + ("**" if client_bound(s["rps"], ceiling) else "") for s in stages]


def markdown(r: dict, charts: Iterable[str] = ()) -> str:
    meta = r["meta"]
    lines = [
        "# Comparison: real-time vs batched, pattern vs pattern (Locust)",
        "",
        f"Written by `make compare{' COMPARE_ARGS=--quick' if meta.get('quick') else ''}` "
        f"(`python -m loadtests.compare`) on {meta.get('finished', '?')}, in {_f(meta.get('elapsed_s'))} s. "
        f"One machine, one run: {meta.get('cores')} cores shared by Locust ({meta.get('processes')} worker processes), "
        f"the servers, the Kafka broker and the scoring workers; load average {meta.get('loadavg_start', 0):.1f} "
        f"at the start and {meta.get('loadavg_end', 0):.1f} at the end (above ~0.5 means other work shared the "
        "cores, and every figure is depressed by it). Model: "
        f"{meta.get('model')} v{meta.get('model_version')} (logistic regression) unless said otherwise. "
        "Locust's per-run CSVs, HTML reports and summaries are in "
        f"`{meta.get('runs', 'reports/loadtests/')}` (git-ignored).",
        "",
        *(["**A draft from a busy machine** (load average above 1 at the start): other work shared the cores, "
           "so rates are low and noisy, and the client-bound marks move with the noise. Rerun `make compare` on a "
           "quiet machine for figures to quote.", ""] if (meta.get("loadavg_start") or 0) > 1 else []),
        "**What the figures depend on.** The cores (2 here), and that the client runs on the same machine as "
        "the servers: every request Locust makes costs CPU the server cannot use. Locust is a heavy client "
        "(a Python greenlet per user, several times the CPU per request of the servers under test), so each "
        "section measured the client's own ceiling in the same run (the same users against a trivial endpoint, "
        "`loadtests/ceiling.py`); a figure at or above 80% of it is marked **client-bound** (`**` in the ramp "
        "tables): it says more about Locust than about the server. For the lean clients' view of the servers, "
        "see [serving.md](serving.md) and [kafka.md](kafka.md).",
        "",
        "## Goals",
        "",
        "| goal | measured | met |",
        "|---|---|---|",
    ]
    for g in goals(r):
        lines.append(f"| {g['goal']} | {g['measured']} | {'yes' if g['met'] else '**NOT met**'} |")
    lines += ["", "## Real-time vs dynamic batching vs client-side batches vs stream scoring", "",
              "Each mode walks the same step ramp (closed-loop users; stream scoring keeps "
              f"{r.get('kafka_window', 8)} records in flight per user). Saturation = the stage with the most "
              "requests/s; low-load latency = the one-user stage. Latencies are Locust's, in whole milliseconds "
              "below 100 ms (`<1`: under a millisecond).", "",
              "| mode | rows/request | rows/s at saturation (users) | req/s there | p50 / p99 at 1 user | "
              "p50 / p99 at saturation | client ceiling req/s | accuracy |",
              "|---|---|---|---|---|---|---|---|"]
    for m in r["modes"]:
        sat = saturation(m["stages"])
        one = m["stages"][0] if m["stages"] else None
        bound = client_bound(sat["rps"] if sat else None, m.get("ceiling_rps"))
        lines.append(
            f"| {m['label']} | {m['rows']} | {_f(sat['rows_per_s'] if sat else None)} ({sat['users'] if sat else '-'})"
            f"{_bound(bound)} | {_f(sat['rps'] if sat else None)} | "
            f"{_ms(one['p50_ms'] if one else None)} / {_ms(one['p99_ms'] if one else None)} ms | "
            f"{_ms(sat['p50_ms'] if sat else None)} / {_ms(sat['p99_ms'] if sat else None)} ms | "
            f"{_f(m.get('ceiling_rps'))} | {_f(m.get('accuracy'), 3)} |")
    inproc = r.get("inprocess") or {}
    if inproc:
        lines += ["", f"In-process ONNX Runtime ceiling (no serving at all): {_f(inproc.get('one_row_rows_per_s'))} "
                      f"rows/s one row per call, {_f(inproc.get('batch_rows_per_s'))} rows/s "
                      f"{inproc.get('batch_rows', 64)} rows per call."]
    lines += ["", "Per ramp stage (users: requests/s, p50 / p99; `**` = client-bound):", ""]
    for m in r["modes"]:
        lines.append(f"- {m['label']}: " + "; ".join(_stage_cells(m["stages"], m.get("ceiling_rps"))))
    if r.get("patterns"):
        users = r["patterns"][0].get("users")
        lines += ["", "## The overhead of each pattern at the same load", "",
                  f"{users} closed-loop users, one row per request, holdout rows with their accuracy; the model "
                  "server's own REST endpoint is the reference without any pattern around it.", "",
                  "| pattern | way in | req/s | p50 | p99 | accuracy | served by | client ceiling req/s |",
                  "|---|---|---|---|---|---|---|---|"]
        for p in r["patterns"]:
            lines.append(f"| {p['label']} | {p['via']} | {_f(p['rps'])}{_bound(p.get('client_bound'))} | "
                         f"{_ms(p['p50_ms'])} ms | {_ms(p['p99_ms'])} ms | {_f(p.get('accuracy'), 3)} | "
                         f"{p.get('variants') or '-'} | {_f(p.get('ceiling_rps'))} |")
    bandit = arm_shares(r.get("bandit", {}).get("timeline", []))
    if bandit:
        b = r["bandit"]
        lines += ["", "## The bandit's traffic share over time", "",
                  f"Thompson sampling between breast-cancer v1 and v2, {b.get('users')} users for "
                  f"{_f(b.get('duration_s'))} s, a reward of 1 fed back (`POST /feedback`) for every right answer. "
                  "Share of each interval's requests per arm:", "",
                  "| t (s) | " + " | ".join(sorted(bandit[0]["shares"])) + " | requests |",
                  "|---|" + "---|" * (len(bandit[0]["shares"]) + 1)]
        step = max(1, len(bandit) // 10)
        for p in bandit[::step]:
            lines.append(f"| {p['t']:.0f} | " + " | ".join(f"{p['shares'][k]:.0%}" for k in sorted(p["shares"]))
                         + f" | {p['pulls']} |")
        if b.get("arms"):
            lines += ["", "Mean reward per arm at the end: " + ", ".join(
                f"{k} {_f(v.get('mean_reward'), 3)} ({v.get('pulls')} pulls)" for k, v in sorted(b["arms"].items()))
                + "."]
    weights = canary_weights(r.get("canary", {}).get("timeline", []))
    if weights:
        c = r["canary"]
        lines += ["", "## The canary's weight over time under the supervisor", "",
                  f"The canary pattern with the supervisor on a fast rollout spec (steps {c.get('steps')}, bake "
                  f"{c.get('bake_s')} s, checks every {c.get('interval_s')} s); {c.get('users')} users with the true "
                  "label fed back for every answer. The candidate's weight as the router reported it:", ""]
        changes, last = [], None
        for w in weights:
            if last is None or w["weight"] != last["weight"] or w["phase"] != last["phase"]:
                changes.append(w)
            last = w
        lines += ["| t (s) | candidate weight | supervisor phase |", "|---|---|---|"]
        lines += [f"| {w['t']:.0f} | {w['weight']:.0f}% | {w['phase'] or '-'} |" for w in changes]
    prof = r.get("kafka_profile")
    if prof:
        lines += ["", "## Where the Kafka client's per-record cost is the limit", "",
                  f"cProfile of kafka-python in one process: {prof['records']:,} one-row request records produced "
                  f"({_f(prof['produce_us'], 1)} us/record) and read back ({_f(prof['consume_us'], 1)} us/record); "
                  f"the model's share of a one-row record is ~{_f(prof.get('model_us'), 1)} us "
                  "(in-process ONNX Runtime, one row per call). Top functions by own time:", "",
                  "| function | calls | own time s | per record us |", "|---|---|---|---|"]
        for fn in prof["top"]:
            lines.append(f"| `{fn['function']}` | {fn['calls']:,} | {fn['tottime']:.3f} | "
                         f"{fn['tottime'] / prof['records'] * 1e6:.1f} |")
        lines += ["", "Each record is built, checksummed, framed and (on the way back) decoded in Python: that cost "
                      "per record, not the model, caps one-row stream scoring. What lifts it: multi-row records "
                      "(the per-record cost is paid once per N rows: the multi-row mode above), a C client "
                      "(confluent-kafka / librdkafka builds and parses batches in C), `crc32c` installed "
                      "(C checksums), and more partitions with more workers on more cores."]
    advice = what_to_choose(r)
    if advice:
        lines += ["", "## What to choose when", "", *[f"- {a}" for a in advice]]
    if charts:
        lines += ["", "## Charts", "", *[f"![{c}]({c})" for c in charts]]
    lines.append("")
    return "\n".join(lines)


def charts(r: dict, out_dir: Path) -> list[str]:
    """PNG charts beside the report; returns their file names (none when matplotlib fails)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except Exception as exc:  # the charts are a nicety; the figures are in the Markdown
        print(f"no charts: {exc!r}", file=sys.stderr)
        return []
    names = []
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for m in r["modes"]:
        st = [s for s in m["stages"] if s["rows_per_s"]]
        if not st:
            continue
        ax1.plot([s["rows_per_s"] for s in st], [s["p50_ms"] or 0 for s in st], marker="o", label=m["label"])
        ax2.plot([s["rows_per_s"] for s in st], [s["p99_ms"] or 0 for s in st], marker="o", label=m["label"])
    for ax, q in ((ax1, "p50"), (ax2, "p99")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("rows/s (step ramp: more users to the right)")
        ax.set_ylabel(f"{q} latency, ms")
        ax.grid(True, which="both", alpha=0.3)
    ax1.legend(fontsize=7)
    fig.suptitle("Throughput against latency as the ramp climbs")
    fig.tight_layout()
    fig.savefig(out_dir / "comparison-modes.png", dpi=100)
    plt.close(fig)
    names.append("comparison-modes.png")
    if r.get("patterns"):
        fig, ax = plt.subplots(figsize=(8, 3.5))
        ps = r["patterns"]
        ax.barh([p["label"] for p in ps][::-1], [p["rps"] or 0 for p in ps][::-1], color="#47a")
        for i, p in enumerate(ps[::-1]):
            ax.text(p["rps"] or 0, i, f" {p['rps'] or 0:,.0f} req/s, p50 {p['p50_ms'] or 0:.1f} ms", va="center",
                    fontsize=7)
        ax.set_xlabel("requests/s at the same load")
        ax.set_xlim(0, max(p["rps"] or 0 for p in ps) * 1.5 or 1)
        fig.tight_layout()
        fig.savefig(out_dir / "comparison-patterns.png", dpi=100)
        plt.close(fig)
        names.append("comparison-patterns.png")
    bandit = arm_shares(r.get("bandit", {}).get("timeline", []))
    weights = canary_weights(r.get("canary", {}).get("timeline", []))
    if bandit or weights:
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 3.5))
        for arm in sorted(bandit[0]["shares"]) if bandit else []:
            ax1.plot([p["t"] for p in bandit], [p["shares"].get(arm, 0) * 100 for p in bandit], label=arm)
        ax1.set_title("bandit: traffic share per arm")
        ax1.set_xlabel("s")
        ax1.set_ylabel("% of requests")
        ax1.legend(fontsize=8)
        ax2.step([w["t"] for w in weights], [w["weight"] for w in weights], where="post", color="#a74")
        ax2.set_title("canary under the supervisor: candidate weight")
        ax2.set_xlabel("s")
        ax2.set_ylabel("%")
        ax2.set_ylim(0, 105)
        fig.tight_layout()
        fig.savefig(out_dir / "comparison-over-time.png", dpi=100)
        plt.close(fig)
        names.append("comparison-over-time.png")
    return names


def write(r: dict, out: Path) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    names = charts(r, out.parent)
    out.write_text(markdown(r, names))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtests.report")
    parser.add_argument("results", type=Path, help="results.json of a comparison run")
    parser.add_argument("--out", type=Path, default=Path("reports") / "comparison.md")
    args = parser.parse_args(argv)
    print(write(json.loads(args.results.read_text()), args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
