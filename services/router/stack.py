"""The routed patterns locally (shadow, canary, ab-test, bandit): a model server per variant + the router.

    make up PATTERN=canary        ->  services.stack.patterns -> routed_pattern("canary")

`patterns/<pattern>/routing.yaml` is the config a user copies; here it is copied to
`.run/<pattern>-routing.yaml` with each variant's URL pointed at a model server started for it
on a free port (every server serves the whole model repository, all versions, so each variant's
model and version resolve; `grpc:` addresses are pointed at each server's gRPC port too). The
router gets that file, a state file beside it, an admin token in `.run/router-admin-token`
(0600; `Authorization: Bearer $(cat .run/router-admin-token)`) and a gRPC Predict port.

`demo_routed` drives the holdout set through a running stack for `make demo`.
"""

from __future__ import annotations

import secrets
import time
from collections import Counter
from pathlib import Path
from typing import Any

import yaml

from services.stack.process import REPO_ROOT, ServiceProcess, free_port, http_ready

ROUTED_PATTERNS = ("shadow", "canary", "ab-test", "bandit")
RUN_DIR = REPO_ROOT / ".run"


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


def pattern_config(pattern: str) -> dict[str, Any]:
    return yaml.safe_load((REPO_ROOT / "patterns" / pattern / "routing.yaml").read_text())


def routed_pattern(pattern: str, run_dir: Path = RUN_DIR, **overrides: Any) -> Any:
    """The PatternStack of a routed pattern: one model server per variant, then the router."""
    from services.stack.patterns import PatternStack

    text = (REPO_ROOT / "patterns" / pattern / "routing.yaml").read_text()
    cfg = yaml.safe_load(text)
    cfg.update(overrides)
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
    state_path = run_dir / f"{pattern}-router-state.json"
    state_path.unlink(missing_ok=True)  # a fresh stack starts a fresh experiment
    token_file = run_dir / "router-admin-token"
    token_file.write_text(secrets.token_urlsafe(24) + "\n")
    token_file.chmod(0o600)
    grpc_port = free_port()
    router, url = router_process(config_path, state_path, token_file=token_file, ROUTER_GRPC_PORT=str(grpc_port))
    processes.append(router)
    endpoints = {"router": url, "router-grpc": f"127.0.0.1:{grpc_port}", **endpoints}
    return PatternStack(processes, endpoints, extra={
        "routing_config": str(config_path), "state_file": str(state_path), "admin_token_file": str(token_file),
        "try": f"curl -s {url}/v2/models/{cfg.get('model') or 'breast-cancer'}/infer -d @request.json",
    })


# -- make demo ---------------------------------------------------------------------------------------


def v2_body(row: list[float], user: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"inputs": [{"name": "input", "shape": [1, len(row)], "datatype": "FP32", "data": row}]}
    if user is not None:
        body["parameters"] = {"user_id": user}
    return body


def demo_routed(pattern: str, model: str = "breast-cancer") -> Any:
    """Start the pattern, send every holdout row through the router (with a user id), feed back
    outcomes (label correct = 1) for A/B and bandits, and summarise what the router saw."""
    import httpx
    import numpy as np

    from services.core.settings import DEFAULT_MODEL_REPOSITORY
    from services.stack.__main__ import start_stack
    from services.stack.demo import DEMO_LOG_DIR, Row, load_holdout

    version_dir = max((DEFAULT_MODEL_REPOSITORY / model).iterdir(), key=lambda p: int(p.name))
    _, x, y = load_holdout(version_dir / "holdout.csv")
    stack = start_stack(pattern, DEMO_LOG_DIR)
    try:
        url = stack.endpoints["router"]
        latencies, correct, errors, served = [], 0, 0, Counter()
        learns = pattern in ("ab-test", "bandit")
        with httpx.Client(base_url=url, timeout=10.0) as client:
            for rounds in range(3 if learns else 1):  # bandits need a few rounds to show a preference
                for i, (row, label) in enumerate(zip(x.tolist(), y.tolist(), strict=True)):
                    user = f"user-{rounds}-{i}"
                    t0 = time.perf_counter()
                    r = client.post(f"/v2/models/{model}/infer", json=v2_body(row),
                                    headers={"x-user-id": user})
                    latencies.append(time.perf_counter() - t0)
                    if r.status_code != 200:
                        errors += 1
                        continue
                    answer = r.json()
                    ok = int(answer["outputs"][0]["data"][0] == label)
                    correct += ok
                    served[r.headers["x-variant"]] += 1
                    if learns:
                        client.post("/feedback", json={"request_id": r.headers["x-request-id"], "reward": ok})
            note = ", ".join(f"{v}: {n}" for v, n in sorted(served.items()))
            if pattern == "shadow":
                time.sleep(0.5)  # let the last mirrors finish
                s = client.get("/shadow/summary").json()["shadows"]
                note += "; " + "; ".join(
                    f"shadow {name}: agreement {d['label_agreement_rate'] or 0:.3f}, "
                    f"mean |dp| {d['mean_abs_prob_diff'] or 0:.4f}, dropped {d['dropped_queue_full']}"
                    for name, d in s.items())
            elif pattern == "ab-test":
                report = client.get("/experiments/breast-cancer-ab").json()["report"]
                note += f"; verdict: {report['verdict']}"
            elif pattern == "bandit":
                state = client.get("/bandit").json()["state"]
                note += "; mean reward " + ", ".join(
                    f"{v}: {a['mean_reward']:.3f}" for v, a in state["arms"].items() if a["mean_reward"] is not None)
    finally:
        for proc in reversed(stack.processes):
            proc.stop()
    n = len(latencies)
    lat = np.array(latencies)
    return Row(pattern, f"{model} v1|v2", n, errors, correct / n, np.percentile(lat, 50) * 1e3,
               np.percentile(lat, 99) * 1e3, note)
