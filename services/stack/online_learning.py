"""The online-learning pattern locally: broker, two streaming apps behind the router, supervisor, trainer.

    make up PATTERN=online-learning                       -> services.stack.patterns.PATTERNS["online-learning"]
    python -m services.stack.online_learning drive [--requests 3000] [--drift-at 1000]

Processes, in start order (each waits for the previous to be ready):

- `app-stable`: the streaming app following `<run>-stable-models`, a topic that only carries v1
  (pinned); KServe V2 REST on (the router's variant), prediction log with inputs, POST /feedback;
- `app-candidate`: the same app following `<run>-models`, where v1 is published first (so it is
  ready at once) and the trainer publishes every online version that passes its gates;
- `router`: canary between the two (patterns/online-learning/routing.yaml), admin token, the
  feedback topic `<run>-feedback` and ROUTER_LABELS_TOPIC=`<run>-labels`: the labels it accepts
  go to the trainer keyed by the id it forwarded to the app (what the prediction log recorded);
- `supervisor`: ramps the candidate up or rolls it back (patterns/online-learning/rollout.yaml);
- `trainer`: `python -m services.trainer run`, joining both apps' prediction logs with the labels.

Topic names carry the stack's start time, so each `make up` starts a fresh lineage on the
persistent local broker. `drive` sends holdout rows through the router (optionally with the
size features doubled after `--drift-at`: the concept-drift scenario; 2% pinned to the candidate
with `x-variant`, QA traffic that keeps its newest version visible), then each label once, to
the router's POST /feedback: the supervisor's accuracy per variant, and (the router writes it to
the labels topic) the trainer's training data. The poisoning scenario (`--poison-from`) sends a
flipped label to the stable app's POST /feedback first, and the true one to the router only once
the app's emitter has the flipped one on the topic: the trainer takes the first label of a request
(the router's true one goes to `labels-dlq` as a duplicate), the router scores the true one.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import sys
import time
import uuid
from pathlib import Path

import httpx
import numpy as np
import yaml

from services.kafka.messages import ensure_key_file, load_signing_key
from services.kafka.publisher import publish
from services.stack.paths import REPO_ROOT, RUN_DIR, SIGNING_KEY_FILE
from services.stack.process import PatternStack, ServiceProcess, free_port, http_ready
from services.stack.routed import local_kafka, router_process, supervisor_process

PATTERN = "online-learning"
SIZE_WORDS = ("radius", "perimeter", "area")


def _app(name: str, port: int, bootstrap: str, key_file: Path, models_topic: str, run: str, model: str
         ) -> ServiceProcess:
    return ServiceProcess(
        name=name, argv=["-m", "services.apps.streaming"],
        env={"STREAMING_PORT": str(port), "STREAMING_BOOTSTRAP_SERVERS": bootstrap, "STREAMING_MODEL_NAME": model,
             "STREAMING_MODELS_TOPIC": models_topic, "STREAMING_MODEL_EVENTS_TOPIC": f"{run}-model-events",
             "STREAMING_V2_API": "true", "STREAMING_PREDICTION_LOG": "true", "STREAMING_PREDICTION_LOG_INPUTS": "true",
             "STREAMING_PREDICTIONS_TOPIC": f"{run}-predictions", "STREAMING_FEEDBACK": "true",
             "STREAMING_LABELS_TOPIC": f"{run}-labels", "MODEL_SIGNING_KEY_FILE": str(key_file)},
        ready=http_ready(f"http://127.0.0.1:{port}/readyz"))


def online_learning(model_name: str = "breast-cancer", bootstrap_servers: str | None = None,
                    run_dir: Path = RUN_DIR, supervisor_interval_s: float | None = 5.0,
                    every_labels: int = 500) -> PatternStack:
    bootstrap, broker_extra = local_kafka(bootstrap_servers)
    key_file = ensure_key_file(SIGNING_KEY_FILE)
    key = load_signing_key(key_file)
    run = f"online-{int(time.time())}"
    stable_topic, models_topic = f"{run}-stable-models", f"{run}-models"
    print(f"  publishing {model_name} v1 to {stable_topic} (pinned) and {models_topic} (the trainer's)", flush=True)
    publish(bootstrap, model_name, 1, key=key, topic=stable_topic)
    publish(bootstrap, model_name, 1, key=key, topic=models_topic)
    stable_port, candidate_port = free_port(), free_port()
    apps = {"stable": f"http://127.0.0.1:{stable_port}", "candidate": f"http://127.0.0.1:{candidate_port}"}
    processes = [_app("app-stable", stable_port, bootstrap, key_file, stable_topic, run, model_name),
                 _app("app-candidate", candidate_port, bootstrap, key_file, models_topic, run, model_name)]

    cfg = yaml.safe_load((REPO_ROOT / "patterns" / PATTERN / "routing.yaml").read_text())
    for variant, url in apps.items():
        cfg["variants"][variant]["url"] = url
    run_dir.mkdir(parents=True, exist_ok=True)
    config_path = run_dir / f"{PATTERN}-routing.yaml"
    config_path.write_text(f"# generated from patterns/{PATTERN}/routing.yaml with the local apps' URLs\n"
                           + yaml.safe_dump(cfg, sort_keys=False))
    token_file = run_dir / "router-admin-token"
    token_file.unlink(missing_ok=True)
    fd = os.open(token_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_urlsafe(24) + "\n")
    state_path = run_dir / f"{PATTERN}-router-state.json"
    state_path.unlink(missing_ok=True)
    router, router_url = router_process(config_path, state_path, token_file=token_file,
                                        ROUTER_KAFKA_BOOTSTRAP_SERVERS=bootstrap,
                                        ROUTER_FEEDBACK_TOPIC=f"{run}-feedback", ROUTER_LABELS_TOPIC=f"{run}-labels")
    processes.append(router)
    spec = REPO_ROOT / "patterns" / PATTERN / "rollout.yaml"
    supervisor_state = run_dir / f"{PATTERN}-supervisor-state.json"
    supervisor_state.unlink(missing_ok=True)
    env = {"SUPERVISOR_INTERVAL_S": str(supervisor_interval_s)} if supervisor_interval_s else {}
    supervisor, supervisor_url = supervisor_process(spec, router_url, token_file=token_file,
                                                    state_path=supervisor_state, **env)
    processes.append(supervisor)
    trainer_port = free_port()
    output_dir = run_dir / "trainer" / run
    processes.append(ServiceProcess(
        name="trainer", argv=["-m", "services.trainer", "run"],
        env={"TRAINER_BOOTSTRAP_SERVERS": bootstrap, "TRAINER_MODEL_NAME": model_name,
             "TRAINER_LABELS_TOPIC": f"{run}-labels", "TRAINER_PREDICTIONS_TOPIC": f"{run}-predictions",
             "TRAINER_DLQ_TOPIC": f"{run}-labels-dlq", "TRAINER_STATE_TOPIC": f"{run}-trainer-state",
             "TRAINER_EVENTS_TOPIC": f"{run}-trainer-events", "TRAINER_MODELS_TOPIC": models_topic,
             "TRAINER_OUTPUT_DIR": str(output_dir), "TRAINER_EVERY_LABELS": str(every_labels),
             "TRAINER_EVERY_SECONDS": "60", "TRAINER_PORT": str(trainer_port),
             "MODEL_SIGNING_KEY_FILE": str(key_file)},
        ready=http_ready(f"http://127.0.0.1:{trainer_port}/metrics")))
    endpoints = {"router": router_url, "app-stable": apps["stable"], "app-candidate": apps["candidate"],
                 "supervisor": supervisor_url, "dashboard": f"{supervisor_url}/",
                 "trainer-metrics": f"http://127.0.0.1:{trainer_port}/metrics", "kafka": bootstrap}
    return PatternStack(processes, endpoints, extra={
        **broker_extra, "topics_prefix": run, "models_topic": models_topic, "stable_models_topic": stable_topic,
        "trainer_output_dir": str(output_dir), "routing_config": str(config_path),
        "admin_token_file": str(token_file), "signing_key_file": str(key_file), "rollout_spec": str(spec),
        "drive": "python -m services.stack.online_learning drive --requests 3000 --drift-at 1000",
    })


# -- traffic with labels --------------------------------------------------------------------------------


def drive(endpoints: dict[str, str], requests: int, drift_at: int | None, seed: int = 3,
          model: str = "breast-cancer", qa_share: float = 0.02, poison_from: int | None = None,
          quiet: bool = False) -> dict[str, float]:
    """Requests through the router, each label sent once, to the router (which feeds the labels topic);
    accuracy per version that answered. From `poison_from` on, the trainer learns flipped labels: a
    poisoning attack on the training stream (the stable app's POST /feedback writes them first), while
    the router still gets and scores the true ones, a trusted channel."""
    lines = (REPO_ROOT / "models" / "repository" / model / "1" / "holdout.csv").read_text().splitlines()
    names = lines[0].split(",")[:-1]
    data = np.array([[float(v) for v in line.split(",")] for line in lines[1:]])
    x, y = data[:, :-1].astype(np.float32), data[:, -1].astype(int)
    size = [i for i, n in enumerate(names) if any(w in n for w in SIZE_WORDS)]
    rng = np.random.default_rng(seed)
    router, poison_app = endpoints["router"], endpoints["app-stable"]
    seen: dict[str, list[int]] = {}
    held: list[tuple[str, int]] = []  # true labels waiting for their poisoned twins to reach the topic
    with httpx.Client(timeout=10) as client:
        poisoned = _labels_sent(client, poison_app) if poison_from is not None else 0
        for i in range(requests):
            j = int(rng.integers(len(x)))
            row = x[j].copy()
            if drift_at is not None and i >= drift_at:
                row[size] *= 2.0
            body = {"inputs": [{"name": "input", "shape": [1, len(row)], "datatype": "FP32", "data": row.tolist()}]}
            headers = {"x-user-id": f"user-{rng.integers(10_000)}", "x-request-id": uuid.uuid4().hex}
            if rng.random() < qa_share:
                # QA traffic pinned to the candidate: after a rollback (weight 0) the router still sees the
                # candidate's newest version, so the supervisor notices it and starts its rollout afresh.
                headers["x-variant"] = "candidate"
            r = client.post(f"{router}/v2/models/{model}/infer", json=body, headers=headers)
            if r.status_code != 200:
                print(f"  request {i}: HTTP {r.status_code} {r.text[:120]}", file=sys.stderr)
                continue
            rid = r.headers["x-request-id"]
            answer = r.json()
            version = r.headers.get("x-model-version", "?")
            seen.setdefault(version, [0, 0])
            seen[version][0] += 1
            seen[version][1] += int(answer["outputs"][0]["data"][0] == y[j])
            if poison_from is not None and i >= poison_from:
                f = client.post(f"{poison_app}/feedback", json={"request_id": rid, "label": int(1 - y[j])})
                poisoned += int(f.status_code == 202)
                held.append((rid, int(y[j])))
                if len(held) >= 50:
                    _release(client, router, poison_app, poisoned, held)
            else:
                client.post(f"{router}/feedback", json={"request_id": rid, "label": int(y[j])})
            if (i + 1) % 500 == 0 and not quiet:
                print(f"  {i + 1} requests: " + ", ".join(f"{v} {n} answered, accuracy {c / n:.3f}"
                                                          for v, (n, c) in sorted(seen.items())), flush=True)
        _release(client, router, poison_app, poisoned, held)
    return {v: c / n for v, (n, c) in seen.items()}


def _labels_sent(client: httpx.Client, app: str) -> int:
    """Labels the app's emitter has on the topic (acknowledged by the broker)."""
    for line in client.get(f"{app}/metrics").text.splitlines():
        if line.startswith('kafka_emitter_sent_total{emitter="labels"}'):
            return int(float(line.rsplit(" ", 1)[1]))
    return 0


def _release(client: httpx.Client, router: str, app: str, poisoned: int, held: list[tuple[str, int]],
             timeout_s: float = 30.0) -> None:
    """Send the held true labels to the router once the app's poisoned ones are on the topic (the
    trainer takes a request's first label), or after `timeout_s` (then some true ones may win)."""
    if not held:
        return
    deadline = time.monotonic() + timeout_s
    while _labels_sent(client, app) < poisoned and time.monotonic() < deadline:
        time.sleep(0.05)
    for rid, label in held:
        client.post(f"{router}/feedback", json={"request_id": rid, "label": label})
    held.clear()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.stack.online_learning")
    sub = parser.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("drive", help="traffic with labels through the running online-learning stack")
    d.add_argument("--requests", type=int, default=3000)
    d.add_argument("--drift-at", type=int, default=None, help="double the size features from this request on")
    d.add_argument("--poison-from", type=int, default=None,
                   help="flip the labels the trainer gets from this request on (the router scores the true ones)")
    args = parser.parse_args(argv)
    try:
        info = json.loads((RUN_DIR / "endpoints.json").read_text())
    except FileNotFoundError:
        print("error: no running stack: `make up PATTERN=online-learning` first", file=sys.stderr)
        return 2
    if info.get("pattern") != PATTERN:
        print(f"error: the running stack is {info.get('pattern')!r}, not {PATTERN}", file=sys.stderr)
        return 2
    accuracy = drive(info["endpoints"], args.requests, args.drift_at, poison_from=args.poison_from)
    print(json.dumps({"accuracy_by_version": accuracy}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
