"""The action writer: the routing an action asks for, and If-Match writes against a fake router."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx

from services.supervisor.actions import RouterAdmin, Routing, apply_action, routing_for
from services.supervisor.decisions import Action
from services.supervisor.spec import parse_spec

SPEC = parse_spec({"name": "r", "kind": "canary", "stable": "stable", "candidate": "candidate",
                   "candidate_version": 2, "rules": [{"metric": "error_rate", "threshold": 0.01}]})
CONFIG: dict[str, Any] = {
    "name": "bc", "model": "breast-cancer",
    "variants": {"stable": {"url": "http://a", "version": 1}, "candidate": {"url": "http://b", "version": 2}},
    "policy": {"kind": "canary", "params": {"weights": {"stable": 95, "candidate": 5}, "hash_salt": "s"}},
    "fallback": "stable", "sticky": {"header": "x-user-id"},
}


def step(weight: float, kind: str = "step", new_stable: str | None = None) -> Action:
    return Action(kind, candidate_weight=weight, weights={"stable": 100 - weight, "candidate": weight},  # type: ignore[arg-type]
                  policy="canary", new_stable=new_stable)


def test_a_step_changes_only_the_weights_and_keeps_the_salt():
    new = routing_for(step(25.0), SPEC, CONFIG)
    assert new is not None
    assert new["policy"] == {"kind": "canary", "params": {"weights": {"stable": 75.0, "candidate": 25.0},
                                                          "hash_salt": "s"}}
    assert {k: v for k, v in new.items() if k != "policy"} == {k: v for k, v in CONFIG.items() if k != "policy"}
    assert CONFIG["policy"]["params"]["weights"] == {"stable": 95, "candidate": 5}  # not mutated


def test_promotion_is_exactly_100_and_makes_the_candidate_the_fallback_rollback_puts_it_back():
    promoted = routing_for(step(100.0, "promote", "candidate"), SPEC, CONFIG)
    assert promoted is not None
    assert promoted["policy"]["params"]["weights"] == {"stable": 0.0, "candidate": 100.0}
    assert promoted["fallback"] == "candidate"
    back = routing_for(step(0.0, "rollback", "stable"), SPEC, promoted)
    assert back is not None and back["fallback"] == "stable"
    assert back["policy"]["params"]["weights"] == {"stable": 100.0, "candidate": 0.0}


def test_nothing_to_write_for_holds_or_for_weights_already_in_force():
    assert routing_for(Action("hold"), SPEC, CONFIG) is None
    assert routing_for(step(5.0, "start"), SPEC, CONFIG) is None


class FakeRouter:
    """GET/PUT /admin/routing with versions and If-Match, like the router's control plane."""

    def __init__(self, config: dict[str, Any], version: int = 3) -> None:
        self.config, self.version = config, version
        self.puts: list[tuple[str | None, dict[str, Any]]] = []
        self.before_put = None

    def handler(self, request: httpx.Request) -> httpx.Response:
        assert request.headers["authorization"] == "Bearer t"
        if request.method == "GET":
            return httpx.Response(200, json={"version": self.version, "config": self.config})
        if self.before_put is not None:
            self.before_put(self)
        body = json.loads(request.content)
        self.puts.append((request.headers.get("if-match"), body))
        if request.headers.get("if-match") != str(self.version):
            return httpx.Response(412, json={"error": "stale", "code": "precondition_failed"})
        self.config, self.version = body, self.version + 1
        return httpx.Response(200, json={"version": self.version, "config": body})


def run(router: FakeRouter, action: Action, known: Routing):
    async def go():
        async with httpx.AsyncClient(transport=httpx.MockTransport(router.handler), base_url="http://r") as client:
            return await apply_action(RouterAdmin(client, lambda: "t"), action, SPEC, known)
    return asyncio.run(go())


def test_a_write_carries_if_match_and_reports_the_new_version():
    router = FakeRouter(CONFIG)
    result = run(router, step(25.0), Routing(3, CONFIG))
    assert result.status == "applied" and (result.if_match, result.version_after) == (3, 4)
    assert router.puts[0][0] == "3"
    assert result.routing_after is not None and result.routing_after.version == 4


def test_a_concurrent_edit_between_read_and_write_is_a_conflict_never_an_overwrite():
    router = FakeRouter(CONFIG)

    def human(r: FakeRouter) -> None:  # lands between the supervisor's read and its write
        r.config = {**r.config, "policy": {"kind": "canary", "params": {"weights": {"stable": 50, "candidate": 50}}}}
        r.version += 1
        r.before_put = None

    router.before_put = human
    result = run(router, step(25.0), Routing(3, CONFIG))
    assert result.status == "conflict"
    assert result.conflict is not None and result.conflict["version_in_force"] == 4
    assert result.weights_in_force == {"stable": 50.0, "candidate": 50.0}
    assert router.config["policy"]["params"]["weights"] == {"stable": 50, "candidate": 50}  # the human's edit stands
    assert result.routing_after is not None and result.routing_after.version == 4
    assert "not overwritten" in result.detail


def test_an_unreachable_router_is_an_error_result_not_an_exception():
    def down(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    async def go():
        async with httpx.AsyncClient(transport=httpx.MockTransport(down), base_url="http://r") as client:
            return await apply_action(RouterAdmin(client, lambda: "t"), step(25.0), SPEC, Routing(3, CONFIG))
    result = asyncio.run(go())
    assert result.status == "error" and "PUT /admin/routing failed" in result.detail
