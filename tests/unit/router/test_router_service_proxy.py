"""The router in-process against stub KServe V2 upstreams: proxying, fail-over, ejection, shadow,
feedback, admin API, hot reload and persistence.

The stubs are tiny asyncio HTTP servers whose behaviour each test sets (answer, 500, 400, hang,
refuse). Integration tests (tests/integration/test_router.py) run the same paths against real
model servers; these pin down the router's own logic quickly and deterministically.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client import REGISTRY

from services.router.rest import build_app
from services.router.service import Router
from services.router.settings import RouterSettings

TOKEN = "test-token"
BODY = {"inputs": [{"name": "input", "shape": [1, 2], "datatype": "FP32", "data": [0.5, 0.25]}]}


class Stub:
    """A KServe V2 look-alike. `mode`: ok | 500 | 400 | hang; `probabilities` sets its answer."""

    def __init__(self, label: int = 1, probabilities: tuple[float, float] = (0.2, 0.8)) -> None:
        self.mode = "ok"
        self.label = label
        self.probabilities = probabilities
        self.requests: list[tuple[str, dict[str, str], bytes]] = []
        self.server: asyncio.Server | None = None
        self.port = 0
        self.gate: asyncio.Event | None = None

    async def start(self, port: int = 0) -> Stub:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", port)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            if hasattr(self.server, "close_clients"):
                self.server.close_clients()
            self.server = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode().split("\r\n")
                method, path, _ = lines[0].split(" ")
                headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                self.requests.append((path, headers, body))
                if self.mode == "hang":
                    await asyncio.sleep(30)
                if self.gate is not None:
                    await self.gate.wait()
                if self.mode == "500":
                    status, payload = 500, {"error": "boom"}
                elif self.mode == "400":
                    status, payload = 400, {"error": "bad input", "code": "invalid_input"}
                else:
                    parts = path.split("/")
                    status, payload = 200, {
                        "model_name": parts[3], "model_version": parts[5] if "versions" in parts else "7",
                        "outputs": [
                            {"name": "label", "datatype": "INT64", "shape": [1], "data": [self.label]},
                            {"name": "probabilities", "datatype": "FP32", "shape": [1, 2],
                             "data": list(self.probabilities)},
                        ],
                    }
                data = json.dumps(payload).encode()
                writer.write(f"HTTP/1.1 {status} X\r\ncontent-type: application/json\r\n"
                             f"content-length: {len(data)}\r\n\r\n".encode() + data)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()


def config(a: Stub, b: Stub, kind: str = "canary", params: dict | None = None, **extra: Any) -> dict:
    cfg = {
        "name": "exp",
        "model": "m",
        "variants": {
            "stable": {"url": a.url, "model": "m", "version": 1, "timeout_s": 0.5},
            "candidate": {"url": b.url, "model": "m", "version": 2, "timeout_s": 0.5},
        },
        "policy": {"kind": kind, "params": params if params is not None else
                   {"weights": {"stable": 50, "candidate": 50}}},
        "fallback": "stable",
        "outlier_detection": {"consecutive_failures": 3, "base_ejection_s": 60, "max_ejection_s": 60},
    }
    cfg.update(extra)
    return cfg


class Harness:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.config_path = tmp / "routing.yaml"
        self.state_path = tmp / "state.json"
        self.router: Router | None = None
        self.client: httpx.AsyncClient | None = None

    async def start(self, cfg: dict | None = None, **settings: Any) -> Router:
        if cfg is not None:
            self.config_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        s = RouterSettings(routing_config=self.config_path, state_file=self.state_path, admin_token=TOKEN,
                           config_poll_s=0, **settings)
        self.router = Router(s)
        await self.router.start()
        transport = httpx.ASGITransport(app=build_app(self.router))
        self.client = httpx.AsyncClient(transport=transport, base_url="http://router")
        return self.router

    async def stop(self) -> None:
        if self.client is not None:
            await self.client.aclose()
        if self.router is not None and self.router.started:
            await self.router.stop()

    async def infer(self, headers: dict[str, str] | None = None, body: Any = BODY) -> httpx.Response:
        assert self.client is not None
        return await self.client.post("/v2/models/m/infer", json=body, headers=headers or {})


@pytest.fixture
async def stubs() -> AsyncIterator[tuple[Stub, Stub]]:
    a, b = await Stub(label=1, probabilities=(0.2, 0.8)).start(), await Stub(label=0, probabilities=(0.6, 0.4)).start()
    yield a, b
    await a.stop()
    await b.stop()


@pytest.fixture
async def harness(tmp_path: Path) -> AsyncIterator[Harness]:
    h = Harness(tmp_path)
    yield h
    await h.stop()


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


# -- proxying ------------------------------------------------------------------------------------


async def test_answer_names_variant_version_and_request_id(stubs, harness) -> None:
    a, b = stubs
    await harness.start(config(a, b))
    r = await harness.infer({"x-request-id": "req-42", "x-variant": "candidate"})
    assert r.status_code == 200
    assert r.headers["x-request-id"] == "req-42"
    assert r.headers["x-variant"] == "candidate"
    assert r.headers["x-model-version"] == "m:2"
    body = r.json()
    assert body["variant"] == "candidate" and body["request_id"] == "req-42" and body["model_version"] == "2"
    path, headers, sent = b.requests[-1]
    assert path == "/v2/models/m/versions/2/infer"  # rewritten to the variant's model and version
    assert headers["x-request-id"] == "req-42"
    assert json.loads(sent) == BODY  # forwarded as sent
    r = await harness.infer()
    assert r.headers["x-request-id"] and r.json()["request_id"] == r.headers["x-request-id"]


async def test_sticky_key_from_header_or_body_parameter(stubs, harness) -> None:
    a, b = stubs
    await harness.start(config(a, b, sticky={"header": "x-user-id", "body_parameter": "user_id"}))
    seen_header = {(await harness.infer({"x-user-id": "user-7"})).headers["x-variant"] for _ in range(10)}
    body = {**BODY, "parameters": {"user_id": "user-7"}}
    seen_body = {(await harness.infer(body=body)).headers["x-variant"] for _ in range(10)}
    assert len(seen_header) == 1 and seen_header == seen_body


async def test_bad_requests_get_4xx_naming_the_problem(stubs, harness) -> None:
    a, b = stubs
    await harness.start(config(a, b))
    assert harness.client is not None
    cases = [
        (await harness.client.post("/v2/models/other/infer", json=BODY), 404, "model 'other' is not routed here"),
        (await harness.client.post("/v2/models/m/versions/9/infer", json=BODY), 404, "version '9' is not routed"),
        (await harness.infer({"x-variant": "ghost"}), 400, "x-variant: unknown variant 'ghost'"),
        (await harness.client.post("/v2/models/m/infer", content=b""), 400, "request body is empty"),
        (await harness.client.post("/feedback", json={"request_id": "r"}), 400, "a label (or labels"),
        (await harness.client.post("/feedback", content=b"{"), 400, "not valid JSON"),
        (await harness.client.get("/experiments/nope"), 404, "unknown experiment 'nope'"),
        (await harness.client.get("/nope"), 404, "no such endpoint"),
    ]
    for response, status, text in cases:
        assert response.status_code == status, response.text
        assert text in response.json()["error"]
    big = await harness.client.post("/v2/models/m/infer", content=b"x" * (harness.router.settings.max_body_bytes + 1))
    assert big.status_code == 413


async def test_version_in_path_pins_that_variant(stubs, harness) -> None:
    a, b = stubs
    await harness.start(config(a, b))
    assert harness.client is not None
    for _ in range(5):
        r = await harness.client.post("/v2/models/m/versions/1/infer", json=BODY)
        assert r.headers["x-variant"] == "stable"
    await harness.client.get("/v2/models/m/versions/2")
    assert b.requests[-1][0] == "/v2/models/m/versions/2"  # metadata of the variant serving v2
    await harness.client.get("/v2/models/m/ready")
    assert a.requests[-1][0] == "/v2/models/m/versions/1/ready"  # default: the fallback
    assert (await harness.client.get("/v2/models/m/versions/7")).status_code == 404


# -- fail-over and ejection ------------------------------------------------------------------------


async def test_5xx_fails_over_to_the_fallback_and_is_counted(stubs, harness) -> None:
    a, b = stubs
    await harness.start(config(a, b))
    before = metric("router_failover_total", from_variant="candidate", to_variant="stable", reason="error")
    b.mode = "500"
    r = await harness.infer({"x-variant": "candidate"})
    assert r.status_code == 200 and r.headers["x-variant"] == "stable"
    assert r.json()["model_version"] == "1"
    assert metric("router_failover_total", from_variant="candidate", to_variant="stable", reason="error") == before + 1


async def test_4xx_is_the_clients_mistake_and_passes_through(stubs, harness) -> None:
    a, b = stubs
    await harness.start(config(a, b))
    b.mode = "400"
    for _ in range(5):  # more than consecutive_failures: a 4xx never ejects
        r = await harness.infer({"x-variant": "candidate"})
        assert r.status_code == 400 and r.headers["x-variant"] == "candidate"
        assert r.json()["error"] == "bad input"
    assert len(a.requests) == 0
    assert not harness.router.dispatcher.detector.is_ejected("candidate")


async def test_refused_connection_and_timeout_fail_over(stubs, harness) -> None:
    a, b = stubs
    await harness.start(config(a, b))
    b.mode = "hang"
    r = await harness.infer({"x-variant": "candidate"})
    assert r.status_code == 200 and r.headers["x-variant"] == "stable"
    await b.stop()
    r = await harness.infer({"x-variant": "candidate"})
    assert r.status_code == 200 and r.headers["x-variant"] == "stable"
    snap = harness.router.dispatcher.detector.snapshot()["candidate"]
    assert snap["consecutive_failures"] == 2


async def test_failing_variant_is_ejected_then_skipped(stubs, harness) -> None:
    a, b = stubs
    await harness.start(config(a, b))
    b.mode = "500"
    for _ in range(3):
        assert (await harness.infer({"x-variant": "candidate"})).status_code == 200
    assert harness.router.dispatcher.detector.is_ejected("candidate")
    sent = len(b.requests)
    before = metric("router_failover_total", from_variant="candidate", to_variant="stable", reason="ejected")
    for _ in range(5):
        r = await harness.infer({"x-variant": "candidate"})
        assert r.status_code == 200 and r.headers["x-variant"] == "stable"
    assert len(b.requests) == sent  # not even tried while ejected
    after = metric("router_failover_total", from_variant="candidate", to_variant="stable", reason="ejected")
    assert after == before + 5
    assert metric("router_variant_ejected", variant="candidate") == 1


async def test_no_variant_answers_gives_502_naming_every_attempt(stubs, harness) -> None:
    a, b = stubs
    await harness.start(config(a, b))
    a.mode = b.mode = "500"
    r = await harness.infer({"x-variant": "candidate"})
    assert r.status_code == 502
    body = r.json()
    assert body["code"] == "upstream_failed"
    assert [x["variant"] for x in body["attempts"]] == ["candidate", "stable"]
    assert "HTTP 500" in body["error"]


# -- shadow ----------------------------------------------------------------------------------------


async def _wait_for(predicate, timeout_s: float = 5.0) -> None:
    for _ in range(int(timeout_s / 0.01)):
        if predicate():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not met in time")


async def test_shadow_mirrors_and_compares_off_the_response_path(stubs, harness) -> None:
    a, b = stubs  # a: label 1, p=(0.2, 0.8); b: label 0, p=(0.6, 0.4)
    await harness.start(config(a, b, kind="shadow", params={"primary": "stable", "shadows": ["candidate"]}))
    for _ in range(4):
        r = await harness.infer()
        assert r.headers["x-variant"] == "stable" and r.json()["outputs"][0]["data"] == [1]
    router = harness.router
    await _wait_for(lambda: router.dispatcher.mirrors.stats.get("candidate") is not None
                    and router.dispatcher.mirrors.stats["candidate"].compared_requests == 4)
    summary = (await harness.client.get("/shadow/summary")).json()
    s = summary["shadows"]["candidate"]
    assert s["mirrored"] == 4 and s["compared_rows"] == 4
    assert s["label_agreement_rate"] == 0.0
    assert s["mean_abs_prob_diff"] == pytest.approx(0.4, abs=1e-6)
    assert s["latency"]["samples"] == 4
    assert b.requests[-1][1]["x-shadow"] == "1"


async def test_full_shadow_queue_drops_and_counts_never_delays_the_primary(stubs, harness) -> None:
    a, b = stubs
    cfg = config(a, b, kind="shadow", params={"primary": "stable"},
                 shadow={"queue_size": 2, "workers": 1, "timeout_s": 5})
    await harness.start(cfg)
    b.gate = asyncio.Event()  # the shadow holds every mirror until released
    for _ in range(10):
        r = await harness.infer()
        assert r.status_code == 200 and r.headers["x-variant"] == "stable"
    stats = harness.router.dispatcher.mirrors.stats["candidate"]
    assert stats.dropped == 7  # 1 in flight + 2 queued
    b.gate.set()
    await _wait_for(lambda: stats.compared_requests == 3)
    assert (await harness.client.get("/shadow/summary")).json()["shadows"]["candidate"]["dropped_queue_full"] == 7


async def test_dead_shadow_costs_the_client_nothing(stubs, harness) -> None:
    a, b = stubs
    await harness.start(config(a, b, kind="shadow", params={"primary": "stable"}))
    await b.stop()
    for _ in range(10):
        assert (await harness.infer()).status_code == 200
    stats = harness.router.dispatcher.mirrors.stats["candidate"]
    await _wait_for(lambda: stats.errors.get("connect", 0) >= 3)
    await _wait_for(lambda: stats.skipped_ejected + stats.errors["connect"] + stats.dropped == 10)
    assert harness.router.dispatcher.detector.is_ejected("candidate")


# -- feedback ---------------------------------------------------------------------------------------


async def test_bandit_feedback_by_request_id(stubs, harness) -> None:
    a, b = stubs
    await harness.start(config(a, b, kind="thompson", params={}, feedback={"ttl_s": 60}))
    client = harness.client
    r = await harness.infer()
    rid, variant = r.headers["x-request-id"], r.headers["x-variant"]
    ok = await client.post("/feedback", json={"request_id": rid, "reward": 1})
    assert ok.status_code == 200 and ok.json() == {"request_id": rid, "variant": variant, "reward": 1,
                                                   "applied": True}
    again = await client.post("/feedback", json={"request_id": rid, "reward": 1})
    assert again.status_code == 409 and "already has its outcome" in again.json()["error"]
    unknown = await client.post("/feedback", json={"request_id": "never-seen", "reward": 1})
    assert unknown.status_code == 404 and "unknown request_id 'never-seen'" in unknown.json()["error"]
    late = await harness.infer()
    harness.router.dispatcher.pending._clock = lambda: 1e12  # jump far past the TTL
    gone = await client.post("/feedback", json={"request_id": late.headers["x-request-id"], "reward": 1})
    assert gone.status_code == 410 and "beyond the feedback TTL of 60 s" in gone.json()["error"]
    harness.router.dispatcher.pending._clock = time.time
    bad = await harness.infer()
    invalid = await client.post("/feedback", json={"request_id": bad.headers["x-request-id"], "reward": 7})
    assert invalid.status_code == 400
    assert "reward: Bernoulli Thompson needs rewards in [0, 1]" in invalid.json()["error"]
    retry = await client.post("/feedback", json={"request_id": bad.headers["x-request-id"], "reward": 0})
    assert retry.status_code == 200  # a refused reward can be sent again
    state = (await client.get("/bandit")).json()["state"]
    assert state["arms"][variant]["rewards"] >= 1 and state["total_pulls"] == 3


async def test_failed_bandit_pull_scores_the_failure_reward(stubs, harness) -> None:
    a, b = stubs
    await harness.start(config(a, b, kind="epsilon_greedy", params={"epsilon": 0.1}))
    b.mode = "500"
    r = await harness.infer({"x-variant": "candidate"})
    assert r.status_code == 200 and r.headers["x-variant"] == "stable"
    arms = harness.router.dispatcher.table.policy.state()["arms"]
    assert arms["candidate"]["rewards"] == 1 and arms["candidate"]["mean_reward"] == 0.0
    late = await harness.client.post("/feedback", json={"request_id": r.headers["x-request-id"], "reward": 1})
    assert late.status_code == 409 and "failed and was scored the failure reward 0" in late.json()["error"]


async def test_ab_feedback_by_key_and_experiment_report(stubs, harness) -> None:
    a, b = stubs
    await harness.start(config(a, b, kind="ab", params={"min_samples": 2}))
    client = harness.client
    for user in ("u1", "u2", "u3", "u4", "u5", "u6"):
        r = await harness.infer({"x-user-id": user})
        assert r.status_code == 200
        fb = await client.post("/feedback", json={"key": user, "outcome": 1 if user in ("u1", "u2") else 0})
        assert fb.status_code == 200, fb.text
    report = (await client.get("/experiments/exp")).json()
    assert report["policy"] == "ab"
    arms = report["report"]["arms"]
    assert sum(arm["assignments"] for arm in arms.values()) == 6
    assert sum(arm["conversions"] for arm in arms.values()) == 2
    assert report["report"]["test"].startswith("two-sided two-proportion z-test")
    canary = await client.post("/feedback", json={"key": "u1", "outcome": 1})
    assert canary.status_code == 404


def quality_metrics(variant: str) -> dict[str, float]:
    return {
        "labels": metric("router_feedback_labels_total", variant=variant),
        "correct": metric("router_feedback_correct_total", variant=variant),
        "rewards": metric("router_feedback_rewards_total", variant=variant),
        "reward_sum": metric("router_feedback_reward_sum", variant=variant),
        "squares": metric("router_feedback_reward_squares_sum", variant=variant),
        "pred0": metric("router_predicted_labels_total", variant=variant, label="0"),
        "pred1": metric("router_predicted_labels_total", variant=variant, label="1"),
    }


def delta(after: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    return {k: after[k] - before[k] for k in after}


async def test_quality_is_null_without_feedback(stubs, harness) -> None:
    a, b = stubs
    await harness.start(config(a, b))
    q = (await harness.client.get("/quality")).json()
    assert q["policy"] == "canary" and list(q["variants"]) == ["stable", "candidate"]
    for v in q["variants"].values():
        assert v["labels"] == 0 and v["accuracy"] is None and v["rewards"] == 0 and v["mean_reward"] is None
    await harness.infer({"x-variant": "stable"})
    q = (await harness.client.get("/quality")).json()["variants"]["stable"]
    assert q["predicted_labels"] == {"1": 1} and q["accuracy"] is None and q["classes"] == 2


async def test_canary_takes_labels_and_rewards_and_scores_each_variant(stubs, harness) -> None:
    a, b = stubs  # stable predicts 1, candidate predicts 0
    await harness.start(config(a, b))
    client = harness.client
    before = {v: quality_metrics(v) for v in ("stable", "candidate")}
    truths = [1, 1, 0, 1, 0, 1, 1, 1, 0, 1, 1, 1]
    expected = {"stable": [0, 0, 0, 0.0, 0.0], "candidate": [0, 0, 0, 0.0, 0.0]}
    for i, truth in enumerate(truths):
        r = await harness.infer({"x-user-id": f"user-{i}"})
        variant, predicted = r.headers["x-variant"], r.json()["outputs"][0]["data"][0]
        reward = -2.5 if i % 3 == 0 else 1.5  # canary: any finite reward, negative too
        fb = await client.post("/feedback", json={"request_id": r.headers["x-request-id"], "label": truth,
                                                  "reward": reward})
        assert fb.status_code == 200, fb.text
        assert fb.json()["correct"] is (predicted == truth) and fb.json()["variant"] == variant
        e = expected[variant]
        e[0] += 1
        e[1] += predicted == truth
        e[2] += 1
        e[3] += reward
        e[4] += reward * reward
    assert all(e[0] for e in expected.values()), "both variants should have answered some requests"
    q = (await client.get("/quality")).json()["variants"]
    for variant, (labels, correct, rewards, total, squares) in expected.items():
        assert q[variant]["labels"] == labels and q[variant]["correct"] == correct
        assert q[variant]["accuracy"] == pytest.approx(correct / labels)
        assert q[variant]["rewards"] == rewards and q[variant]["mean_reward"] == pytest.approx(total / rewards)
        d = delta(quality_metrics(variant), before[variant])
        assert d["labels"] == labels and d["correct"] == correct and d["rewards"] == rewards
        assert d["reward_sum"] == pytest.approx(total) and d["squares"] == pytest.approx(squares)
    assert delta(quality_metrics("stable"), before["stable"])["pred1"] == expected["stable"][0]
    assert delta(quality_metrics("candidate"), before["candidate"])["pred0"] == expected["candidate"][0]


def raw_feedback(rid: str, fields: str) -> str:
    """A feedback body as text: NaN / Infinity / 1e400 are not JSON a client library would write."""
    return '{"request_id": "' + rid + '", ' + fields + "}"


async def test_bad_feedback_changes_nothing_and_names_the_field(stubs, harness) -> None:
    a, b = stubs
    await harness.start(config(a, b))
    client = harness.client
    r = await harness.infer({"x-variant": "stable"})
    rid = r.headers["x-request-id"]
    before = quality_metrics("stable")
    cases = [
        (raw_feedback(rid, '"label": 1, "reward": 1e300'), "reward", "beyond the largest magnitude"),
        (raw_feedback(rid, '"label": 1, "reward": NaN'), "reward", "must be finite"),
        (raw_feedback(rid, '"label": 1, "reward": Infinity'), "reward", "must be finite"),
        (raw_feedback(rid, '"label": 1, "reward": 1e400'), "reward", "must be finite"),
        (raw_feedback(rid, '"label": 2'), "label", "not one of the model's classes 0..1"),
        (raw_feedback(rid, '"label": -1'), "label", "integer >= 0"),
        (raw_feedback(rid, '"label": true'), "label", "integer >= 0"),
        (raw_feedback(rid, '"labels": [1, 0]'), "labels", "it had 1 row"),
        (raw_feedback(rid, '"label": 1, "labels": [1]'), "label", "at most one of label"),
    ]
    for body, field, text in cases:
        fb = await client.post("/feedback", content=body, headers={"content-type": "application/json"})
        assert fb.status_code == 400, (body, fb.text)
        assert fb.json()["field"] == field and text in fb.json()["error"], fb.text
    assert quality_metrics("stable") == before  # nothing counted
    ok = await client.post("/feedback", json={"request_id": rid, "labels": [1], "reward": 0.5})
    assert ok.status_code == 200 and ok.json()["correct"] is True  # the refused ones left the entry open
    assert (await client.post("/feedback", json={"request_id": rid, "label": 1})).status_code == 409
    assert (await client.post("/feedback", json={"request_id": "never", "label": 1})).status_code == 404
    d = delta(quality_metrics("stable"), before)
    assert (d["labels"], d["correct"], d["rewards"], d["reward_sum"]) == (1, 1, 1, 0.5)


async def test_bandit_reward_out_of_range_leaves_the_arms_and_counters_alone(stubs, harness) -> None:
    a, b = stubs
    await harness.start(config(a, b, kind="epsilon_greedy", params={"epsilon": 0.5}))
    client = harness.client
    r = await harness.infer()
    rid, variant = r.headers["x-request-id"], r.headers["x-variant"]
    state = harness.router.dispatcher.table.policy.state()
    before = quality_metrics(variant)
    for value in ("1e300", "NaN", "-Infinity"):
        fb = await client.post("/feedback", content=raw_feedback(rid, '"label": 1, "reward": ' + value),
                               headers={"content-type": "application/json"})
        assert fb.status_code == 400 and fb.json()["field"] == "reward", fb.text
    assert harness.router.dispatcher.table.policy.state() == state
    assert quality_metrics(variant) == before
    ok = await client.post("/feedback", json={"request_id": rid, "reward": -3.0})  # no declared range
    assert ok.status_code == 200
    assert harness.router.dispatcher.table.policy.state()["arms"][variant]["reward_sum"] == -3.0
    assert delta(quality_metrics(variant), before)["reward_sum"] == -3.0


async def test_ucb1_rejects_rewards_outside_its_declared_range_before_learning(stubs, harness) -> None:
    a, b = stubs
    await harness.start(config(a, b, kind="ucb1", params={"reward_min": 0, "reward_max": 10}))
    r = await harness.infer()
    state = harness.router.dispatcher.table.policy.state()
    fb = await harness.client.post("/feedback", json={"request_id": r.headers["x-request-id"], "reward": 11})
    assert fb.status_code == 400 and "is outside [0.0, 10.0]" in fb.json()["error"]
    assert harness.router.dispatcher.table.policy.state() == state


async def test_shadow_feedback_scores_the_primary_and_the_mirrored_shadow(stubs, harness) -> None:
    a, b = stubs  # primary (stable) predicts 1; the shadow (candidate) predicts 0
    await harness.start(config(a, b, kind="shadow", params={"primary": "stable", "shadows": ["candidate"]}))
    client = harness.client
    router = harness.router
    before = {v: quality_metrics(v) for v in ("stable", "candidate")}
    rids = [(await harness.infer()).headers["x-request-id"] for _ in range(5)]
    await _wait_for(lambda: router.dispatcher.mirrors.stats.get("candidate") is not None
                    and router.dispatcher.mirrors.stats["candidate"].compared_requests == 5)
    truths = [1, 0, 0, 1, 0]
    for rid, truth in zip(rids, truths, strict=True):
        fb = await client.post("/feedback", json={"request_id": rid, "label": truth, "reward": 1})
        assert fb.status_code == 200, fb.text
        assert fb.json()["correct"] is (truth == 1) and fb.json()["shadows_correct"] == {"candidate": truth == 0}
    q = (await client.get("/quality")).json()
    assert q["shadow_variants"] == ["candidate"]
    assert q["variants"]["stable"]["accuracy"] == pytest.approx(2 / 5)
    assert q["variants"]["candidate"]["accuracy"] == pytest.approx(3 / 5)
    assert q["variants"]["candidate"]["rewards"] == 0 and q["variants"]["candidate"]["mean_reward"] is None
    assert q["variants"]["stable"]["mean_reward"] == 1.0
    ds = delta(quality_metrics("stable"), before["stable"])
    dc = delta(quality_metrics("candidate"), before["candidate"])
    assert (ds["labels"], ds["correct"], ds["pred1"]) == (5, 2, 5)
    assert (dc["labels"], dc["correct"], dc["pred0"], dc["rewards"]) == (5, 3, 5, 0)


async def test_ab_label_and_outcome_in_one_call(stubs, harness) -> None:
    a, b = stubs
    await harness.start(config(a, b, kind="ab", params={"min_samples": 2}))
    r = await harness.infer({"x-user-id": "u1"})
    fb = await harness.client.post("/feedback", json={"key": "u1", "outcome": 1, "label": 0})
    assert fb.status_code == 200 and fb.json()["outcome"] == 1
    arms = (await harness.client.get("/experiments/exp")).json()["report"]["arms"]
    assert arms[r.headers["x-variant"]]["conversions"] == 1
    bad = await harness.infer({"x-user-id": "u2"})
    nope = await harness.client.post("/feedback", json={"request_id": bad.headers["x-request-id"], "outcome": 0.5})
    assert nope.status_code == 400 and nope.json()["field"] == "outcome"


# -- admin API and reloads ---------------------------------------------------------------------------


def auth(token: str = TOKEN) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


async def test_admin_needs_the_bearer_token(stubs, harness) -> None:
    a, b = stubs
    await harness.start(config(a, b))
    client = harness.client
    assert (await client.get("/admin/routing")).status_code == 401
    assert (await client.get("/admin/routing", headers=auth("wrong"))).status_code == 401
    assert (await client.put("/admin/routing", content="x", headers=auth("wrong"))).status_code == 401
    assert (await client.get("/admin/routing", headers={"authorization": "Basic abc"})).status_code == 401
    ok = await client.get("/admin/routing", headers=auth())
    assert ok.status_code == 200 and ok.json()["version"] == 1 and ok.json()["config"]["name"] == "exp"


async def test_admin_disabled_without_a_token(stubs, harness, tmp_path) -> None:
    a, b = stubs
    harness.config_path.write_text(yaml.safe_dump(config(a, b)))
    s = RouterSettings(routing_config=harness.config_path, state_file=None, config_poll_s=0)
    router = Router(s)
    await router.start()
    try:
        client = httpx.AsyncClient(transport=httpx.ASGITransport(app=build_app(router)), base_url="http://r")
        r = await client.get("/admin/routing", headers=auth())
        assert r.status_code == 403 and "admin API is disabled" in r.json()["error"]
        token_file = tmp_path / "token"
        token_file.write_text("from-file\n")
        router.settings.admin_token_file = token_file
        assert (await client.get("/admin/routing", headers=auth("from-file"))).status_code == 200
        await client.aclose()
    finally:
        await router.stop()


async def test_admin_put_validates_versions_and_writes_the_file(stubs, harness) -> None:
    a, b = stubs
    await harness.start(config(a, b))
    client = harness.client
    bad = config(a, b, params={"weights": {"stable": 70, "candidate": 20}})
    r = await client.put("/admin/routing", content=yaml.safe_dump(bad), headers=auth())
    assert r.status_code == 400 and "weights sum to 90" in r.json()["error"]
    assert harness.router.dispatcher.table.version == 1
    good = config(a, b, params={"weights": {"stable": 0, "candidate": 100}})
    r = await client.put("/admin/routing", content=yaml.safe_dump(good), headers={**auth(), "if-match": '"1"'})
    assert r.status_code == 200, r.text
    assert r.json()["version"] == 2 and r.json()["changed"] and r.json()["written_to_file"]
    assert yaml.safe_load(harness.config_path.read_text())["policy"]["params"]["weights"]["candidate"] == 100
    for _ in range(5):
        assert (await harness.infer()).headers["x-variant"] == "candidate"
    same = await client.put("/admin/routing", content=yaml.safe_dump(good), headers=auth())
    assert same.json()["version"] == 2 and not same.json()["changed"]
    stale = await client.put("/admin/routing", content=yaml.safe_dump(bad), headers={**auth(), "if-match": "1"})
    assert stale.status_code == 412
    harness.router.control.check_config_file()  # the file the PUT wrote is not a new change
    assert harness.router.dispatcher.table.version == 2


async def test_file_reload_applies_good_and_keeps_old_on_bad(stubs, harness, caplog) -> None:
    caplog.set_level(logging.INFO, logger="services.router")
    a, b = stubs
    await harness.start(config(a, b))
    router = harness.router
    harness.config_path.write_text("name: exp\nvariants: {}\npolicy: {kind: canary}\n")
    router.control.check_config_file()
    assert router.dispatcher.table.version == 1
    rejected = [r for r in caplog.records if r.getMessage().startswith("routing config file rejected")]
    assert rejected and "at least one variant is required" in rejected[-1].error
    assert rejected[-1].version_in_force == 1
    cfg = config(a, b, params={"weights": {"stable": 100, "candidate": 0}})
    harness.config_path.write_text(yaml.safe_dump(cfg))
    router.control.check_config_file()
    assert router.dispatcher.table.version == 2
    changed = [r for r in caplog.records if r.getMessage() == "routing config changed"]
    assert changed and changed[-1].old_version == 1 and changed[-1].new_version == 2
    assert all([(await harness.infer()).headers["x-variant"] == "stable" for _ in range(5)])


async def test_reload_keeps_learned_state_for_the_same_policy(stubs, harness) -> None:
    a, b = stubs
    await harness.start(config(a, b, kind="ucb1", params={}))
    router = harness.router
    rids = []
    for _ in range(6):
        r = await harness.infer()
        rids.append(r.headers["x-request-id"])
    for rid in rids[:3]:
        assert (await harness.client.post("/feedback", json={"request_id": rid, "reward": 1})).status_code == 200
    before = router.dispatcher.table.policy.state()["arms"]
    router.control.apply(router.dispatcher.table.config.model_copy(update={"name": "exp2"}), "", "admin")
    assert router.dispatcher.table.version == 2
    assert router.dispatcher.table.policy.state()["arms"] == before
    # pending decisions survive a same-kind reload ...
    assert (await harness.client.post("/feedback", json={"request_id": rids[3], "reward": 0})).status_code == 200
    # ... but not a change of policy kind: a new experiment starts
    from services.router.config import parse_config
    router.control.apply(parse_config(config(a, b, kind="thompson", params={})), "", "admin")
    r = await harness.client.post("/feedback", json={"request_id": rids[4], "reward": 0})
    assert r.status_code == 409 and "earlier policy" in r.json()["error"]
    assert router.dispatcher.table.policy.state()["total_pulls"] == 0


async def test_canary_weight_change_keeps_keys_that_need_not_move(stubs, harness) -> None:
    a, b = stubs
    await harness.start(config(a, b, params={"weights": {"stable": 90, "candidate": 10}}))
    users = [f"user-{i}" for i in range(200)]
    before = {u: (await harness.infer({"x-user-id": u})).headers["x-variant"] for u in users}
    from services.router.config import parse_config
    new = parse_config(config(a, b, params={"weights": {"stable": 80, "candidate": 20}}))
    harness.router.control.apply(new, "", "file")
    after = {u: (await harness.infer({"x-user-id": u})).headers["x-variant"] for u in users}
    moved = [u for u in users if before[u] != after[u]]
    assert moved and all(before[u] == "stable" and after[u] == "candidate" for u in moved)


# -- persistence ---------------------------------------------------------------------------------------


async def test_restart_keeps_bandit_state_and_pending_feedback(stubs, harness) -> None:
    a, b = stubs
    await harness.start(config(a, b, kind="thompson", params={}))
    rids = [(await harness.infer()).headers["x-request-id"] for _ in range(8)]
    for rid in rids[:5]:
        assert (await harness.client.post("/feedback", json={"request_id": rid, "reward": 1})).status_code == 200
    before = harness.router.dispatcher.table.policy.state()
    await harness.stop()
    saved = json.loads(harness.state_path.read_text())
    assert saved["policy"]["arms"] == before["arms"]

    await harness.start()
    after = harness.router.dispatcher.table.policy.state()
    assert after["arms"] == before["arms"] and after["total_pulls"] == 8
    assert harness.router.dispatcher.table.version == 1  # same config: same version
    r = await harness.client.post("/feedback", json={"request_id": rids[6], "reward": 1})
    assert r.status_code == 200  # a decision made before the restart still takes its reward
    r = await harness.client.post("/feedback", json={"request_id": rids[0], "reward": 1})
    assert r.status_code == 409


async def test_restart_after_a_changed_file_bumps_the_version(stubs, harness) -> None:
    a, b = stubs
    await harness.start(config(a, b))
    await harness.stop()
    harness.config_path.write_text(yaml.safe_dump(config(a, b, params={"weights": {"stable": 1, "candidate": 0}})))
    await harness.start()
    assert harness.router.dispatcher.table.version == 2


async def test_admin_config_survives_restart_when_the_file_is_not_written(stubs, harness) -> None:
    a, b = stubs
    await harness.start(config(a, b), admin_writes_config=False)
    new = config(a, b, params={"weights": {"stable": 0, "candidate": 100}})
    r = await harness.client.put("/admin/routing", content=yaml.safe_dump(new), headers=auth())
    assert r.json()["version"] == 2 and not r.json()["written_to_file"]
    await harness.stop()
    await harness.start(admin_writes_config=False)
    assert harness.router.dispatcher.table.version == 2
    assert harness.router.dispatcher.table.config.policy.params["weights"]["candidate"] == 100


async def test_corrupt_state_file_is_moved_aside(stubs, harness) -> None:
    a, b = stubs
    harness.state_path.write_text("{not json")
    await harness.start(config(a, b))
    assert harness.router.dispatcher.table.version == 1
    assert list(harness.tmp.glob("state.json.corrupt-*"))
