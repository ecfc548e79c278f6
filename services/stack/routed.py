"""The routed patterns locally (shadow, canary, ab-test, bandit): a model server per variant + the router.

    make up PATTERN=canary        ->  services.stack.patterns.PATTERNS["canary"] -> routed_pattern("canary")

`patterns/<pattern>/routing.yaml` is the config a user copies; here it is copied to
`.run/<pattern>-routing.yaml` with each variant's URL pointed at a model server started for it
on a free port (every server serves the whole model repository, all versions, so each variant's
model and version resolve; `grpc:` addresses are pointed at each server's gRPC port too). The
router gets that file, a state file beside it, an admin token in `.run/router-admin-token`
(0600; `Authorization: Bearer $(cat .run/router-admin-token)`) and a gRPC Predict port.

The canary stack also runs the model supervisor (`services.supervisor`) on
`patterns/canary/rollout.yaml`, checking every 5 s, with the same admin token (it writes the
canary weights through `PUT /admin/routing`) and its state in `.run/canary-supervisor-state.json`;
its URL is the `supervisor` endpoint (`/status`, `/decisions`).

With `replicas` > 1 (`make up PATTERN=bandit REPLICAS=3`, also ab-test and shadow) the stack
starts Kafka (the local broker, or $KAFKA_BOOTSTRAP_SERVERS) and that many routers, each with
its own ports and state file, sharing the token key `.run/router-token.key` (0600, created once
like the model-signing key) and one feedback topic (`feedback-<pattern>-<time>`: a fresh stack
starts a fresh experiment). `router` is the first replica (compatibility); `router-2` ... and the
top-level `routers` list in `.run/endpoints.json` name every one. An A/B test counts by outcomes
there (each replica sees only its own assignments; services/router/README.md, Replicas).

`make demo` drives it with `services/stack/demo_routed.py`.
"""

from __future__ import annotations

import os
import secrets
import time
from pathlib import Path
from typing import Any

import yaml

from services.kafka.messages import ensure_key_file
from services.stack.kafka_broker import Broker, default_data_dir
from services.stack.paths import ENV_BOOTSTRAP, REPO_ROOT, RUN_DIR
from services.stack.process import PatternStack, ServiceProcess, free_port, http_ready

ROUTED_PATTERNS = ("shadow", "canary", "ab-test", "bandit")


def model_server(name: str, **env: str) -> tuple[ServiceProcess, str]:
    """A model server process serving every version of the repository; (process, REST URL)."""
    rest, grpc = free_port(), free_port()
    url = f"http://127.0.0.1:{rest}"
    proc = ServiceProcess(
        name=name,
        argv=["-m", "services.model_server"],
        env={"MODEL_SERVER_PORT": str(rest), "MODEL_SERVER_GRPC_PORT": str(grpc),
             "MODEL_SERVER_VERSION_POLICY": "all", **env},
        ready=http_ready(f"{url}/v2/health/ready"),
    )
    return proc, url


def router_process(config_path: Path, state_path: Path | None, *, name: str = "router",
                   token_file: Path | None = None, port: int | None = None, **env: str) -> tuple[ServiceProcess, str]:
    port = port or free_port()
    url = f"http://127.0.0.1:{port}"
    settings = {"ROUTER_PORT": str(port), "ROUTER_ROUTING_CONFIG": str(config_path),
                "ROUTER_STATE_FILE": str(state_path) if state_path else "", **env}
    if token_file is not None:
        settings["ROUTER_ADMIN_TOKEN_FILE"] = str(token_file)
    proc = ServiceProcess(name=name, argv=["-m", "services.router"], env=settings,
                          ready=http_ready(f"{url}/v2/health/ready"))
    return proc, url


def supervisor_process(spec_path: Path, router_url: str, *, token_file: Path | None, state_path: Path | None,
                       name: str = "supervisor", port: int | None = None, **env: str) -> tuple[ServiceProcess, str]:
    """The model supervisor (services.supervisor) watching `router_url` under the rollout spec."""
    port = port or free_port()
    url = f"http://127.0.0.1:{port}"
    settings = {"SUPERVISOR_PORT": str(port), "SUPERVISOR_ROUTER_URL": router_url,
                "SUPERVISOR_ROLLOUT_SPEC": str(spec_path),
                "SUPERVISOR_STATE_FILE": str(state_path) if state_path else "", **env}
    if token_file is not None:
        settings["SUPERVISOR_ADMIN_TOKEN_FILE"] = str(token_file)
    proc = ServiceProcess(name=name, argv=["-m", "services.supervisor"], env=settings,
                          ready=http_ready(f"{url}/readyz"))
    return proc, url


def pattern_config(pattern: str) -> dict[str, Any]:
    return yaml.safe_load((REPO_ROOT / "patterns" / pattern / "routing.yaml").read_text())


SUPERVISED_PATTERNS = ("canary",)
"""Patterns whose stack also runs the model supervisor on the pattern's rollout.yaml."""
SUPERVISOR_INTERVAL_S = 5.0
"""`make up`'s supervisor checks every 5 s (the spec's bake time still applies)."""


TOKEN_KEY_FILE = RUN_DIR / "router-token.key"
"""The local stack's feedback-token key, shared by its router replicas (created 0600 once)."""


def local_kafka(bootstrap_servers: str | None = None) -> tuple[str, dict[str, str]]:
    """Bootstrap servers, and the data dir of the local broker if this stack started it, so that
    `make down` stops exactly what `make up` started (a broker that was already up stays up)."""
    if bootstrap_servers or os.environ.get(ENV_BOOTSTRAP):
        return bootstrap_servers or os.environ[ENV_BOOTSTRAP], {}
    broker = Broker(default_data_dir(), stop_at_exit=False)
    started_here = not broker.is_running()
    bootstrap = broker.start()
    return bootstrap, ({"broker_data_dir": str(broker.data_dir)} if started_here else {})


def routed_pattern(pattern: str, run_dir: Path = RUN_DIR, *, rollout_spec: Path | None = None,
                   candidate_version: int | None = None, supervisor_interval_s: float | None = SUPERVISOR_INTERVAL_S,
                   replicas: int = 1, bootstrap_servers: str | None = None, **overrides: Any) -> PatternStack:
    """The PatternStack of a routed pattern: one model server per variant, then the router (and,
    for a supervised pattern, the supervisor on `rollout_spec`, default the pattern's rollout.yaml).
    `candidate_version` serves another version as the candidate (the demo's poor v3). `replicas`
    > 1 runs that many routers sharing a token key and a feedback topic on Kafka."""
    if replicas < 1:
        raise ValueError(f"replicas: at least 1, got {replicas}")
    if replicas > 1 and pattern in SUPERVISED_PATTERNS:
        raise ValueError(f"{pattern}: the supervisor drives one router's admin API; run it with one replica")
    text = (REPO_ROOT / "patterns" / pattern / "routing.yaml").read_text()
    cfg = yaml.safe_load(text)
    if replicas > 1 and cfg["policy"]["kind"] == "ab":
        # Each replica counts only the assignments it made, while outcomes are shared: rates over outcomes.
        overrides = {**overrides, "policy": {**cfg["policy"], "params": {**cfg["policy"].get("params", {}),
                                                                          "count_by": "outcomes"}}}
    cfg.update(overrides)
    if candidate_version is not None:
        cfg["variants"]["candidate"]["version"] = candidate_version
        overrides = {**overrides, "variants": cfg["variants"]}  # the file is rewritten, not patched
    processes, endpoints, moved = [], {}, {}
    for variant, vcfg in cfg["variants"].items():
        proc, url = model_server(f"model-server-{variant}")
        grpc = f"127.0.0.1:{proc.env['MODEL_SERVER_GRPC_PORT']}"
        moved[vcfg["url"]] = url
        vcfg["url"] = url
        if vcfg.get("grpc"):
            moved[vcfg["grpc"]] = grpc
            vcfg["grpc"] = grpc
        processes.append(proc)
        endpoints[f"model-server-{variant}"] = url
    run_dir.mkdir(parents=True, exist_ok=True)
    config_path = run_dir / f"{pattern}-routing.yaml"
    header = f"# generated from patterns/{pattern}/routing.yaml with local model-server URLs\n"
    if not overrides and all(text.count(old) == 1 for old in moved):
        for old, new in moved.items():  # keep the file's comments: only the URLs change
            text = text.replace(old, new)
        config_path.write_text(header + text)
    else:
        config_path.write_text(header + yaml.safe_dump(cfg, sort_keys=False))
    token_file = run_dir / "router-admin-token"
    token_file.unlink(missing_ok=True)
    fd = os.open(token_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # never readable by others
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_urlsafe(24) + "\n")
    shared: dict[str, str] = {}
    extra: dict[str, Any] = {}
    if replicas > 1:
        bootstrap, broker_extra = local_kafka(bootstrap_servers)
        topic = f"feedback-{pattern}-{int(time.time())}"
        shared = {"ROUTER_TOKEN_KEY_FILE": str(ensure_key_file(run_dir / TOKEN_KEY_FILE.name)),
                  "ROUTER_KAFKA_BOOTSTRAP_SERVERS": bootstrap, "ROUTER_FEEDBACK_TOPIC": topic}
        extra.update(broker_extra, kafka=bootstrap, feedback_topic=topic,
                     token_key_file=shared["ROUTER_TOKEN_KEY_FILE"])
    routers, state_files = [], []
    for i in range(1, replicas + 1):
        suffix = "" if i == 1 else f"-{i}"
        state_path = run_dir / f"{pattern}-router{suffix}-state.json"
        state_path.unlink(missing_ok=True)  # a fresh stack starts a fresh experiment
        grpc_port = free_port()
        env = {"ROUTER_GRPC_PORT": str(grpc_port), **shared}
        if pattern in SUPERVISED_PATTERNS:
            env["ROUTER_INPUT_TAP_ROWS"] = "2000"  # live inputs for the supervisor's input_drift rule
        if replicas > 1:
            env["ROUTER_REPLICA_ID"] = f"router-{i}"
        router, router_url = router_process(config_path, state_path, name=f"router{suffix}", token_file=token_file,
                                            **env)
        processes.append(router)
        routers.append({"name": f"router{suffix}", "url": router_url, "grpc": f"127.0.0.1:{grpc_port}",
                        "state_file": str(state_path)})
        state_files.append(str(state_path))
    url = routers[0]["url"]
    endpoints = {**{r["name"]: r["url"] for r in routers}, "router-grpc": routers[0]["grpc"], **endpoints}
    extra.update({
        "routers": routers,
        "routing_config": str(config_path), "state_file": state_files[0], "admin_token_file": str(token_file),
        "try": f"curl -s {url}/v2/models/{cfg.get('model') or 'breast-cancer'}/infer -d @request.json",
    })
    if pattern in SUPERVISED_PATTERNS:
        spec = rollout_spec or REPO_ROOT / "patterns" / pattern / "rollout.yaml"
        supervisor_state = run_dir / f"{pattern}-supervisor-state.json"
        supervisor_state.unlink(missing_ok=True)  # a fresh stack starts a fresh rollout
        env = {"SUPERVISOR_INTERVAL_S": str(supervisor_interval_s)} if supervisor_interval_s else {}
        supervisor, supervisor_url = supervisor_process(spec, url, token_file=token_file,
                                                        state_path=supervisor_state, **env)
        processes.append(supervisor)
        endpoints["supervisor"] = supervisor_url
        endpoints["dashboard"] = f"{supervisor_url}/"  # the supervisor's live dashboard page
        extra.update(rollout_spec=str(spec), supervisor_state_file=str(supervisor_state),
                     rollout=f"curl -s {supervisor_url}/status; curl -s {supervisor_url}/decisions")
    return PatternStack(processes, endpoints, extra=extra)
