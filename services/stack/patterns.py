"""What each pattern runs locally: its processes, their settings and their endpoints.

A pattern is a function returning the processes to start in order (each waits for the ones
before it to be ready) and the endpoints to publish. Ports are free ports on 127.0.0.1.
Adding a pattern is one function here plus its folder under patterns/.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

from services.kafka.messages import ensure_key_file, load_signing_key
from services.kafka.publisher import publish
from services.kafka.topics import MODELS
from services.stack.online_learning import online_learning
from services.stack.paths import SIGNING_KEY_FILE
from services.stack.process import PatternStack, ServiceProcess, free_port, http_ready
from services.stack.routed import ROUTED_PATTERNS, local_kafka, routed_pattern


def embedded(model_name: str = "breast-cancer") -> PatternStack:
    port = free_port()
    app = ServiceProcess(
        name="embedded-app",
        argv=["-m", "services.apps.embedded"],
        env={"EMBEDDED_PORT": str(port), "EMBEDDED_MODEL_NAME": model_name},
        ready=http_ready(f"http://127.0.0.1:{port}/readyz"),
    )
    return PatternStack([app], {"app": f"http://127.0.0.1:{port}"})


def model_as_service(model_name: str = "breast-cancer", protocol: str = "grpc") -> PatternStack:
    """The model server (REST + gRPC), then the app calling it (gRPC by default)."""
    rest_port, grpc_port, app_port = free_port(), free_port(), free_port()
    server = ServiceProcess(
        name="model-server",
        argv=["-m", "services.model_server"],
        env={"MODEL_SERVER_PORT": str(rest_port), "MODEL_SERVER_GRPC_PORT": str(grpc_port)},
        ready=http_ready(f"http://127.0.0.1:{rest_port}/v2/health/ready"),
    )
    app = ServiceProcess(
        name="model-as-service-app",
        argv=["-m", "services.apps.remote"],
        env={
            "REMOTE_PORT": str(app_port),
            "REMOTE_MODEL_NAME": model_name,
            "REMOTE_PROTOCOL": protocol,
            "REMOTE_SERVER_ADDRESS": f"127.0.0.1:{grpc_port}",
            "REMOTE_SERVER_URL": f"http://127.0.0.1:{rest_port}",
        },
        ready=http_ready(f"http://127.0.0.1:{app_port}/readyz"),
    )
    return PatternStack(
        [server, app],
        {
            "app": f"http://127.0.0.1:{app_port}",
            "model-server-rest": f"http://127.0.0.1:{rest_port}",
            "model-server-grpc": f"127.0.0.1:{grpc_port}",
        },
    )


def _local_broker(bootstrap_servers: str | None) -> tuple[str, dict[str, str]]:
    return local_kafka(bootstrap_servers)


def model_as_data(model_name: str = "breast-cancer", version: int | None = None,
                  bootstrap_servers: str | None = None, prediction_log: bool = True) -> PatternStack:
    """Kafka (the local broker, started if needed, or $KAFKA_BOOTSTRAP_SERVERS), the model published
    to the compacted `models` topic, then the streaming app that follows it (patterns/model-as-data)."""
    bootstrap, broker_extra = _local_broker(bootstrap_servers)
    key_file = ensure_key_file(SIGNING_KEY_FILE)  # the app and `python -m services.stack publish` use it
    published = publish(bootstrap, model_name, version, key=load_signing_key(key_file))
    port = free_port()
    app = ServiceProcess(
        name="streaming-app",
        argv=["-m", "services.apps.streaming"],
        env={"STREAMING_PORT": str(port), "STREAMING_BOOTSTRAP_SERVERS": bootstrap,
             "STREAMING_MODEL_NAME": model_name, "STREAMING_PREDICTION_LOG": str(prediction_log).lower(),
             "MODEL_SIGNING_KEY_FILE": str(key_file)},
        ready=http_ready(f"http://127.0.0.1:{port}/readyz"),
    )
    return PatternStack(
        [app],
        {"app": f"http://127.0.0.1:{port}", "kafka": bootstrap},
        extra={"published": published.describe(), "signing_key_file": str(key_file),
               "publish": f"python -m services.stack publish --model {model_name} --version N",
               **broker_extra},
    )


def stream_scoring(model_name: str = "breast-cancer", version: int | None = None, workers: int = 2,
                   bootstrap_servers: str | None = None, **env: str) -> PatternStack:
    """Kafka, then `workers` scoring workers in one consumer group (patterns/stream-scoring).

    With `SCORING_FOLLOW_MODELS=true` in `env` the workers follow the `models` topic: the model is
    published there first (signed with the local stack's key), and `python -m services.stack
    publish` swaps every worker to another version."""
    bootstrap, broker_extra = _local_broker(bootstrap_servers)
    procs, endpoints = [], {"kafka": bootstrap}
    follow = env.get("SCORING_FOLLOW_MODELS", "").lower() == "true"
    if follow:
        key_file = ensure_key_file(SIGNING_KEY_FILE)
        published = publish(bootstrap, model_name, version, key=load_signing_key(key_file),
                            topic=env.get("SCORING_MODELS_TOPIC", MODELS))
        env = {"MODEL_SIGNING_KEY_FILE": str(key_file), **env}
        broker_extra = {**broker_extra, "published": published.describe(), "signing_key_file": str(key_file),
                        "publish": f"python -m services.stack publish --model {model_name} --version N"}
    for i in range(workers):
        port = free_port()
        settings = {"SCORING_PORT": str(port), "SCORING_BOOTSTRAP_SERVERS": bootstrap,
                    "SCORING_MODEL_NAME": model_name, **env}
        if version is not None and not follow:
            settings["SCORING_MODEL_VERSION"] = str(version)
        procs.append(ServiceProcess(name=f"scoring-worker-{i}", argv=["-m", "services.kafka.scoring"], env=settings,
                                    ready=http_ready(f"http://127.0.0.1:{port}/readyz")))
        endpoints[f"worker-{i}"] = f"http://127.0.0.1:{port}"
    return PatternStack(procs, endpoints, extra={
        "topics": "scoring-requests -> scoring-results, scoring-dlq",
        **broker_extra,
    })


PATTERNS: dict[str, Callable[..., PatternStack]] = {
    "embedded": embedded,
    "model-as-service": model_as_service,
    "model-as-data": model_as_data,
    "stream-scoring": stream_scoring,
    **{p: partial(routed_pattern, p) for p in ROUTED_PATTERNS},
    "online-learning": online_learning,
}
