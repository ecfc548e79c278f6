"""The router as a real process in front of real model servers (services.model_server).

Two model servers are shared by the module (stable serves breast-cancer v1, candidate v2); tests
that kill a server start their own victim. Every process is stopped at teardown, pass or fail.
Traffic is bounded in count; waits are bounded polls, never timing assertions.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from services.stack import promtool
from services.stack.demo_routed import v2_body
from services.stack.process import ServiceProcess
from services.stack.routed import model_server, router_process

pytestmark = pytest.mark.integration

TOKEN = "integration-token"


def routing(urls: dict[str, str], kind: str = "canary", params: dict | None = None, **extra: Any) -> dict:
    cfg = {
        "name": "bc",
        "model": "breast-cancer",
        "variants": {
            "stable": {"url": urls["stable"], "model": "breast-cancer", "version": 1, "timeout_s": 2.0},
            "candidate": {"url": urls["candidate"], "model": "breast-cancer", "version": 2, "timeout_s": 2.0},
        },
        "policy": {"kind": kind,
                   "params": params if params is not None else {"weights": {"stable": 70, "candidate": 30}}},
        "fallback": "stable",
    }
    cfg.update(extra)
    return cfg


@dataclass
class RouterHandle:
    proc: ServiceProcess
    url: str
    config_path: Path
    state_path: Path

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=10.0)

    def admin(self) -> dict[str, str]:
        return {"authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def start_router(start_service, tmp_path) -> Callable[..., RouterHandle]:
    def start(cfg: dict | None, *, name: str = "router", port: int | None = None, **env: str) -> RouterHandle:
        config_path = tmp_path / "routing.yaml"
        if cfg is not None:
            config_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        state_path = tmp_path / "router-state.json"
        proc, url = router_process(config_path, state_path, name=name, port=port, ROUTER_ADMIN_TOKEN=TOKEN,
                                   ROUTER_CONFIG_POLL_S="0.2", **env)
        start_service(proc)
        return RouterHandle(proc, url, config_path, state_path)

    return start


@dataclass
class Traffic:
    """Background clients sending holdout rows through the router until `total` requests are done."""

    url: str
    rows: list[tuple[list[float], int]]
    total: int
    threads: int = 4
    keyed: bool = True
    sent: int = 0
    statuses: Counter = field(default_factory=Counter)
    variants: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _workers: list[threading.Thread] = field(default_factory=list)

    def start(self) -> Traffic:
        self._workers = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(self.threads)]
        for t in self._workers:
            t.start()
        return self

    def _next(self) -> int | None:
        with self._lock:
            if self.sent >= self.total:
                return None
            self.sent += 1
            return self.sent

    def _run(self, worker: int) -> None:
        with httpx.Client(base_url=self.url, timeout=10.0) as client:
            while (i := self._next()) is not None:
                row, _ = self.rows[i % len(self.rows)]
                headers = {"x-user-id": f"user-{i}"} if self.keyed else {}
                try:
                    r = client.post("/v2/models/breast-cancer/infer", json=v2_body(row), headers=headers)
                    status, variant = r.status_code, r.headers.get("x-variant", "")
                    if status != 200:
                        with self._lock:
                            self.errors.append(f"{status}: {r.text[:200]}")
                except httpx.HTTPError as exc:
                    status, variant = 0, ""
                    with self._lock:
                        self.errors.append(f"transport: {exc!r}")
                with self._lock:
                    self.statuses[status] += 1
                    self.variants.append(variant)

    def wait_for(self, sent: int) -> None:
        deadline = time.monotonic() + 120
        while self.sent < sent and time.monotonic() < deadline and any(t.is_alive() for t in self._workers):
            time.sleep(0.01)

    def join(self) -> Traffic:
        for t in self._workers:
            t.join(180)
        assert not any(t.is_alive() for t in self._workers), "traffic did not finish"
        return self

    @property
    def done(self) -> int:
        return sum(self.statuses.values())


def kill(proc: ServiceProcess) -> None:
    """SIGKILL: no graceful drain, connections reset — the hard case for fail-over."""
    assert proc.popen is not None
    os.killpg(proc.popen.pid, signal.SIGKILL)
    proc.popen.wait(10)


def check_exposition(text: str) -> None:
    """/metrics parses, and `promtool check metrics` accepts it when promtool is built."""
    assert sum(1 for _ in text_string_to_metric_families(text)) > 10
    if promtool.path() is not None:
        result = promtool.check_metrics(text)
        assert result.returncode == 0, result.stdout.decode() + result.stderr.decode()


def poll(predicate: Callable[[], bool], what: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


# -- split, stickiness, answers ----------------------------------------------------------------------


def test_canary_split_follows_the_weights_and_keys_stick(servers, rows, start_router) -> None:
    router = start_router(routing(servers))
    n = 1000
    first: dict[str, str] = {}
    with router.client() as client:
        for i in range(n):
            row, _ = rows[i % len(rows)]
            r = client.post("/v2/models/breast-cancer/infer", json=v2_body(row), headers={"x-user-id": f"u{i}"})
            assert r.status_code == 200, r.text
            body = r.json()
            variant = r.headers["x-variant"]
            expected_version = {"stable": "1", "candidate": "2"}[variant]
            assert body["variant"] == variant and body["model_version"] == expected_version
            assert r.headers["x-model-version"] == f"breast-cancer:{expected_version}"
            assert body["request_id"] == r.headers["x-request-id"]
            first[f"u{i}"] = variant
        share = sum(v == "candidate" for v in first.values()) / n
        # 30% expected; binomial sd = sqrt(.3 * .7 / 1000) = 1.45 points: allow 4.5 sd
        assert abs(share - 0.30) < 0.065, share
        for i in range(0, n, 5):  # the same keys again: the same variants
            row, _ = rows[i % len(rows)]
            r = client.post("/v2/models/breast-cancer/infer", json=v2_body(row), headers={"x-user-id": f"u{i}"})
            assert r.headers["x-variant"] == first[f"u{i}"]
        forced = client.post("/v2/models/breast-cancer/infer", json=v2_body(rows[0][0]),
                             headers={"x-user-id": "u0", "x-variant": "candidate"})
        assert forced.headers["x-variant"] == "candidate"
        metrics = client.get("/metrics").text
    assert 'router_requests_total{policy="canary",status="200",variant="candidate"}' in metrics
    assert "router_config_version 1.0" in metrics


def test_model_server_errors_pass_through_with_the_routers_headers(servers, start_router) -> None:
    router = start_router(routing(servers))
    with router.client() as client:
        r = client.post("/v2/models/breast-cancer/infer", json=v2_body([1.0] * 29), headers={"x-user-id": "u1"})
        assert r.status_code == 400 and "30" in r.json()["error"]  # the model server names the problem
        assert r.headers["x-variant"] in ("stable", "candidate") and r.headers["x-request-id"]
        meta = client.get("/v2/models/breast-cancer")
        assert meta.status_code == 200 and meta.json()["name"] == "breast-cancer"
        assert client.get("/v2/health/ready").json()["ready"] is True


# -- shadow --------------------------------------------------------------------------------------------


def test_shadow_killed_mid_traffic_costs_the_clients_nothing(servers, rows, start_router, start_service) -> None:
    victim, victim_url = model_server("model-server-shadow-victim")
    start_service(victim, 90)
    urls = {"stable": servers["stable"], "candidate": victim_url}
    router = start_router(routing(urls, kind="shadow", params={"primary": "stable", "shadows": ["candidate"]}))
    traffic = Traffic(router.url, rows, total=900).start()
    traffic.wait_for(300)
    with router.client() as client:
        poll(lambda: client.get("/shadow/summary").json()["shadows"].get("candidate", {}).get("compared_rows", 0) > 0,
             "mirrors to be compared")
        kill(victim)
        traffic.join()
        assert traffic.errors == [] and traffic.statuses == Counter({200: 900})
        assert set(traffic.variants) == {"stable"}

        def settled() -> bool:
            s = client.get("/shadow/summary").json()
            return s["queue"]["depth"] == 0 and s["shadows"]["candidate"]["error_count"] > 0

        poll(settled, "shadow errors to be counted")
        summary = client.get("/shadow/summary").json()["shadows"]["candidate"]
        metrics = client.get("/metrics").text
    assert summary["compared_rows"] > 0
    assert summary["label_agreement_rate"] > 0.85  # v1 and v2 mostly agree on the holdout set
    assert 0 < summary["mean_abs_prob_diff"] < 0.5
    assert summary["latency"]["samples"] > 0
    accounted = (summary["mirrored"] + summary["dropped_queue_full"] + summary["skipped_ejected"])
    assert accounted == 900
    assert 'router_shadow_errors_total{kind=' in metrics
    check_exposition(metrics)


# -- fail-over -----------------------------------------------------------------------------------------


def test_failover_when_a_variant_is_killed_under_traffic(servers, rows, start_router, start_service) -> None:
    victim, victim_url = model_server("model-server-canary-victim")
    start_service(victim, 90)
    urls = {"stable": servers["stable"], "candidate": victim_url}
    cfg = routing(urls, params={"weights": {"stable": 50, "candidate": 50}},
                  outlier_detection={"consecutive_failures": 3, "base_ejection_s": 30, "max_ejection_s": 60})
    router = start_router(cfg)
    total = 2000
    traffic = Traffic(router.url, rows, total=total).start()
    traffic.wait_for(400)
    killed_at = traffic.sent
    kill(victim)
    traffic.join()
    failed = total - traffic.statuses[200]
    assert failed <= total * 0.001, traffic.errors[:5]
    assert traffic.variants[:killed_at].count("candidate") > 0
    assert traffic.variants[killed_at + 50:].count("candidate") == 0  # after the kill only stable answers
    with router.client() as client:
        metrics = client.get("/metrics").text
        status = client.get("/policy").json()
    assert 'router_failover_total{from_variant="candidate",reason="error",to_variant="stable"}' in metrics
    assert 'router_ejections_total{variant="candidate"} 1.0' in metrics
    assert status["variants"]["candidate"]["ejected"] is True
    check_exposition(metrics)


# -- config: hot reload, bad configs, admin auth --------------------------------------------------------


def test_hot_reload_under_traffic_fails_no_request(servers, rows, start_router) -> None:
    router = start_router(routing(servers, params={"weights": {"stable": 100, "candidate": 0}}))
    traffic = Traffic(router.url, rows, total=2400).start()
    with router.client() as client:
        traffic.wait_for(400)
        # 1. edit the file (atomic rename, as editors and ConfigMap updates do)
        edited = routing(servers, params={"weights": {"stable": 0, "candidate": 100}})
        tmp = router.config_path.with_suffix(".tmp")
        tmp.write_text(yaml.safe_dump(edited))
        os.replace(tmp, router.config_path)
        poll(lambda: client.get("/admin/routing", headers=router.admin()).json()["version"] == 2, "file reload")
        at_file = traffic.sent
        # 2. the admin API
        traffic.wait_for(at_file + 400)
        put = routing(servers, params={"weights": {"stable": 50, "candidate": 50}})
        r = client.put("/admin/routing", content=yaml.safe_dump(put), headers=router.admin())
        assert r.status_code == 200 and r.json()["version"] == 3 and r.json()["previous_version"] == 2
        at_admin = traffic.sent
        traffic.join()
        got = client.get("/admin/routing", headers=router.admin()).json()
    assert traffic.errors == [] and traffic.statuses == Counter({200: 2400})
    v = traffic.variants
    assert set(v[:300]) == {"stable"}
    assert set(v[at_file + 50 : at_admin - 50]) == {"candidate"}
    assert set(v[at_admin + 50 :]) == {"stable", "candidate"}
    assert got["config"]["policy"]["params"]["weights"] == {"stable": 50.0, "candidate": 50.0}
    log = router.proc.log_path.read_text()
    changes = [json.loads(line) for line in log.splitlines() if '"routing config changed"' in line]
    assert [(c["old_version"], c["new_version"], c["source"]) for c in changes] == [(1, 2, "file"), (2, 3, "admin")]


def test_bad_config_is_rejected_and_the_old_one_stays(servers, rows, start_router) -> None:
    router = start_router(routing(servers, params={"weights": {"stable": 100, "candidate": 0}}))
    with router.client() as client:
        bad = routing(servers, params={"weights": {"stable": 80, "candidate": 30}})
        r = client.put("/admin/routing", content=yaml.safe_dump(bad), headers=router.admin())
        assert r.status_code == 400
        assert "policy.params.weights: weights sum to 110" in r.json()["error"]
        typo = routing(servers)
        typo["fallbak"] = "stable"
        r = client.put("/admin/routing", content=yaml.safe_dump(typo), headers=router.admin())
        assert r.status_code == 400 and "fallbak: unknown key" in r.json()["error"]
        r = client.put("/admin/routing", content="variants: [", headers=router.admin())
        assert r.status_code == 400 and "not valid YAML" in r.json()["error"]
        assert client.get("/admin/routing", headers=router.admin()).json()["version"] == 1

        router.config_path.write_text(yaml.safe_dump(routing(servers, kind="ab", params={"alpha": 3})))
        poll(lambda: "routing config file rejected" in router.proc.log_path.read_text(), "the rejection to be logged")
        rejected = [json.loads(line) for line in router.proc.log_path.read_text().splitlines()
                    if '"routing config file rejected' in line][-1]
        assert "alpha: Input should be less than 1" in rejected["error"] and rejected["version_in_force"] == 1
        assert client.get("/admin/routing", headers=router.admin()).json()["version"] == 1
        for i in range(20):  # still routing by the old config
            r = client.post("/v2/models/breast-cancer/infer", json=v2_body(rows[i][0]), headers={"x-user-id": str(i)})
            assert r.status_code == 200 and r.headers["x-variant"] == "stable"


def test_admin_api_needs_the_right_bearer_token(servers, start_router) -> None:
    router = start_router(routing(servers))
    with router.client() as client:
        for headers in ({}, {"authorization": "Bearer wrong"}, {"authorization": TOKEN}):
            r = client.get("/admin/routing", headers=headers)
            assert r.status_code == 401, headers
            assert r.json()["code"] == "unauthorized"
            r = client.put("/admin/routing", content=yaml.safe_dump(routing(servers)), headers=headers)
            assert r.status_code == 401
        assert client.get("/admin/routing", headers=router.admin()).status_code == 200


# -- persistence -----------------------------------------------------------------------------------------


def test_restart_keeps_bandit_state(servers, rows, start_router) -> None:
    cfg = routing(servers, kind="thompson", params={})
    router = start_router(cfg)
    pending = []
    with router.client() as client:
        for i, (row, label) in enumerate(rows[:120]):
            r = client.post("/v2/models/breast-cancer/infer", json=v2_body(row))
            assert r.status_code == 200
            reward = int(r.json()["outputs"][0]["data"][0] == label)
            if i % 4 == 3:
                pending.append((r.headers["x-request-id"], reward))  # rewarded after the restart
                continue
            fb = client.post("/feedback", json={"request_id": r.headers["x-request-id"], "reward": reward})
            assert fb.status_code == 200, fb.text
        before = client.get("/bandit").json()["state"]
    assert before["total_pulls"] == 120
    assert router.proc.stop() == 0  # SIGTERM: drained, state saved, clean exit

    again = start_router(None, name="router-restarted")
    with again.client() as client:
        after = client.get("/bandit").json()["state"]
        assert after["arms"] == before["arms"] and after["total_pulls"] == before["total_pulls"]
        assert after["posterior"] == before["posterior"]
        for rid, reward in pending:  # decisions made before the restart still take their reward
            assert client.post("/feedback", json={"request_id": rid, "reward": reward}).status_code == 200
        final = client.get("/bandit").json()["state"]
        assert sum(a["rewards"] for a in final["arms"].values()) == 120
        assert client.get("/admin/routing", headers=again.admin()).json()["version"] == 1
        unknown = client.post("/feedback", json={"request_id": "nope", "reward": 1})
        assert unknown.status_code == 404


# -- gRPC ------------------------------------------------------------------------------------------------


def predict_request(rows: list[list[float]], name: str = "breast-cancer") -> Any:
    import numpy as np

    from services.protocols.tfs import model_pb2, predict_pb2
    from services.protocols.tfs.tensors import from_numpy

    req = predict_pb2.PredictRequest(model_spec=model_pb2.ModelSpec(name=name))
    req.inputs["input"].CopyFrom(from_numpy(np.asarray(rows, dtype=np.float32)))
    return req


@contextlib.contextmanager
def grpc_predict(port: int) -> Iterator[Any]:
    """A TF Serving Predict callable on the router's gRPC port."""
    import grpc

    from services.protocols.tfs import predict_pb2
    from services.router.grpc_predict import PREDICT

    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield channel.unary_unary(PREDICT, request_serializer=predict_pb2.PredictRequest.SerializeToString,
                                  response_deserializer=predict_pb2.PredictResponse.FromString)
    finally:
        channel.close()


def with_grpc(urls: dict[str, str], cfg: dict) -> dict:
    for name in cfg["variants"]:
        cfg["variants"][name]["grpc"] = urls[f"{name}-grpc"]
    return cfg


def test_grpc_predict_is_routed_and_fails_over(servers, rows, start_router) -> None:
    import grpc

    from services.protocols.tfs.tensors import to_numpy
    from services.stack.process import free_port

    cfg = routing(servers, params={"weights": {"stable": 50, "candidate": 50}})
    cfg["variants"]["stable"]["grpc"] = servers["stable-grpc"]
    cfg["variants"]["candidate"]["grpc"] = f"127.0.0.1:{free_port()}"  # nothing listens: fails over
    port = free_port()
    router = start_router(cfg, ROUTER_GRPC_PORT=str(port))
    with grpc_predict(port) as predict:
        served = Counter()
        with router.client() as client:
            for i, (row, _) in enumerate(rows[:40]):
                resp, call = predict.with_call(predict_request([row]), metadata=(("x-user-id", f"u{i}"),),
                                               timeout=10)
                trailing = dict(call.trailing_metadata())
                served[trailing["x-variant"]] += 1
                assert trailing["x-model-version"] == "breast-cancer:1" and trailing["x-request-id"]
                rest = client.post("/v2/models/breast-cancer/infer", json=v2_body(row), headers={"x-variant": "stable"})
                assert int(to_numpy(resp.outputs["label"])[0]) == rest.json()["outputs"][0]["data"][0]
            metrics = client.get("/metrics").text
        assert served == Counter({"stable": 40})  # the candidate's share failed over, then it was ejected
        assert 'router_failover_total{from_variant="candidate"' in metrics
        with pytest.raises(grpc.RpcError) as err:
            predict(predict_request([rows[0][0]], name="wine"), timeout=10)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND and "not routed here" in err.value.details()
        assert dict(err.value.trailing_metadata())["x-request-id"]
        with pytest.raises(grpc.RpcError) as err:  # the model server's verdict on bad input passes through
            predict(predict_request([[1.0] * 29]), metadata=(("x-variant", "stable"),), timeout=10)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert dict(err.value.trailing_metadata())["x-variant"] == "stable"


def test_grpc_answers_carry_request_id_and_variant_as_initial_metadata(servers, rows, start_router) -> None:
    from services.stack.process import free_port

    port = free_port()
    router = start_router(with_grpc(servers, routing(servers)), ROUTER_GRPC_PORT=str(port))
    with grpc_predict(port) as predict, router.client() as client:
        seen = set()
        for i, (row, _) in enumerate(rows[:20]):
            _, call = predict.with_call(predict_request([row]), timeout=10,
                                        metadata=(("x-request-id", f"grpc-{i}"), ("x-user-id", f"u{i}")))
            initial = dict(call.initial_metadata())
            assert initial["x-request-id"] == f"grpc-{i}"  # the client's id, echoed
            assert initial["x-variant"] in ("stable", "candidate")
            assert initial["x-model-version"] == {"stable": "breast-cancer:1",
                                                  "candidate": "breast-cancer:2"}[initial["x-variant"]]
            assert dict(call.trailing_metadata())["x-variant"] == initial["x-variant"]
            seen.add(initial["x-variant"])
            rest = client.post("/v2/models/breast-cancer/infer", json=v2_body(row), headers={"x-user-id": f"u{i}"})
            assert rest.headers["x-variant"] == initial["x-variant"]  # the same policy decides both fronts
        assert seen == {"stable", "candidate"}
        _, call = predict.with_call(predict_request([rows[0][0]]), timeout=10)
        assert dict(call.initial_metadata())["x-request-id"]  # generated when the client sends none


def test_grpc_client_errors_pass_through_and_never_eject(servers, rows, start_router) -> None:
    import grpc

    from services.protocols.tfs.tensors import to_numpy
    from services.stack.process import free_port

    cfg = with_grpc(servers, routing(servers, outlier_detection={"consecutive_failures": 2, "base_ejection_s": 60,
                                                                 "max_ejection_s": 60}))
    port = free_port()
    router = start_router(cfg, ROUTER_GRPC_PORT=str(port))
    too_many = [rows[i % len(rows)][0] for i in range(257)]  # one row over the model server's batch limit
    cases = [([[1.0] * 29], grpc.StatusCode.INVALID_ARGUMENT, "30"),
             (too_many, grpc.StatusCode.RESOURCE_EXHAUSTED, "256")]
    with grpc_predict(port) as predict, router.client() as client:
        for batch, code, text in cases:
            for _ in range(5):  # more than consecutive_failures
                with pytest.raises(grpc.RpcError) as err:
                    predict(predict_request(batch), metadata=(("x-variant", "candidate"),), timeout=10)
                assert err.value.code() == code, err.value.details()
                assert text in err.value.details()  # the model server names the problem
                assert dict(err.value.initial_metadata())["x-variant"] == "candidate"
        rest = client.post("/v2/models/breast-cancer/infer", json={"inputs": [
            {"name": "input", "shape": [257, 30], "datatype": "FP32", "data": [x for row in too_many for x in row]}]},
            headers={"x-variant": "candidate"})
        assert rest.status_code == 413 and rest.headers["x-variant"] == "candidate"
        status = client.get("/policy").json()["variants"]["candidate"]
        metrics = client.get("/metrics").text
        resp = predict(predict_request([rows[0][0]]), metadata=(("x-variant", "candidate"),), timeout=10)
    assert status["ejected"] is False and status["consecutive_failures"] == 0
    assert 'router_upstream_errors_total{kind=' not in metrics and "router_failover_total{" not in metrics
    assert 'router_requests_total{policy="canary",status="400",variant="candidate"} 5.0' in metrics
    assert 'router_requests_total{policy="canary",status="413",variant="candidate"} 6.0' in metrics
    assert to_numpy(resp.outputs["label"]).shape == (1,)  # and the candidate still answers


def test_grpc_predict_through_the_shadow_pattern_is_compared(servers, rows, start_router) -> None:
    from services.protocols.tfs.tensors import to_numpy
    from services.stack.process import free_port

    cfg = with_grpc(servers, routing(servers, kind="shadow", params={"primary": "stable", "shadows": ["candidate"]}))
    port = free_port()
    router = start_router(cfg, ROUTER_GRPC_PORT=str(port))
    n = 60
    with grpc_predict(port) as predict, router.client() as client:
        for i, (row, _) in enumerate(rows[:n]):
            resp, call = predict.with_call(predict_request([row]), timeout=10, metadata=(("x-request-id", f"s{i}"),))
            assert dict(call.initial_metadata())["x-variant"] == "stable"
            direct = client.post("/v2/models/breast-cancer/infer", json=v2_body(row), headers={"x-variant": "stable"})
            assert int(to_numpy(resp.outputs["label"])[0]) == direct.json()["outputs"][0]["data"][0]
        # the REST requests above were mirrored too: n over gRPC, n over REST
        poll(lambda: client.get("/shadow/summary").json()["shadows"].get("candidate", {}).get("compared_requests")
             == 2 * n, "every mirror to be compared")
        summary = client.get("/shadow/summary").json()
        metrics = client.get("/metrics").text
    s = summary["shadows"]["candidate"]
    assert summary["policy"] == "shadow" and summary["shadow_variants"] == ["candidate"]
    assert s["mirrored"] == 2 * n and s["error_count"] == 0 and s["incomparable"] == 0
    assert s["compared_rows"] == 2 * n
    assert s["label_agreement_rate"] > 0.85  # v1 and v2 mostly agree on the holdout set
    assert 0 < s["mean_abs_prob_diff"] < 0.5
    assert s["latency"]["samples"] == 2 * n
    assert 'router_shadow_mirrored_total{variant="candidate"} 120.0' in metrics


def test_grpc_shadow_alone_is_compared_like_rest(servers, rows, start_router) -> None:
    """The same rows through gRPC only and through REST only give the same comparison."""
    from services.stack.process import free_port

    def run(use_grpc: bool) -> dict:
        cfg = with_grpc(servers, routing(servers, kind="shadow", params={"primary": "stable"}))
        port = free_port()
        router = start_router(cfg, name=f"router-{'grpc' if use_grpc else 'rest'}", ROUTER_GRPC_PORT=str(port),
                              ROUTER_STATE_FILE="")
        try:
            with grpc_predict(port) as predict, router.client() as client:
                for row, _ in rows[:40]:
                    if use_grpc:
                        predict(predict_request([row]), timeout=10)
                    else:
                        assert client.post("/v2/models/breast-cancer/infer", json=v2_body(row)).status_code == 200
                poll(lambda: client.get("/shadow/summary").json()["shadows"].get("candidate", {})
                     .get("compared_requests") == 40, "every mirror to be compared")
                return client.get("/shadow/summary").json()["shadows"]["candidate"]
        finally:
            router.proc.stop()

    over_grpc, over_rest = run(True), run(False)
    assert over_grpc["compared_rows"] == over_rest["compared_rows"] == 40
    assert over_grpc["label_agreement_rate"] == over_rest["label_agreement_rate"]
    assert over_grpc["mean_abs_prob_diff"] == pytest.approx(over_rest["mean_abs_prob_diff"], abs=1e-6)


# -- Open Inference Protocol gRPC (tritonclient, unchanged) ------------------------------------------------


def triton_input(rows: list[list[float]]) -> Any:
    import numpy as np
    import tritonclient.grpc as triton

    arr = np.asarray(rows, dtype=np.float32)
    tensor = triton.InferInput("input", list(arr.shape), "FP32")
    tensor.set_data_from_numpy(arr)
    return tensor


def triton_error(call: Callable[[], Any]) -> Any:
    from tritonclient.utils import InferenceServerException

    with pytest.raises(InferenceServerException) as err:
        call()
    return err.value


def test_oip_grpc_answers_equal_the_model_servers(servers, rows, start_router) -> None:
    import numpy as np
    import tritonclient.grpc as triton

    from services.stack.process import free_port

    port = free_port()
    router = start_router(with_grpc(servers, routing(servers)), ROUTER_GRPC_PORT=str(port))
    batch = [row for row, _ in rows[:50]]
    with (triton.InferenceServerClient(f"127.0.0.1:{port}") as via,
          triton.InferenceServerClient(servers["stable-grpc"]) as stable,
          triton.InferenceServerClient(servers["candidate-grpc"]) as candidate):
        assert via.is_server_live() and via.is_server_ready()
        assert via.get_server_metadata().name == "serving-patterns-router"
        assert via.is_model_ready("breast-cancer") and via.is_model_ready("breast-cancer", "2")
        # metadata of the variant serving the version; without one, of the fallback (stable, v1)
        assert via.get_model_metadata("breast-cancer") == stable.get_model_metadata("breast-cancer", "1")
        assert via.get_model_metadata("breast-cancer", "2") == candidate.get_model_metadata("breast-cancer", "2")
        for variant, direct, version in (("stable", stable, "1"), ("candidate", candidate, "2")):
            routed = via.infer("breast-cancer", [triton_input(batch)], headers={"x-variant": variant},
                               request_id=f"oip-{variant}")
            want = direct.infer("breast-cancer", [triton_input(batch)], model_version=version)
            response = routed.get_response()
            assert (response.model_name, response.model_version, response.id) == ("breast-cancer", version,
                                                                                  f"oip-{variant}")
            assert np.array_equal(routed.as_numpy("label"), want.as_numpy("label"))
            assert np.array_equal(routed.as_numpy("probabilities"), want.as_numpy("probabilities"))
            pinned = via.infer("breast-cancer", [triton_input(batch[:3])], model_version=version)
            assert pinned.get_response().model_version == version  # a version pins the variant serving it
        versions = {via.infer("breast-cancer", [triton_input([row])], headers={"x-user-id": f"u{i}"})
                    .get_response().model_version for i, row in enumerate(batch)}
        assert versions == {"1", "2"}  # the canary policy splits OIP traffic too
        cases = [
            (lambda: via.infer("wine", [triton_input(batch[:1])]), "StatusCode.NOT_FOUND", "not routed here"),
            (lambda: via.infer("breast-cancer", [triton_input(batch[:1])], model_version="7"),
             "StatusCode.NOT_FOUND", "version '7' is not routed here"),
            (lambda: via.infer("breast-cancer", [triton_input(batch[:1])], headers={"x-variant": "ghost"}),
             "StatusCode.INVALID_ARGUMENT", "unknown variant 'ghost'"),
            (lambda: via.infer("breast-cancer", [triton_input([[1.0] * 29])], headers={"x-variant": "candidate"}),
             "StatusCode.INVALID_ARGUMENT", "30"),
            (lambda: via.infer("breast-cancer", [triton_input([batch[i % 50] for i in range(257)])],
                               headers={"x-variant": "candidate"}), "StatusCode.RESOURCE_EXHAUSTED", "256"),
            (lambda: via.is_model_ready("wine"), "StatusCode.NOT_FOUND", "not routed here"),
            (lambda: via.get_model_metadata("breast-cancer", "9"), "StatusCode.NOT_FOUND", "not routed here"),
        ]
        for call, status, text in cases:
            err = triton_error(call)
            assert err.status() == status and text in err.message(), (status, err)
    with router.client() as client:
        health = client.get("/policy").json()["variants"]["candidate"]
    assert health["ejected"] is False and health["consecutive_failures"] == 0  # client errors never eject


def test_oip_grpc_metadata_and_shadow(servers, rows, start_router) -> None:
    import grpc
    import tritonclient.grpc as triton

    from services.protocols.oip import open_inference_pb2 as pb
    from services.router.grpc_oip import MODEL_INFER
    from services.stack.process import free_port

    cfg = with_grpc(servers, routing(servers, kind="shadow", params={"primary": "stable", "shadows": ["candidate"]}))
    port = free_port()
    router = start_router(cfg, ROUTER_GRPC_PORT=str(port))
    n = 40
    with triton.InferenceServerClient(f"127.0.0.1:{port}") as via:
        for row, _ in rows[:n]:
            assert via.infer("breast-cancer", [triton_input([row])]).get_response().model_version == "1"
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        infer = channel.unary_unary(MODEL_INFER, request_serializer=pb.ModelInferRequest.SerializeToString,
                                    response_deserializer=pb.ModelInferResponse.FromString)
        request = pb.ModelInferRequest(model_name="breast-cancer", inputs=[
            pb.ModelInferRequest.InferInputTensor(name="input", datatype="FP32", shape=[1, 30],
                                                  contents=pb.InferTensorContents(fp32_contents=rows[0][0]))])
        _, call = infer.with_call(request, metadata=(("x-request-id", "oip-meta"),), timeout=10)
        initial = dict(call.initial_metadata())
        assert (initial["x-request-id"], initial["x-variant"], initial["x-model-version"]) == (
            "oip-meta", "stable", "breast-cancer:1")
        with pytest.raises(grpc.RpcError) as err:  # bytes that are no ModelInferRequest
            channel.unary_unary(MODEL_INFER)(b"\xff\xff\xff", timeout=10)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "ModelInferRequest" in err.value.details()
    with router.client() as client:
        poll(lambda: client.get("/shadow/summary").json()["shadows"].get("candidate", {}).get("compared_requests")
             == n + 1, "every mirror to be compared")
        s = client.get("/shadow/summary").json()["shadows"]["candidate"]
    assert s["mirrored"] == n + 1 and s["error_count"] == 0 and s["incomparable"] == 0
    assert s["label_agreement_rate"] > 0.85 and 0 < s["mean_abs_prob_diff"] < 0.5


# -- outcome feedback and quality, every policy -------------------------------------------------------


def sample(text: str, name: str, **labels: str) -> float:
    """One sample of a /metrics exposition (0 when absent)."""
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    return 0.0


def test_canary_feedback_gives_each_variant_its_accuracy_and_rewards(servers, rows, start_router) -> None:
    router = start_router(routing(servers, params={"weights": {"stable": 50, "candidate": 50}}))
    seen: dict[str, list[int]] = {v: [0, 0, 0, 0] for v in ("stable", "candidate")}  # labels, correct, Σr, Σr²
    predicted: dict[str, Counter] = {"stable": Counter(), "candidate": Counter()}
    with router.client() as client:
        empty = client.get("/quality").json()["variants"]
        assert all(v["accuracy"] is None and v["mean_reward"] is None for v in empty.values())
        for i, (row, truth) in enumerate(rows[:80]):
            r = client.post("/v2/models/breast-cancer/infer", json=v2_body(row), headers={"x-user-id": f"u{i}"})
            assert r.status_code == 200
            variant, label = r.headers["x-variant"], r.json()["outputs"][0]["data"][0]
            reward = 2 if label == truth else -1
            fb = client.post("/feedback", json={"request_id": r.headers["x-request-id"], "label": truth,
                                                "reward": reward})
            assert fb.status_code == 200, fb.text
            assert fb.json()["correct"] is (label == truth)
            seen[variant][0] += 1
            seen[variant][1] += label == truth
            seen[variant][2] += reward
            seen[variant][3] += reward * reward
            predicted[variant][str(label)] += 1
        # a multi-row request takes one true label per row
        batch = rows[80:83]
        r = client.post("/v2/models/breast-cancer/infer",
                        json={"inputs": [{"name": "input", "shape": [3, len(batch[0][0])], "datatype": "FP32",
                                          "data": [x for row, _ in batch for x in row]}]},
                        headers={"x-variant": "stable"})
        labels = r.json()["outputs"][0]["data"]
        short = client.post("/feedback", json={"request_id": r.headers["x-request-id"], "labels": [1]})
        assert short.status_code == 400 and short.json()["field"] == "labels"
        fb = client.post("/feedback", json={"request_id": r.headers["x-request-id"], "labels": [y for _, y in batch]})
        hits = [p == y for p, (_, y) in zip(labels, batch, strict=True)]
        assert fb.status_code == 200 and fb.json()["correct"] == hits
        seen["stable"][0] += 3
        seen["stable"][1] += sum(hits)
        for p in labels:
            predicted["stable"][str(p)] += 1
        quality = client.get("/quality").json()["variants"]
        text = client.get("/metrics").text
        assert client.post("/feedback", json={"request_id": r.headers["x-request-id"], "label": 1}).status_code == 409
    assert seen["stable"][0] and seen["candidate"][0], seen
    for variant, (n, correct, total, squares) in seen.items():
        q = quality[variant]
        assert (q["labels"], q["correct"]) == (n, correct)
        assert q["accuracy"] == pytest.approx(correct / n)
        rewarded = n - (3 if variant == "stable" else 0)
        assert q["rewards"] == rewarded and q["mean_reward"] == pytest.approx(total / rewarded)
        assert q["predicted_labels"] == dict(sorted(predicted[variant].items()))
        assert sample(text, "router_feedback_labels_total", variant=variant) == n
        assert sample(text, "router_feedback_correct_total", variant=variant) == correct
        assert sample(text, "router_feedback_rewards_total", variant=variant) == rewarded
        assert sample(text, "router_feedback_reward_sum", variant=variant) == pytest.approx(total)
        assert sample(text, "router_feedback_reward_squares_sum", variant=variant) == pytest.approx(squares)
        for label, count in predicted[variant].items():
            assert sample(text, "router_predicted_labels_total", variant=variant, label=label) == count
    check_exposition(text)


def test_shadow_feedback_scores_the_candidates_mirrored_predictions(servers, rows, start_router) -> None:
    router = start_router(routing(servers, kind="shadow", params={"primary": "stable", "shadows": ["candidate"]}))
    n = 60
    answers = []
    with router.client() as client, httpx.Client(base_url=servers["candidate"], timeout=10.0) as direct:
        for row, truth in rows[:n]:
            r = client.post("/v2/models/breast-cancer/infer", json=v2_body(row))
            assert r.status_code == 200 and r.headers["x-variant"] == "stable"
            own = direct.post("/v2/models/breast-cancer/versions/2/infer", json=v2_body(row))
            answers.append((r.headers["x-request-id"], truth, r.json()["outputs"][0]["data"][0],
                            own.json()["outputs"][0]["data"][0]))
        poll(lambda: client.get("/shadow/summary").json()["shadows"].get("candidate", {}).get("compared_requests")
             == n, "every mirror to be compared")
        before = client.get("/quality").json()["variants"]
        assert before["candidate"]["accuracy"] is None and before["stable"]["accuracy"] is None
        assert sum(before["candidate"]["predicted_labels"].values()) == n  # mirrored predictions count
        for rid, truth, _, _ in answers:
            fb = client.post("/feedback", json={"request_id": rid, "label": truth})
            assert fb.status_code == 200, fb.text
            assert "candidate" in fb.json()["shadows_correct"]
        quality = client.get("/quality").json()["variants"]
        text = client.get("/metrics").text
    stable_correct = sum(p == t for _, t, p, _ in answers)
    candidate_correct = sum(c == t for _, t, _, c in answers)
    assert quality["stable"]["labels"] == n and quality["stable"]["correct"] == stable_correct
    assert quality["candidate"]["labels"] == n and quality["candidate"]["correct"] == candidate_correct
    assert quality["candidate"]["accuracy"] == pytest.approx(candidate_correct / n)
    assert quality["candidate"]["rewards"] == 0 and quality["candidate"]["mean_reward"] is None
    assert sample(text, "router_feedback_correct_total", variant="candidate") == candidate_correct
    assert sample(text, "router_feedback_labels_total", variant="candidate") == n
    check_exposition(text)


def test_bandit_refuses_huge_or_nan_rewards_before_any_change(servers, rows, start_router) -> None:
    router = start_router(routing(servers, kind="epsilon_greedy", params={"epsilon": 0.5}))
    with router.client() as client:
        r = client.post("/v2/models/breast-cancer/infer", json=v2_body(rows[0][0]))
        rid = r.headers["x-request-id"]
        state = client.get("/bandit").json()["state"]
        text = client.get("/metrics").text
        for value in ("1e300", "NaN", "Infinity", "1e400"):
            body = '{"request_id": "' + rid + '", "label": 1, "reward": ' + value + "}"
            fb = client.post("/feedback", content=body, headers={"content-type": "application/json"})
            assert fb.status_code == 400 and fb.json()["field"] == "reward", fb.text
        assert client.get("/bandit").json()["state"] == state
        after = client.get("/metrics").text
        variant = r.headers["x-variant"]
        for name in ("router_feedback_labels_total", "router_feedback_rewards_total", "router_feedback_reward_sum"):
            assert sample(after, name, variant=variant) == sample(text, name, variant=variant) == 0
        assert client.post("/feedback", json={"request_id": rid, "reward": 0.25}).status_code == 200
        assert client.get("/bandit").json()["state"]["arms"][r.headers["x-variant"]]["reward_sum"] == 0.25
