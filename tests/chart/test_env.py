"""The environment the chart gives each service is that service's own settings, by name and by value.

For every container running a serving-patterns entry point (python3 -m <module>), every env var
must be `<PREFIX><FIELD>` of the module's pydantic-settings class (services.stack.helm.SERVICES
names the prefix; the class is imported and its `model_fields` read), and the class must accept
the values. A renamed or removed settings field, or a chart typo, fails here.
"""

from __future__ import annotations

import pytest

from services.stack import helm as helm_tool
from tests.chart.helpers import all_renders, containers, module_of, render, render_id


def env_problems(docs) -> tuple[list[str], set[str]]:
    problems, seen = [], set()
    for doc, c in containers(docs):
        module = module_of(c)
        if module is None or doc["kind"] == "Pod":
            continue  # not a service (Kafka broker), or the helm test pod (its own arguments, no settings)
        where = f"{doc['kind']}/{doc['metadata']['name']}"
        if doc["kind"] == "Job":
            assert module == "services.kafka.publisher", where
            assert not c.get("env"), f"{where}: the publisher takes flags, not env"
            continue
        if module not in helm_tool.SERVICES:
            problems.append(f"{where}: runs {module}, which services.stack.helm.SERVICES does not know")
            continue
        seen.add(module)
        cls = helm_tool.settings_class(module)
        prefix = cls.model_config["env_prefix"]
        values = {}
        for var in c.get("env", []):
            name = var["name"]
            field = name[len(prefix):].lower() if name.startswith(prefix) else None
            if field not in cls.model_fields:
                problems.append(f"{where}: {name} is not a field of {cls.__module__}.{cls.__name__} ({prefix}*)")
            elif "value" in var:
                values[field] = var["value"]
        try:
            cls(**values)
        except Exception as exc:  # pydantic's ValidationError names the field
            problems.append(f"{where}: {cls.__name__} refuses the rendered values: {exc}")
    return problems, seen


@pytest.mark.parametrize("case", all_renders(), ids=render_id)
def test_env_vars_are_settings_fields_with_valid_values(case):
    problems, _ = env_problems(render(case[0], *case[1]))
    assert not problems, "\n".join(problems)


def test_every_service_entry_point_is_rendered_somewhere():
    seen = set()
    for pattern, sets in all_renders():
        seen |= env_problems(render(pattern, *sets))[1]
    assert seen == set(helm_tool.SERVICES)


def test_the_env_check_catches_an_unknown_name_and_a_bad_value():
    docs = render("model-as-service")
    for _doc, c in containers(docs):
        if module_of(c) == "services.model_server":
            c["env"] = [*c["env"], {"name": "MODEL_SERVER_BATCHSIZE", "value": "8"},
                        {"name": "MODEL_SERVER_VERSION_POLICY", "value": "newest"}]
    problems = "\n".join(env_problems(docs)[0])
    assert "MODEL_SERVER_BATCHSIZE is not a field of" in problems, problems
    assert "refuses the rendered values" in problems and "version_policy" in problems, problems


def test_user_settings_become_prefixed_env_vars():
    # helm's --set reads 0.5 as a string (the schema wants a number): decimals go through --set-json.
    docs = render("model-as-service", "app.settings.protocol=rest", "modelServer.settings.batching=true",
                  extra=("--set-json", "app.settings.timeout_s=0.5"))
    env = {v["name"]: v["value"] for _, c in containers(docs) for v in c.get("env", [])}
    assert env["REMOTE_PROTOCOL"] == "rest" and env["REMOTE_TIMEOUT_S"] == "0.5"
    assert env["MODEL_SERVER_BATCHING"] == "true"
    assert env["REMOTE_SERVER_URL"] == "http://sp-serving-patterns-model-server.serving.svc.cluster.local:8501"
    assert env["REMOTE_SERVER_ADDRESS"] == "sp-serving-patterns-model-server.serving.svc.cluster.local:8500"


def test_writable_paths_point_at_mounted_volumes():
    """Whatever a service writes goes under a mounted emptyDir (the root file system is read-only)."""
    for pattern in ("canary", "bandit"):
        for _doc, c in containers(render(pattern)):
            env = {v["name"]: v["value"] for v in c.get("env", [])}
            if module_of(c) == "services.router":
                mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
                state = env["ROUTER_STATE_FILE"]
                assert any(state.startswith(p + "/") and not m.get("readOnly") for p, m in mounts.items()), state
                assert env["ROUTER_ADMIN_WRITES_CONFIG"] == "false"  # the routing file is a read-only ConfigMap
                assert any(env["ROUTER_ROUTING_CONFIG"].startswith(p + "/") for p in mounts)
                assert any(env["ROUTER_ADMIN_TOKEN_FILE"].startswith(p + "/") for p in mounts)
