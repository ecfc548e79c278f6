"""`make loadtest`: headless Locust against a pattern, with the client's own ceiling measured in the same run.

    .venv/bin/python -m loadtests.run --pattern embedded                        # local stack, up and down
    .venv/bin/python -m loadtests.run --pattern bandit --users 16 --duration 60s
    .venv/bin/python -m loadtests.run --pattern stream-scoring --rows 64 --window 8
    .venv/bin/python -m loadtests.run --pattern model-as-service --endpoint model-server-grpc --profile ramp
    .venv/bin/python -m loadtests.run --pattern canary --host http://127.0.0.1:8080   # a given host (cluster)

What one run does:

1. **The target.** With `--host`, that host (a cluster's ingress, a port-forward or a Service's
   ClusterIP; for stream-scoring the Kafka bootstrap servers; `--supervisor URL` adds the
   canary's supervisor to the timeline). Otherwise the local stack: the pattern's running
   stack (`make up`, `.run/endpoints.json`) if it is this pattern, else started here
   (`start_pattern`: logs in `.run/loadtest-logs/`, routed configs and admin token in
   `.run/loadtest/`) and stopped afterwards, its Kafka broker too.
2. **The users.** The pattern's way in (`ENDPOINTS`): the app's `/predict` (embedded,
   model-as-service, model-as-data), the router's KServe V2 (shadow, canary, ab-test, bandit;
   rewards fed back for bandit and ab-test, true labels for canary), stream scoring over Kafka;
   `--endpoint` picks another (`model-server-rest`, `model-server-grpc`, `router-grpc`).
   `--rows N` > 1 sends client-side batches of N rows per request.
3. **The client's ceiling.** The same locustfile, user class, users and processes against a
   trivial endpoint (`loadtests/ceiling.py`: an HTTP "ok", an empty gRPC answer, a Kafka echo)
   for `--ceiling-s` seconds; the summary marks the run client-bound when its requests/s is
   within 80% of that ceiling (the figure then says more about the client than the server).
4. **Locust** runs headless with `--processes` worker processes (default 2: one Python process
   saturates a core well below what the servers here answer), and writes into
   `reports/loadtests/<run>/`: `locust_stats.csv`, `locust_stats_history.csv` (full history),
   `locust_failures.csv`, `locust_exceptions.csv`, `report.html` and `summary.json` (totals,
   percentiles, accuracy, variants, ceiling, client-bound flag; for routed patterns also
   `timeline.json`: the router's policy state, and the supervisor's status, once a second).

The printed line has the totals, p50/p99, accuracy, each answering variant's share and, for a
learning policy, its arms' share of the pulls over the last third of the run (`late_arm_shares`).
Nothing fails on a number; the exit status is Locust's (non-zero when requests failed).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from services.stack.paths import ENDPOINTS_FILE, REPO_ROOT, RUN_DIR
from services.stack.process import PatternStack, ServiceProcess, free_port, http_ready, tcp_ready

REPORTS = REPO_ROOT / "reports" / "loadtests"
LOG_DIR = RUN_DIR / "loadtest-logs"
CLIENT_BOUND = 0.8
"""A figure at or above this fraction of the client's ceiling is marked client-bound."""


@dataclass(frozen=True)
class Way:
    """How Locust goes in through one endpoint: locustfile, user classes (one-row, batch), ceiling kind."""

    locustfile: str
    one_row: str
    batch: str
    ceiling: str
    """http | grpc | kafka: which trivial endpoint measures the client's ceiling."""
    extra: tuple[str, ...] = ()


WAYS: dict[str, Way] = {
    "app": Way("locust_app.py", "AppOneRow", "AppBatch", "http"),
    "model-server-rest": Way("locust_kserve_v2.py", "V2OneRow", "V2Batch", "http"),
    "router": Way("locust_kserve_v2.py", "V2OneRow", "V2Batch", "http", ("--unversioned",)),
    "model-server-grpc": Way("locust_tfs_grpc.py", "TfsOneRow", "TfsBatch", "grpc"),
    "router-grpc": Way("locust_tfs_grpc.py", "TfsOneRow", "TfsBatch", "grpc"),
    "kafka": Way("locust_kafka.py", "KafkaOneRow", "KafkaBatch", "kafka"),
}

ENDPOINTS: dict[str, str] = {
    "embedded": "app", "model-as-service": "app", "model-as-data": "app",
    "shadow": "router", "canary": "router", "ab-test": "router", "bandit": "router",
    "stream-scoring": "kafka",
}
"""The way in a pattern is load-tested by default."""

FEEDBACK: dict[str, str] = {"bandit": "reward", "ab-test": "reward", "canary": "label"}
"""What is fed back to the router per pattern (rewards teach bandit and A/B; labels feed the canary's accuracy)."""


@dataclass
class LoadSpec:
    """One Locust run: where, which users, how much load."""

    way: Way
    host: str
    users: int = 8
    duration_s: float = 30.0
    rows: int = 1
    processes: int = 2
    profile: str = "fixed"
    ramp_users: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64)
    stage_s: float = 10.0
    model: str = "breast-cancer"
    model_version: int = 1
    extra: list[str] = field(default_factory=list)

    @property
    def user_class(self) -> str:
        return self.way.batch if self.rows > 1 else self.way.one_row

    @property
    def peak_users(self) -> int:
        return max(self.ramp_users) if self.profile == "ramp" else self.users

    @property
    def run_s(self) -> float:
        return len(self.ramp_users) * self.stage_s if self.profile == "ramp" else self.duration_s

    def argv(self, out: Path, *, host: str | None = None, ceiling_s: float | None = None) -> list[str]:
        argv = [sys.executable, "-m", "locust", "-f", str(REPO_ROOT / "loadtests" / self.way.locustfile),
                "--headless", "--only-summary", "--host", host or self.host, "--stop-timeout", "5",
                "--model", self.model, "--model-version", str(self.model_version), "--batch-rows", str(self.rows),
                "--csv", str(out / "locust"), "--csv-full-history", "--html", str(out / "report.html"),
                "--summary-json", str(out / "summary.json"), *self.way.extra, *self.extra]
        if self.processes > 1:
            argv += ["--processes", str(self.processes)]
        if ceiling_s is not None:  # the ceiling: constant peak users, same classes, no checks
            argv += ["--ceiling", "-u", str(self.peak_users), "-r", str(self.peak_users), "-t", f"{ceiling_s:g}s"]
        elif self.profile == "ramp":
            argv += ["--load-profile", "ramp", "--ramp-users", ",".join(map(str, self.ramp_users)),
                     "--stage-s", f"{self.stage_s:g}", "--percentile-window", f"{max(2, self.stage_s // 2):g}"]
        else:
            argv += ["-u", str(self.users), "-r", str(self.users), "-t", f"{self.duration_s:g}s"]
        return [*argv, self.user_class]


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def run_locust(spec: LoadSpec, out: Path, *, host: str | None = None, ceiling_s: float | None = None) -> dict:
    """Run Locust once into `out`; returns its summary (with Locust's exit status)."""
    out.mkdir(parents=True, exist_ok=True)
    argv = spec.argv(out, host=host, ceiling_s=ceiling_s)
    budget = (ceiling_s or spec.run_s) + 120
    with open(out / "locust.log", "wb") as logf:
        try:
            status = subprocess.run(argv, cwd=REPO_ROOT, stdout=logf, stderr=subprocess.STDOUT,
                                    timeout=budget).returncode
        except subprocess.TimeoutExpired:
            status = -1
    path = out / "summary.json"
    empty = {"rps": 0, "p50_ms": None, "p99_ms": None}
    summary = json.loads(path.read_text()) if path.exists() else {"requests": 0, "failures": 0, "rows_per_s": 0,
                                                                    "rps": 0, "total": empty, "main": empty}
    summary["exit_status"] = status
    summary["command"] = " ".join(argv[1:])
    history = out / "locust_stats_history.csv"
    if history.exists():
        from loadtests.report import ramp_stages, read_history

        # Per stage of constant users (one for a fixed run), without the spawn and the first seconds:
        # the steady rate, which is what a ceiling is compared on.
        # The main entry's rows (feedback posts are entries of their own); the aggregate when there is none.
        name = (summary.get("main") or {}).get("name") or "Aggregated"
        summary["stages"] = ramp_stages(read_history(history, name) or read_history(history), spec.rows)
        if ceiling_s is not None or spec.profile != "ramp":
            summary["steady_rps"] = summary["stages"][-1]["rps"] if summary["stages"] else None
    path.write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def start_ceiling(kind: str, bootstrap: str | None = None) -> tuple[ServiceProcess, str, list[str]]:
    """The trivial endpoint of `kind`, started; (process, host for Locust, extra Locust options)."""
    if kind == "kafka":
        if not bootstrap:
            raise ValueError("the Kafka ceiling needs the broker's bootstrap servers")
        s = uuid.uuid4().hex[:6]
        req, res = f"ceiling-req-{s}", f"ceiling-res-{s}"
        proc = ServiceProcess(f"ceiling-kafka-{s}", ["-m", "loadtests.ceiling", "kafka", "--bootstrap", bootstrap,
                                                    "--requests-topic", req, "--results-topic", res])
        proc.start(LOG_DIR)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and "ceiling kafka" not in (proc.log_path.read_text(errors="replace")
                                                                       if proc.log_path.exists() else ""):
            if proc.popen.poll() is not None:
                break
            time.sleep(0.2)
        return proc, bootstrap, ["--requests-topic", req, "--results-topic", res]
    port = free_port()
    ready = http_ready(f"http://127.0.0.1:{port}/") if kind == "http" else tcp_ready("127.0.0.1", port)
    proc = ServiceProcess(f"ceiling-{kind}-{port}", ["-m", "loadtests.ceiling", kind, "--port", str(port)],
                          ready=ready)
    proc.start(LOG_DIR)
    proc.wait_ready(30)
    return proc, (f"http://127.0.0.1:{port}" if kind == "http" else f"127.0.0.1:{port}"), []


def measure_ceiling(spec: LoadSpec, out: Path, seconds: float, bootstrap: str | None = None) -> dict:
    """The same users against the trivial endpoint: the client's requests/s on this machine."""
    proc, host, extra = start_ceiling(spec.way.ceiling, bootstrap)
    saved = list(spec.extra)
    try:
        spec.extra = [*saved, *extra]
        return run_locust(spec, out, host=host, ceiling_s=seconds)
    finally:
        spec.extra = saved
        proc.stop()


def mark_client_bound(summary: dict, ceiling: dict | None) -> dict:
    """Adds the ceiling's figures and the client-bound flag (requests/s within 80% of the ceiling's)."""
    if not ceiling:
        summary["ceiling"] = None
        summary["client_bound"] = None
        return summary
    rps = summary.get("steady_rps") or summary["rps"]
    ceiling_rps = ceiling.get("steady_rps") or ceiling["rps"]
    summary["ceiling"] = {"rps": ceiling_rps, "users": ceiling.get("options", {}).get("num_users"),
                          "processes": ceiling.get("processes"), "failures": ceiling.get("failures")}
    summary["client_bound"] = bool(ceiling_rps and rps >= CLIENT_BOUND * ceiling_rps)
    summary["fraction_of_ceiling"] = rps / ceiling_rps if ceiling_rps else None
    return summary


class Timeline:
    """Polls the router's policy state (and the supervisor's status) once a second during a run."""

    def __init__(self, router: str | None, supervisor: str | None, interval_s: float = 1.0) -> None:
        self.router, self.supervisor, self.interval_s = router, supervisor, interval_s
        self.points: list[dict[str, Any]] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Timeline:
        if self.router or self.supervisor:
            self.thread.start()
        return self

    def __exit__(self, *_exc) -> None:
        self.stop.set()
        if self.thread.is_alive():
            self.thread.join(10)

    def _run(self) -> None:
        t0 = time.time()
        with httpx.Client(timeout=2.0) as client:
            while not self.stop.is_set():
                point: dict[str, Any] = {"t": round(time.time() - t0, 2)}
                try:
                    if self.router:
                        point["policy"] = client.get(f"{self.router}/policy").json().get("state")
                    if self.supervisor:
                        status = client.get(f"{self.supervisor}/status").json()
                        point["supervisor"] = {k: status.get(k) for k in ("phase", "candidate_weight", "step_index",
                                                                          "check")}
                except (httpx.HTTPError, ValueError) as exc:
                    point["error"] = str(exc)[:200]
                self.points.append(point)
                self.stop.wait(self.interval_s)


def running_stack(pattern: str) -> dict | None:
    """The endpoints of `make up`'s stack when it is this pattern and alive."""
    if not ENDPOINTS_FILE.exists():
        return None
    state = json.loads(ENDPOINTS_FILE.read_text())
    if state.get("pattern") != pattern:
        return None
    for proc in state["processes"]:
        try:
            os.kill(proc["pid"], 0)
        except ProcessLookupError:
            return None
    return state["endpoints"]


def start_pattern(pattern: str, log_dir: Path = LOG_DIR) -> PatternStack:
    """Start a pattern's processes in order (stopped again if one fails). Routed patterns keep their
    generated config, state and admin token in `.run/loadtest/`, so a `make up` stack's are left alone."""
    from services.stack.patterns import PATTERNS
    from services.stack.routed import ROUTED_PATTERNS, routed_pattern
    from services.stack.runner import start

    stack = routed_pattern(pattern, RUN_DIR / "loadtest") if pattern in ROUTED_PATTERNS else PATTERNS[pattern]()
    return start(stack, log_dir, ready_timeout_s=120)


def stop_stack(stack: PatternStack) -> None:
    from services.stack.runner import stop

    stop(stack)


def run_dir(name: str, root: Path = REPORTS) -> Path:
    out = root / f"{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-{name}"
    out.mkdir(parents=True, exist_ok=True)
    return out


def measure(spec: LoadSpec, out: Path, *, ceiling_s: float | None, meta: dict[str, Any],
            router: str | None = None, supervisor: str | None = None, bootstrap: str | None = None) -> dict:
    """The ceiling (unless `ceiling_s` is None), then the run itself; writes and returns the summary."""
    ceiling = None
    if ceiling_s:
        log(f"  client ceiling: {spec.peak_users} users of {spec.user_class} against a trivial endpoint, "
            f"{ceiling_s:g} s")
        try:
            ceiling = measure_ceiling(spec, out / "ceiling", ceiling_s, bootstrap)
        except Exception as exc:  # the run still counts; the report says the ceiling is missing
            log(f"  no client ceiling: {exc!r}")
    what = (f"ramp {','.join(map(str, spec.ramp_users))} users x {spec.stage_s:g} s" if spec.profile == "ramp"
            else f"{spec.users} users for {spec.duration_s:g} s")
    log(f"  locust: {spec.user_class} x{spec.rows} rows, {what}, {spec.processes} processes -> {spec.host}")
    with Timeline(router, supervisor) as timeline:
        summary = run_locust(spec, out)
    if timeline.points:
        (out / "timeline.json").write_text(json.dumps(timeline.points) + "\n")
        summary["timeline"] = "timeline.json"
        summary["late_arm_shares"] = late_arm_shares(timeline.points)
    summary = mark_client_bound(summary, ceiling)
    summary.update(meta)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def variant_shares(summary: dict) -> dict[str, float]:
    """Each answering variant's share of the run's requests (from the router's `x-variant`)."""
    variants = (summary.get("quality") or {}).get("variants") or {}
    total = sum(v.get("requests", 0) for v in variants.values())
    return {name: v.get("requests", 0) / total for name, v in sorted(variants.items())} if total else {}


def late_arm_shares(points: list[dict[str, Any]], last: float = 1 / 3) -> dict[str, float]:
    """A learning policy's share of pulls per arm over the `last` fraction of the timeline: what it
    has converged to, without the exploration at the start (the whole run's share hides it)."""
    arms = [(p["t"], p["policy"]["arms"]) for p in points
            if isinstance(p.get("policy"), dict) and isinstance(p["policy"].get("arms"), dict)]
    if len(arms) < 2:
        return {}
    t_end, end = arms[-1]
    start = next(a for t, a in arms if t >= t_end * (1 - last))
    pulls = {name: end[name].get("pulls", 0) - (start.get(name) or {}).get("pulls", 0) for name in end}
    total = sum(pulls.values())
    return {name: n / total for name, n in sorted(pulls.items())} if total > 0 else {}


def describe(summary: dict) -> str:
    t = summary["main"]
    acc = summary.get("quality", {}).get("accuracy")
    bound = " CLIENT-BOUND" if summary.get("client_bound") else ""
    ceiling = summary.get("ceiling") or {}
    return (f"{summary['requests']:,} requests, {summary['failures']} failed, {summary['rps']:,.0f} req/s "
            f"({summary['rows_per_s']:,.0f} rows/s), p50 {t['p50_ms'] or 0:.0f} ms, p99 {t['p99_ms'] or 0:.0f} ms"
            + (f", accuracy {acc:.3f}" if acc is not None else "")
            + (", answered by " + " ".join(f"{k} {v:.0%}" for k, v in variant_shares(summary).items())
               if variant_shares(summary) else "")
            + (", last third " + " ".join(f"{k} {v:.0%}" for k, v in summary["late_arm_shares"].items())
               if summary.get("late_arm_shares") else "")
            + (f"; client ceiling {ceiling['rps']:,.0f} req/s{bound}" if ceiling else ""))


def parse_duration(text: str) -> float:
    text = text.strip()
    units = {"s": 1, "m": 60, "h": 3600}
    if text and text[-1] in units:
        return float(text[:-1]) * units[text[-1]]
    return float(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtests.run", description="headless Locust against a pattern")
    parser.add_argument("--pattern", required=True, choices=sorted(ENDPOINTS))
    parser.add_argument("--endpoint", choices=sorted(WAYS), help="the way in (default: the pattern's)")
    parser.add_argument("--host", default="", help="load this host instead of the local stack")
    parser.add_argument("--supervisor", default="",
                        help="with --host: the supervisor's URL (canary), polled into timeline.json")
    parser.add_argument("--users", type=int, default=8)
    parser.add_argument("--duration", default="30s", help="30s, 2m, ... (fixed profile)")
    parser.add_argument("--profile", choices=["fixed", "ramp"], default="fixed")
    parser.add_argument("--ramp-users", default="1,2,4,8,16,32,64")
    parser.add_argument("--stage-s", type=float, default=10.0)
    parser.add_argument("--rows", type=int, default=1, help="rows per request (> 1: client-side batches)")
    parser.add_argument("--window", type=int, default=1, help="stream scoring: records in flight per user")
    parser.add_argument("--topics", default="scoring-requests,scoring-results",
                        help="stream scoring: requests topic,results topic")
    parser.add_argument("--processes", type=int, default=2, help="Locust worker processes (1: no workers)")
    parser.add_argument("--model", default="breast-cancer")
    parser.add_argument("--model-version", type=int, default=1, help="whose holdout rows are sent (and called)")
    parser.add_argument("--feedback", choices=["auto", "none", "reward", "label"], default="auto")
    parser.add_argument("--ceiling-s", type=float, default=10.0, help="client ceiling run length (0: none)")
    parser.add_argument("--out", type=Path, default=REPORTS)
    parser.add_argument("--name", default="", help="run folder suffix (default: pattern-endpoint)")
    args = parser.parse_args(argv)

    endpoint = args.endpoint or ENDPOINTS[args.pattern]
    way = WAYS[endpoint]
    feedback = FEEDBACK.get(args.pattern, "none") if args.feedback == "auto" else args.feedback
    if endpoint != "router":
        feedback = "none"
    extra = ["--feedback", feedback] if feedback != "none" else []
    if endpoint == "kafka":
        requests_topic, results_topic = args.topics.split(",")
        extra += ["--kafka-window", str(args.window), "--requests-topic", requests_topic,
                  "--results-topic", results_topic]
    stack, endpoints = None, {}
    t0 = time.perf_counter()
    if args.host:
        endpoints = {endpoint: args.host, **({"supervisor": args.supervisor} if args.supervisor else {})}
    else:
        endpoints = running_stack(args.pattern) or {}
        if endpoints:
            log(f"using the running {args.pattern} stack (.run/endpoints.json)")
        else:
            log(f"starting the {args.pattern} stack (logs in {LOG_DIR.relative_to(REPO_ROOT)}/)")
            stack = start_pattern(args.pattern)
            endpoints = stack.endpoints
    try:
        if endpoint not in endpoints:
            print(f"{args.pattern} has no {endpoint} endpoint (it has {', '.join(endpoints)})", file=sys.stderr)
            return 2
        spec = LoadSpec(way, endpoints[endpoint], users=args.users, duration_s=parse_duration(args.duration),
                        rows=args.rows, processes=args.processes, profile=args.profile,
                        ramp_users=tuple(int(u) for u in args.ramp_users.split(",") if u.strip()),
                        stage_s=args.stage_s, model=args.model, model_version=args.model_version, extra=extra)
        out = run_dir(args.name or f"{args.pattern}-{endpoint}{f'-x{args.rows}' if args.rows > 1 else ''}", args.out)
        meta = {"pattern": args.pattern, "endpoint": endpoint, "target": spec.host, "stack_started_here": bool(stack),
                "feedback": feedback, "cores": os.cpu_count(), "loadavg_at_start": os.getloadavg()[0]}
        summary = measure(spec, out, ceiling_s=args.ceiling_s or None, meta=meta,
                          router=endpoints.get("router") if endpoint == "router" else None,
                          supervisor=endpoints.get("supervisor"),
                          bootstrap=endpoints.get("kafka") if endpoint == "kafka" else None)
    finally:
        if stack is not None:
            log(f"stopping the {args.pattern} stack")
            stop_stack(stack)
    log(f"{args.pattern} via {endpoint}: {describe(summary)}")
    log(f"written to {out.relative_to(REPO_ROOT) if out.is_relative_to(REPO_ROOT) else out}/ "
        f"(summary.json, report.html, locust_stats*.csv) in {time.perf_counter() - t0:.0f} s")
    return 0 if summary.get("exit_status") == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
