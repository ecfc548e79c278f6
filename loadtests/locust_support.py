"""What the locustfiles share: command-line options, the holdout samples, accuracy, the load shapes, the summary.

Every locustfile here accepts, besides Locust's own options:

    --model NAME            model to call (default wine)
    --model-version N       version to call, and whose holdout rows are sent (default 1)
    --batch-rows N          rows per request of the batch user classes (client-side batches; default 64)
    --load-profile NAME     fixed (default: constant -u users for -t), ramp (step ramp to saturation),
                            realtime or batched (stage tables below)
    --ramp-users 1,2,4,...  the ramp's user counts, one stage each (default 1,2,4,8,16,32,64)
    --stage-s S             seconds per ramp stage (default 10)
    --time-scale X          multiply every stage duration by X (0.1 turns the 95 s real-time profile into ~10 s)
    --unversioned           call /v2/models/{m}/infer (the router picks the version) instead of .../versions/{v}/infer
    --feedback KIND         none | reward | label: after each answer, POST /feedback to the router with the
                            request's x-request-id and a reward (1 = every row right) or the true label(s)
    --ceiling               the client's own ceiling: send the same requests to a trivial endpoint
                            (loadtests/ceiling.py) and skip every check of the answers
    --summary-json PATH     write the run's summary (requests, rates, percentiles, accuracy, variants) there

A profile is a `LoadTestShape`. `fixed` (constant users) and `ramp` run the user classes named on
the command line; the stage tables `realtime`/`batched` pick the one-row or the batch class per stage.

Accuracy is measured alongside latency: every user sends holdout rows (cycling through the set,
one sample per request), compares the predicted labels with the holdout's true labels and adds
them to this process's `QUALITY`; worker processes (`--processes`) report theirs to the master
with Locust's `report_to_master`/`worker_report` events, and the summary carries the total (and
per answering variant, from the router's `x-variant` header).
"""

from __future__ import annotations

import json
import os
import re
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import locust.runners
import locust.stats
from locust import LoadTestShape, events
from locust.runners import MasterRunner, WorkerRunner

from loadtests.payloads import ModelRef, holdout_size, labels_for


@dataclass(frozen=True)
class Stage:
    name: str
    duration_s: float
    users: int
    spawn_rate: float
    batch: bool = False
    """False: one-row requests (the one-row user class); True: the batch class (--batch-rows rows)."""


PROFILES: dict[str, tuple[Stage, ...]] = {
    # Real-time traffic: one row per request, a steady load with a spike of 4x in the middle.
    "realtime": (
        Stage("warm-up", 10, 2, 2),
        Stage("steady", 40, 8, 8),
        Stage("spike", 15, 32, 32),
        Stage("recover", 30, 8, 32),
    ),
    # Batched traffic: a few clients sending --batch-rows rows per request, then twice as many.
    "batched": (
        Stage("warm-up", 10, 1, 1, batch=True),
        Stage("steady", 50, 4, 4, batch=True),
        Stage("peak", 20, 8, 8, batch=True),
    ),
}
DEFAULT_RAMP = (1, 2, 4, 8, 16, 32, 64)


def ramp_stages(users: list[int] | tuple[int, ...], stage_s: float) -> tuple[Stage, ...]:
    """The step ramp: one stage per user count, each `stage_s` long, users spawned at once."""
    return tuple(Stage(f"{u} users", stage_s, u, max(u, 1)) for u in users)


@events.init_command_line_parser.add_listener
def _add_options(parser) -> None:
    group = parser.add_argument_group("serving-patterns")
    group.add_argument("--model", default="wine", help="model name to call (default wine)")
    group.add_argument("--model-version", type=int, default=1, help="model version to call (default 1)")
    group.add_argument("--batch-rows", type=int, default=64, help="rows per request of the batch users (default 64)")
    group.add_argument(
        "--load-profile",
        default="fixed",
        choices=["fixed", "ramp", *PROFILES],
        help="load profile: fixed (constant -u users for -t), ramp (step ramp), or a stage table: "
        + ", ".join(PROFILES),
    )
    group.add_argument("--ramp-users", default=",".join(map(str, DEFAULT_RAMP)),
                       help="user counts of the ramp's stages (default 1,2,4,8,16,32,64)")
    group.add_argument("--stage-s", type=float, default=10.0, help="seconds per ramp stage (default 10)")
    group.add_argument(
        "--time-scale", type=float, default=1.0, help="multiply stage durations (e.g. 0.1 for a smoke run)"
    )
    group.add_argument("--unversioned", action="store_true",
                       help="V2: call /v2/models/{m}/infer (the router picks the version)")
    group.add_argument("--feedback", default="none", choices=["none", "reward", "label"],
                       help="after each answer POST /feedback (router patterns): a reward or the true labels")
    group.add_argument("--ceiling", action="store_true",
                       help="send the same requests to a trivial endpoint (loadtests/ceiling.py); no checks")
    group.add_argument("--summary-json", default="", help="write the run's summary JSON to this path")
    group.add_argument("--percentile-window", type=float, default=10.0,
                       help="seconds of the current p50/p99 in the CSV history (Locust's default 10; a ramp "
                            "shorter stages wants less, so a stage's percentiles are its own)")


# Worker processes report to the master every second (Locust's default is 3 s): the CSV history of a
# ramp then has a fresh total per second, so a stage's requests/s is measured, not interpolated.
locust.runners.WORKER_REPORT_INTERVAL = 1.0


@events.init.add_listener
def _percentile_window(environment, **_kwargs) -> None:
    window = option(environment, "percentile_window", 10.0)
    locust.stats.CURRENT_RESPONSE_TIME_PERCENTILE_WINDOW = max(1, int(window))


def options_of(environment) -> Any:
    return environment.parsed_options


def option(environment, name: str, default: Any) -> Any:
    options = environment.parsed_options
    return default if options is None else getattr(options, name, default)


def model_from(environment) -> ModelRef:
    options = environment.parsed_options
    if options is None:  # library use without a parser: the defaults
        return ModelRef("wine", 1)
    return ModelRef(options.model, options.model_version)


def rows_of(environment, batch: bool) -> int:
    return max(1, int(option(environment, "batch_rows", 64))) if batch else 1


class Samples:
    """Requests built once from the holdout set, one per starting row, with their true labels.

    `encode(model, rows, offset)` builds one request; users take them in turn (`next`), so every
    holdout row is sent and the labels of any answer are known."""

    _built: dict[tuple, list] = {}  # per process: users of one kind share the encoded requests

    def __init__(self, model: ModelRef, rows: int, encode, start: int = 0) -> None:
        key = (model, rows, encode)
        if key not in self._built:
            self._built[key] = [(encode(model, rows, offset=offset), labels_for(model, rows, offset))
                                for offset in range(holdout_size(model))]
        self.items = self._built[key]
        self.i = start % len(self.items)

    def next(self) -> tuple[Any, list[int]]:
        item = self.items[self.i]
        self.i = (self.i + 1) % len(self.items)
        return item


class Quality:
    """Accuracy and answering variants seen by this process (rows scored, rows right, per variant)."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.rows = 0
        self.correct = 0
        self.variants: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])  # requests, rows, correct
        self.feedback = {"sent": 0, "refused": 0}

    def add(self, predicted: list[int], truth: list[int], variant: str | None = None) -> int:
        """Count an answer; returns how many of its rows were right."""
        right = sum(int(p == t) for p, t in zip(predicted, truth, strict=False))
        self.rows += len(truth)
        self.correct += right
        v = self.variants[variant or "-"]
        v[0] += 1
        v[1] += len(truth)
        v[2] += right
        return right

    def take(self) -> dict[str, Any]:
        """What was counted since the last take (a worker's report to the master)."""
        out = {"rows": self.rows, "correct": self.correct, "variants": {k: list(v) for k, v in self.variants.items()},
               "feedback": dict(self.feedback)}
        self.reset()
        return out

    def merge(self, data: dict[str, Any]) -> None:
        self.rows += data["rows"]
        self.correct += data["correct"]
        for name, (req, rows, right) in data["variants"].items():
            v = self.variants[name]
            v[0] += req
            v[1] += rows
            v[2] += right
        for k, n in data["feedback"].items():
            self.feedback[k] = self.feedback.get(k, 0) + n

    def as_dict(self) -> dict[str, Any]:
        return {
            "rows_checked": self.rows,
            "correct": self.correct,
            "accuracy": self.correct / self.rows if self.rows else None,
            "variants": {k: {"requests": r, "rows": n, "correct": c, "accuracy": c / n if n else None}
                         for k, (r, n, c) in sorted(self.variants.items())},
            "feedback": dict(self.feedback),
        }


QUALITY = Quality()
"""This process's accuracy counters; the summary (master or local runner) carries the total of all processes."""


@events.report_to_master.add_listener
def _report(client_id, data) -> None:
    data["serving_patterns_quality"] = QUALITY.take()


@events.worker_report.add_listener
def _collect(client_id, data) -> None:
    if "serving_patterns_quality" in data:
        QUALITY.merge(data["serving_patterns_quality"])


_STARTED: dict[str, Any] = {"at": None, "processes": 1}


@events.test_start.add_listener
def _started(environment, **_kwargs) -> None:
    runner = environment.runner
    if not isinstance(runner, WorkerRunner):
        _STARTED["at"] = time.time()
        if isinstance(runner, MasterRunner):
            _STARTED["processes"] = runner.worker_count


_ROWS_IN_NAME = re.compile(r"\bx(\d+)\b")


def rows_in_name(name: str) -> int:
    """Rows per request of a statistics entry, from the `x<rows>` every user here puts in its names."""
    m = _ROWS_IN_NAME.search(name)
    return int(m.group(1)) if m else 1


def _entry(e) -> dict[str, Any]:
    rows = rows_in_name(e.name)
    return {
        "type": e.method, "name": e.name, "rows_per_request": rows,
        "requests": e.num_requests, "failures": e.num_failures,
        "rps": e.total_rps, "rows_per_s": e.total_rps * rows,
        "p50_ms": e.get_response_time_percentile(0.5) if e.num_requests else None,
        "p95_ms": e.get_response_time_percentile(0.95) if e.num_requests else None,
        "p99_ms": e.get_response_time_percentile(0.99) if e.num_requests else None,
        "mean_ms": e.avg_response_time if e.num_requests else None,
    }


def summary(environment) -> dict[str, Any]:
    """The run's summary: Locust's totals per entry, accuracy and variants, and how it was run."""
    stats = environment.stats
    options = environment.parsed_options
    entries = [_entry(e) for e in stats.entries.values()]
    main = [e for e in entries if e["type"] != "POST" or "/feedback" not in e["name"]]
    total = _entry(stats.total)
    return {
        "started_at": _STARTED["at"] or stats.start_time,
        "ended_at": time.time(),
        "duration_s": (stats.last_request_timestamp or time.time()) - stats.start_time if stats.start_time else None,
        "host": environment.host,
        "user_classes": sorted(u.__name__ for u in environment.user_classes),
        "processes": _STARTED["processes"],
        "options": {k: getattr(options, k, None) for k in (
            "model", "model_version", "batch_rows", "load_profile", "ramp_users", "stage_s", "time_scale",
            "num_users", "spawn_rate", "run_time", "unversioned", "feedback", "ceiling")} if options else {},
        "total": total,
        "requests": sum(e["requests"] for e in main),
        "failures": sum(e["failures"] for e in main),
        "rows_per_s": sum(e["rows_per_s"] for e in main),
        "rps": sum(e["rps"] for e in main),
        # The busiest entry that is not feedback: its percentiles are the run's latency.
        "main": max(main, key=lambda e: e["requests"]) if main else total,
        "entries": entries,
        "quality": QUALITY.as_dict(),
        "pid": os.getpid(),
    }


@events.quitting.add_listener
def _write_summary(environment, **_kwargs) -> None:
    path = option(environment, "summary_json", "")
    if not path or isinstance(environment.runner, WorkerRunner):
        return
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(summary(environment), indent=2) + "\n")


def profile_shape(one_row: type, batch: type) -> type[LoadTestShape]:
    """The `LoadTestShape` for a locustfile whose one-row and batch user classes are given."""

    class Profile(LoadTestShape):
        """fixed: constant -u users for -t, the user classes named; ramp: a step ramp of those classes
        (--ramp-users, --stage-s each); realtime/batched: the stage tables."""

        use_common_options = True

        def tick(self):
            options = self.runner.environment.parsed_options
            name = getattr(options, "load_profile", "fixed")
            run_time = self.get_run_time()
            if name == "fixed":
                limit = getattr(options, "run_time", None)
                if limit and run_time > limit:
                    return None
                return (options.num_users or 1, options.spawn_rate or 1, None)
            if name == "ramp":
                users = [int(u) for u in str(options.ramp_users).split(",") if u.strip()]
                stages, classes = ramp_stages(users, options.stage_s), None
            else:
                stages, classes = PROFILES[name], "table"
            elapsed = 0.0
            for stage in stages:
                elapsed += stage.duration_s * options.time_scale
                if run_time < elapsed:
                    chosen = None if classes is None else [batch if stage.batch else one_row]
                    return (stage.users, stage.spawn_rate, chosen)
            return None

    return Profile
