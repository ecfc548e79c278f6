"""`make compare`: one run, one machine, every way of serving under Locust -> reports/comparison.md + PNGs.

    .venv/bin/python -m loadtests.compare            # ~15 min on 2 cores
    .venv/bin/python -m loadtests.compare --quick    # ~3 min smoke: shorter stages, fewer of them

Sections, each a set of headless Locust runs (`loadtests/run.py`) whose CSVs, HTML reports and
summaries land in `reports/loadtests/compare-<time>/<section>-<key>/`:

1. **Modes** on one model (breast-cancer v1): the model server's REST and TF Serving gRPC with one
   row per request (real-time), REST with dynamic batching on the server, REST with 64-row
   requests (client-side batches), stream scoring over Kafka (two workers) with one-row and
   64-row records. Each walks the same step ramp; the client's ceiling (same user class against a
   trivial endpoint, at the ramp's peak users) is measured just before.
2. **In-process ceiling**: ONNX Runtime called back to back, one row and 64 rows per call.
3. **Kafka client profile**: cProfile of kafka-python producing and reading back one-row records.
4. **Pattern overhead** at the same load: embedded, model-as-service (the app, and the model
   server's own REST as the reference), the router under shadow, canary, A/B and bandit.
5. **Bandit** share over time with rewards fed back; 6. **canary** weight over time under the
   supervisor (a fast rollout spec) with labels fed back.

Every stack is started here on free ports (routed configs in the run folder, not `.run/`) and
stopped, even on failure; a section that fails is reported and the others still run. Finally
`loadtests/report.py` writes the report from `results.json` (rebuild it with
`python -m loadtests.report <run>/results.json`). Never fails on a number.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
import signal
import sys
import time
import traceback
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from loadtests import bench_kafka, report
from loadtests.run import WAYS, LoadSpec, log, measure, measure_ceiling, stop_stack
from services.core.settings import DEFAULT_MODEL_REPOSITORY
from services.stack import runner
from services.stack.paths import REPO_ROOT
from services.stack.process import PatternStack, ServiceProcess

MODEL, VERSION = "breast-cancer", 1
LOG_DIR = REPO_ROOT / ".run" / "compare-logs"


_BROKER: list[str] = []


def broker() -> str:
    """One throwaway broker for the whole comparison (or $KAFKA_BOOTSTRAP_SERVERS), stopped at exit."""
    if not _BROKER:
        _BROKER.append(bench_kafka.broker())
    return _BROKER[0]


def _exit_on_signal(signum, _frame) -> None:
    raise SystemExit(128 + signum)  # run the finally blocks: every process started here is stopped


def start(stack: PatternStack) -> PatternStack:
    return runner.start(stack, LOG_DIR, ready_timeout_s=120)


def fig(summary: dict) -> dict[str, Any]:
    main = summary.get("main") or {}
    variants = (summary.get("quality") or {}).get("variants") or {}
    served = ", ".join(f"{k} {v['requests'] / max(1, summary.get('requests') or 1):.0%}"
                       for k, v in variants.items() if k != "-")
    return {"rps": summary.get("rps"), "rows_per_s": summary.get("rows_per_s"), "p50_ms": main.get("p50_ms"),
            "p99_ms": main.get("p99_ms"), "failures": summary.get("failures"), "requests": summary.get("requests"),
            "accuracy": (summary.get("quality") or {}).get("accuracy"), "variants": served or None,
            "ceiling_rps": (summary.get("ceiling") or {}).get("rps"), "client_bound": summary.get("client_bound")}


# -- 1. modes -----------------------------------------------------------------------------------------


def modes(out: Path, q: bool, processes: int, window: int) -> list[dict]:
    from services.stack.routed import model_server

    ramp = (1, 16) if q else (1, 2, 4, 8, 16, 32, 64)
    stage_s = 4.0 if q else 6.0
    ceiling_s = 3.0 if q else 6.0
    off, off_url = model_server("compare-model-server-off", MODEL_SERVER_BATCHING="false")
    on, on_url = model_server("compare-model-server-on", MODEL_SERVER_BATCHING="true",
                              MODEL_SERVER_BATCH_MAX_DELAY_MS="1")
    topics = bench_kafka.scoring_topics()
    procs: list[ServiceProcess] = []
    results = []
    try:
        start(PatternStack([off, on], {}))
        procs += [off, on]
        try:
            boot = broker()
            bench_kafka.workers(boot, 2, topics, procs)
        except Exception as exc:  # the HTTP and gRPC modes still run; the report lacks the stream rows
            log(f"   no Kafka, no stream-scoring modes: {exc!r}")
            boot = ""
        kafka_extra = ["--kafka-window", str(window), "--requests-topic", topics["SCORING_REQUESTS_TOPIC"],
                       "--results-topic", topics["SCORING_RESULTS_TOPIC"]]
        grpc_off = f"127.0.0.1:{off.env['MODEL_SERVER_GRPC_PORT']}"
        plan = [
            ("rest", "real-time REST (1 row/request)", WAYS["model-server-rest"], off_url, 1, []),
            ("grpc", "real-time gRPC (1 row/request)", WAYS["model-server-grpc"], grpc_off, 1, []),
            ("dynamic", "dynamic batching on the server (REST, 1 row/request)", WAYS["model-server-rest"], on_url,
             1, []),
            ("client-batch", "client-side batches (REST, 64 rows/request)", WAYS["model-server-rest"], off_url, 64,
             []),
            ("stream-one", "stream scoring, Kafka (1 row/record)", WAYS["kafka"], boot, 1, kafka_extra),
            ("stream-batch", "stream scoring, Kafka (64 rows/record)", WAYS["kafka"], boot, 64, kafka_extra),
        ]
        for key, label, way, host, rows, extra in plan:
            if not host:
                continue
            log(f"== mode {key}: {label}")
            spec = LoadSpec(way, host, rows=rows, processes=processes, profile="ramp", ramp_users=ramp,
                            stage_s=stage_s, model=MODEL, model_version=VERSION, extra=list(extra))
            run_out = out / f"mode-{key}"
            try:
                summary = measure(spec, run_out, ceiling_s=ceiling_s, meta={"mode": key},
                                  bootstrap=boot if way.ceiling == "kafka" else None)
                stages = report.ramp_stages(report.read_history(run_out / "locust_stats_history.csv"), rows)
            except Exception as exc:  # one mode failing leaves the others
                log(f"   FAILED: {exc!r}")
                traceback.print_exc()
                summary, stages = {}, []
            results.append({"key": key, "label": label, "rows": rows, "stages": stages,
                            "ceiling_rps": (summary.get("ceiling") or {}).get("rps"),
                            "accuracy": (summary.get("quality") or {}).get("accuracy"),
                            "failures": summary.get("failures"), "run": run_out.name})
            if stages:
                sat = report.saturation(stages)
                log(f"   saturation {sat['rows_per_s']:,.0f} rows/s at {sat['users']} users; "
                    f"ceiling {results[-1]['ceiling_rps'] or 0:,.0f} req/s")
    finally:
        for p in reversed(procs):
            p.stop()
    return results


# -- 2. in-process ceiling ----------------------------------------------------------------------------------


def inprocess(seconds: float, batch_rows: int = 64) -> dict:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = so.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(DEFAULT_MODEL_REPOSITORY / MODEL / str(VERSION) / "model.onnx"), so,
                                providers=["CPUExecutionProvider"])
    x = bench_kafka.holdout_x()
    batch = np.resize(x, (batch_rows, x.shape[1])).astype(np.float32)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        sess.run(None, {"input": batch})
        n += batch_rows
    return {"one_row_rows_per_s": bench_kafka.bench_inprocess(seconds), "batch_rows_per_s":
            n / (time.perf_counter() - t0), "batch_rows": batch_rows}


# -- 3. Kafka client profile ----------------------------------------------------------------------------------


def kafka_profile(records: int) -> dict:
    from services.kafka.topics import ensure_topics, plain_topic
    from services.stack.kafka_tools import read_topic, request_producer, send_requests

    boot = broker()
    topic = f"profile-{uuid.uuid4().hex[:6]}"
    ensure_topics(boot, [plain_topic(topic, 4)])
    rows = bench_kafka.holdout_x().tolist()
    producer = request_producer(boot)
    prof = cProfile.Profile()
    t0 = time.perf_counter()
    prof.enable()
    send_requests(producer, topic, ((f"r{i}", [rows[i % len(rows)]]) for i in range(records)))
    prof.disable()
    produce_s = time.perf_counter() - t0
    producer.close()
    t0 = time.perf_counter()
    prof.enable()
    got = read_topic(boot, topic, until=lambda rs: len(rs) >= records, max_polls=600, poll_ms=100)
    prof.disable()
    consume_s = time.perf_counter() - t0
    stats = pstats.Stats(prof)
    # Waiting (for the sender thread, the socket) is not the client's cost per record: left out.
    waits = ("acquire", "select", "poll' of", "epoll", "sleep")
    top = sorted(((k, v) for k, v in stats.stats.items() if not any(w in k[2] for w in waits)),
                 key=lambda kv: kv[1][2], reverse=True)[:10]
    one_row = inprocess(1.0)["one_row_rows_per_s"]
    return {"records": records, "read": len(got), "produce_us": produce_s / records * 1e6,
            "consume_us": consume_s / max(1, len(got)) * 1e6, "model_us": 1e6 / one_row if one_row else None,
            "top": [{"function": f"{Path(f).name}:{line} {name}", "calls": cc, "tottime": tt}
                    for (f, line, name), (cc, _nc, tt, _ct, _callers) in top]}


# -- 4. pattern overhead --------------------------------------------------------------------------------------


def overhead(out: Path, q: bool, processes: int, users: int) -> list[dict]:
    from services.stack.patterns import PATTERNS
    from services.stack.routed import routed_pattern

    duration = 3.0 if q else 8.0
    plan: list[tuple[str, str, Callable[[], PatternStack], str]] = [
        ("embedded", "embedded", lambda: PATTERNS["embedded"](MODEL), "app"),
        ("model-as-service", "model-as-service (app -> gRPC model server)",
         lambda: PATTERNS["model-as-service"](MODEL), "app"),
        ("model-server", "model server alone (reference)", lambda: PATTERNS["model-as-service"](MODEL),
         "model-server-rest"),
    ]
    for p in ("shadow",) if q else ("shadow", "canary", "ab-test", "bandit"):  # quick: learning has the others
        plan.append((p, f"router: {p}", (lambda p=p: routed_pattern(p, out / "stacks", supervisor_interval_s=None)),
                     "router"))
    ceilings: dict[str, float | None] = {}
    results = []
    shared: dict[str, PatternStack] = {}
    try:
        for key, label, make, endpoint in plan:
            log(f"== pattern {key}")
            way = WAYS[endpoint]
            try:
                if key == "model-server" and "model-as-service" in shared:
                    stack = shared.pop("model-as-service")
                else:
                    stack = start(make())
                spec = LoadSpec(way, stack.endpoints[endpoint], users=users, duration_s=duration,
                                processes=processes, model=MODEL, model_version=VERSION)
                if way.locustfile not in ceilings:  # one ceiling per user class at this load
                    ceilings[way.locustfile] = measure_ceiling(spec, out / f"ceiling-{way.one_row}",
                                                               duration)["rps"]
                summary = measure(spec, out / f"pattern-{key}", ceiling_s=None, meta={"pattern": key})
                summary = {**summary, "ceiling": {"rps": ceilings[way.locustfile]},
                           "client_bound": report.client_bound(summary.get("rps"), ceilings[way.locustfile])}
                results.append({"key": key, "label": label, "via": endpoint if endpoint == "router" else
                                way.locustfile.removeprefix("locust_").removesuffix(".py"), "users": users,
                                **fig(summary)})
                log(f"   {summary.get('rps') or 0:,.0f} req/s, p50 {(summary.get('main') or {}).get('p50_ms')} ms")
            except Exception as exc:
                log(f"   FAILED: {exc!r}")
                traceback.print_exc()
                stack = None
            if key == "model-as-service" and stack is not None:
                shared[key] = stack  # the model server alone runs next, on the same stack
            elif stack is not None:
                stop_stack(stack)
    finally:
        for stack in shared.values():
            stop_stack(stack)
    return results


# -- 5/6. bandit and canary over time -----------------------------------------------------------------------


def learning(out: Path, q: bool, processes: int, users: int) -> tuple[dict, dict]:
    from services.stack.demo_routed import DEMO_SPEC
    from services.stack.routed import routed_pattern

    bandit: dict[str, Any] = {}
    canary: dict[str, Any] = {}
    duration = 10.0 if q else 30.0
    log("== bandit: rewards fed back")
    stack = None
    try:
        stack = start(routed_pattern("bandit", out / "stacks"))
        spec = LoadSpec(WAYS["router"], stack.endpoints["router"], users=users, duration_s=duration,
                        processes=processes, model=MODEL, model_version=VERSION, extra=["--feedback", "reward"])
        summary = measure(spec, out / "bandit", ceiling_s=None, meta={"pattern": "bandit"},
                          router=stack.endpoints["router"])
        timeline = json.loads((out / "bandit" / "timeline.json").read_text())
        arms = ((timeline[-1].get("policy") or {}).get("arms")) if timeline else {}
        better = max(arms, key=lambda a: arms[a].get("mean_reward") or 0) if arms else "v1"
        bandit = {"timeline": timeline, "users": users, "duration_s": duration, "arms": arms, "better": better,
                  **fig(summary)}
    except Exception as exc:
        log(f"   FAILED: {exc!r}")
        traceback.print_exc()
    finally:
        if stack is not None:
            stop_stack(stack)
    log("== canary under the supervisor: labels fed back")
    spec_doc = {**DEMO_SPEC, "name": "compare-canary"}
    spec_path = out / "stacks" / "canary-rollout.yaml"
    spec_path.parent.mkdir(parents=True, exist_ok=True)
    spec_path.write_text(yaml.safe_dump(spec_doc, sort_keys=False))
    stack = None
    try:
        stack = start(routed_pattern("canary", out / "stacks", rollout_spec=spec_path, supervisor_interval_s=None))
        spec = LoadSpec(WAYS["router"], stack.endpoints["router"], users=users, duration_s=15.0 if q else 40.0,
                        processes=processes, model=MODEL, model_version=VERSION, extra=["--feedback", "label"])
        summary = measure(spec, out / "canary", ceiling_s=None, meta={"pattern": "canary"},
                          router=stack.endpoints["router"], supervisor=stack.endpoints["supervisor"])
        canary = {"timeline": json.loads((out / "canary" / "timeline.json").read_text()), "users": users,
                  "steps": spec_doc["steps"], "bake_s": spec_doc["bake_s"], "interval_s": spec_doc["interval_s"],
                  **fig(summary)}
    except Exception as exc:
        log(f"   FAILED: {exc!r}")
        traceback.print_exc()
    finally:
        if stack is not None:
            stop_stack(stack)
    return bandit, canary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtests.compare")
    parser.add_argument("--quick", action="store_true", help="~3 min smoke: shorter and fewer stages")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "reports" / "comparison.md")
    parser.add_argument("--runs", type=Path, default=None, help="folder of the Locust runs "
                        "(default reports/loadtests/compare-<time>)")
    parser.add_argument("--processes", type=int, default=2, help="Locust worker processes")
    parser.add_argument("--users", type=int, default=8, help="users of the pattern and learning sections")
    parser.add_argument("--window", type=int, default=8, help="stream scoring: records in flight per user")
    parser.add_argument("--sections", default="modes,inprocess,profile,patterns,learning")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _exit_on_signal)
    q = args.quick
    out = args.runs or REPO_ROOT / "reports" / "loadtests" / f"compare-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}"
    out.mkdir(parents=True, exist_ok=True)
    sections = set(args.sections.split(","))
    t0 = time.perf_counter()
    runs = str(out.relative_to(REPO_ROOT)) if out.is_relative_to(REPO_ROOT) else str(out)
    r: dict[str, Any] = {"meta": {"quick": q, "cores": os.cpu_count(), "processes": args.processes,
                                  "loadavg_start": os.getloadavg()[0], "model": MODEL, "model_version": VERSION,
                                  "runs": runs,
                                  "started": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())},
                         "modes": [], "patterns": [], "kafka_window": args.window}

    def stage(name: str, fn: Callable[[], Any], key: str) -> None:
        if name not in sections:
            return
        s0 = time.perf_counter()
        log(f"# {name} (elapsed {s0 - t0:.0f} s)")
        try:
            r[key] = fn()
        except Exception as exc:  # a section failing is reported, the others still run
            log(f"# {name} FAILED: {exc!r}")
            traceback.print_exc()
        log(f"# {name} done in {time.perf_counter() - s0:.0f} s")
        (out / "results.json").write_text(json.dumps(r, indent=1) + "\n")

    stage("modes", lambda: modes(out, q, args.processes, args.window), "modes")
    stage("inprocess", lambda: inprocess(1.0 if q else 3.0), "inprocess")
    stage("profile", lambda: kafka_profile(5_000 if q else 20_000), "kafka_profile")
    stage("patterns", lambda: overhead(out, q, args.processes, args.users), "patterns")

    def both() -> None:
        r["bandit"], r["canary"] = learning(out, q, args.processes, args.users)

    stage("learning", both, "_learning")
    r.pop("_learning", None)
    r["meta"].update(finished=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                     elapsed_s=time.perf_counter() - t0, loadavg_end=os.getloadavg()[0])
    (out / "results.json").write_text(json.dumps(r, indent=1) + "\n")
    path = report.write(r, args.out)
    log(f"report written to {path.relative_to(REPO_ROOT) if path.is_relative_to(REPO_ROOT) else path} "
        f"in {time.perf_counter() - t0:.0f} s (runs in {r['meta']['runs']}/)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
