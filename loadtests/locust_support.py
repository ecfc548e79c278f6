"""What the locustfiles share: command-line options, the load profiles (stage tables) and their shape.

Every locustfile here accepts, besides Locust's own options:

    --model NAME            model to call (default wine)
    --model-version N       version to call (default 1)
    --load-profile NAME     fixed (default: -u/-r/-t as usual), realtime or batched (stage tables below)
    --time-scale X          multiply every stage duration by X (0.1 turns the 95 s real-time profile into ~10 s)

A profile is a `LoadTestShape` walking a stage table; each stage names how many users run, how
fast they are spawned and which user class (one-row or 64-row requests) they are. The `fixed`
profile reads `-u`, `-r` and `-t` (Locust's common options) and spawns the user classes named
on the command line, so one locustfile serves both ad-hoc runs and the named profiles.
"""

from __future__ import annotations

from dataclasses import dataclass

from locust import LoadTestShape, events

from loadtests.payloads import ModelRef


@dataclass(frozen=True)
class Stage:
    name: str
    duration_s: float
    users: int
    spawn_rate: float
    batch: bool = False
    """False: one-row requests (the one-row user class); True: 64-row requests (the batch class)."""


PROFILES: dict[str, tuple[Stage, ...]] = {
    # Real-time traffic: one row per request, a steady load with a spike of 4x in the middle.
    "realtime": (
        Stage("warm-up", 10, 2, 2),
        Stage("steady", 40, 8, 8),
        Stage("spike", 15, 32, 32),
        Stage("recover", 30, 8, 32),
    ),
    # Batched traffic: a few clients sending 64 rows per request, then twice as many.
    "batched": (
        Stage("warm-up", 10, 1, 1, batch=True),
        Stage("steady", 50, 4, 4, batch=True),
        Stage("peak", 20, 8, 8, batch=True),
    ),
}


@events.init_command_line_parser.add_listener
def _add_options(parser) -> None:
    group = parser.add_argument_group("serving-patterns")
    group.add_argument("--model", default="wine", help="model name to call (default wine)")
    group.add_argument("--model-version", type=int, default=1, help="model version to call (default 1)")
    group.add_argument(
        "--load-profile",
        default="fixed",
        choices=["fixed", *PROFILES],
        help="load profile: fixed (-u/-r/-t), or a stage table: " + ", ".join(PROFILES),
    )
    group.add_argument(
        "--time-scale", type=float, default=1.0, help="multiply stage durations (e.g. 0.1 for a smoke run)"
    )


def model_from(environment) -> ModelRef:
    options = environment.parsed_options
    if options is None:  # library use without a parser: the defaults
        return ModelRef("wine", 1)
    return ModelRef(options.model, options.model_version)


def profile_shape(one_row: type, batch: type) -> type[LoadTestShape]:
    """The `LoadTestShape` for a locustfile whose one-row and 64-row user classes are given."""

    class Profile(LoadTestShape):
        """Walks the stage table of `--load-profile`; `fixed` honours -u/-r/-t and the user classes named."""

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
            elapsed = 0.0
            for stage in PROFILES[name]:
                elapsed += stage.duration_s * options.time_scale
                if run_time < elapsed:
                    return (stage.users, stage.spawn_rate, [batch if stage.batch else one_row])
            return None

    return Profile
