"""Router replicas that share what they learn: 3 real router processes, real model servers, a real
Kafka broker (tests/integration/kafka_fixtures.py), one token key, one feedback topic per test.

Requests go round-robin over the replicas and each request's feedback always goes to a
*different* replica than the one that answered it. Stated bound for convergence: every replica's
reward-derived state (per-arm reward count and sum, Bernoulli posterior) is *identical* to the
totals of the acknowledged rewards — what a single router fed the same rewards would hold — and
reward sums agree to 1e-9. Arm pulls are each replica's own decisions and are not shared (README).
"""

from __future__ import annotations

import concurrent.futures
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import yaml
from kafka import KafkaConsumer, TopicPartition
from prometheus_client.parser import text_string_to_metric_families

from services.kafka.messages import ensure_key_file
from services.router.tokens import is_token
from services.stack.demo_routed import v2_body
from services.stack.process import ServiceProcess
from services.stack.routed import router_process

REPLICAS = 3
PRIOR = 1.0


def routing(urls: dict[str, str]) -> dict[str, Any]:
    return {
        "name": "replicas",
        "model": "breast-cancer",
        "variants": {
            "stable": {"url": urls["stable"], "model": "breast-cancer", "version": 1, "timeout_s": 5.0},
            "candidate": {"url": urls["candidate"], "model": "breast-cancer", "version": 2, "timeout_s": 5.0},
        },
        "policy": {"kind": "thompson", "params": {"reward": "bernoulli", "prior_alpha": PRIOR, "prior_beta": PRIOR}},
        "fallback": "stable",
        "feedback": {"ttl_s": 3600, "max_pending": 100000},
    }


class Replicas:
    def __init__(self, tmp: Path, bootstrap: str, start_service: Callable[..., ServiceProcess],
                 cfg: dict[str, Any]) -> None:
        self.tmp = tmp
        self.start_service = start_service
        self.config_path = tmp / "routing.yaml"
        self.config_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        self.env = {"ROUTER_TOKEN_KEY_FILE": str(ensure_key_file(tmp / "token.key")),
                    "ROUTER_KAFKA_BOOTSTRAP_SERVERS": bootstrap,
                    "ROUTER_FEEDBACK_TOPIC": f"feedback-test-{os.getpid()}-{time.time_ns()}",
                    "ROUTER_STATE_SAVE_INTERVAL_S": "1", "ROUTER_CONFIG_POLL_S": "0"}
        self.procs: list[ServiceProcess] = []
        self.urls: list[str] = []

    @property
    def topic(self) -> str:
        return self.env["ROUTER_FEEDBACK_TOPIC"]

    def start(self, i: int, port: int | None = None) -> ServiceProcess:
        proc, url = router_process(self.config_path, self.tmp / f"state-{i}.json", name=f"router-{i}-{time.time_ns()}",
                                   port=port, ROUTER_REPLICA_ID=f"router-{i}", **self.env)
        self.start_service(proc, 120)
        if i < len(self.procs):
            self.procs[i], self.urls[i] = proc, url
        else:
            self.procs.append(proc)
            self.urls.append(url)
        return proc

    def state(self, client: httpx.Client, i: int) -> dict[str, Any]:
        return client.get(f"{self.urls[i]}/policy").json()["state"]


def totals(state: dict[str, Any]) -> dict[str, tuple[int, float]]:
    return {name: (arm["rewards"], arm["reward_sum"]) for name, arm in state["arms"].items()}


def expected(rewards: dict[str, tuple[str, int]]) -> dict[str, tuple[int, float]]:
    out = {"stable": (0, 0.0), "candidate": (0, 0.0)}
    for variant, reward in rewards.values():
        n, s = out[variant]
        out[variant] = (n + 1, s + reward)
    return out


def wait_for(check: Callable[[], bool], timeout_s: float = 90.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def metric(text: str, name: str, **labels: str) -> float:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return 0.0


def topic_request_ids(bootstrap: str, topic: str) -> list[str]:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                             auto_offset_reset="earliest")
    try:
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        assert tps, f"topic {topic} has no partitions"
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        ends = consumer.end_offsets(tps)
        ids = []
        deadline = time.monotonic() + 60
        while any(consumer.position(tp) < ends[tp] for tp in tps) and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=500).values():
                ids.extend(orjson.loads(r.value)["request_id"] for r in records)
        return ids
    finally:
        consumer.close()


@pytest.fixture
def replicas(kafka_bootstrap_servers, servers, start_service, tmp_path) -> Replicas:
    group = Replicas(tmp_path, kafka_bootstrap_servers, start_service, routing(servers))
    for i in range(REPLICAS):
        group.start(i)
    return group


def test_feedback_on_other_replicas_converges_every_replica(replicas, rows) -> None:
    acknowledged: dict[str, tuple[str, int]] = {}
    with httpx.Client(timeout=30) as client:
        for i, (row, label) in enumerate(rows):
            answered_by = i % REPLICAS
            r = client.post(f"{replicas.urls[answered_by]}/v2/models/breast-cancer/infer", json=v2_body(row))
            assert r.status_code == 200, r.text
            rid = r.headers["x-request-id"]
            assert is_token(rid) and r.json()["request_id"] == rid
            reward = int(r.json()["outputs"][0]["data"][0] == label)
            fb = client.post(f"{replicas.urls[(answered_by + 1) % REPLICAS]}/feedback",
                             json={"request_id": rid, "reward": reward})
            assert fb.status_code in (200, 202), fb.text
            assert fb.json()["acknowledged"] is True
            acknowledged[rid] = (r.headers["x-variant"], reward)

        want = expected(acknowledged)
        wait_for(lambda: all(totals(replicas.state(client, i)) == want for i in range(REPLICAS)), what="convergence")
        states = [replicas.state(client, i) for i in range(REPLICAS)]
        for state in states:
            for name, (n, s) in want.items():
                assert state["arms"][name]["rewards"] == n
                assert abs(state["arms"][name]["reward_sum"] - s) <= 1e-9
                assert state["posterior"][name] == pytest.approx({"alpha": PRIOR + s, "beta": PRIOR + n - s},
                                                                 abs=1e-9)
        assert states[0]["posterior"] == states[1]["posterior"] == states[2]["posterior"]

        # the same reward sent to two other replicas at once: applied once everywhere, one caller told 409
        r = client.post(f"{replicas.urls[0]}/v2/models/breast-cancer/infer", json=v2_body(rows[0][0]))
        rid, variant = r.headers["x-request-id"], r.headers["x-variant"]
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            answers = list(pool.map(lambda u: httpx.post(f"{u}/feedback", json={"request_id": rid, "reward": 1},
                                                         timeout=30), replicas.urls[1:]))
        codes = sorted(a.status_code for a in answers)
        assert codes in ([200, 409], [202, 409]), [a.text for a in answers]
        acknowledged[rid] = (variant, 1)
        want = expected(acknowledged)
        wait_for(lambda: all(totals(replicas.state(client, i)) == want for i in range(REPLICAS)), what="dedupe")

        # forged and altered ids are refused by name, on any replica; nothing is learned from them
        forged = rid[:-3] + ("AAA" if not rid.endswith("AAA") else "BBB")
        r = client.post(f"{replicas.urls[2]}/feedback", json={"request_id": forged, "reward": 1})
        assert r.status_code == 400 and r.json()["code"] == "bad_token" and "signature" in r.json()["error"]
        r = client.post(f"{replicas.urls[2]}/feedback", json={"request_id": "made-up", "reward": 1})
        assert r.status_code == 404
        for i in range(REPLICAS):
            text = client.get(f"{replicas.urls[i]}/metrics").text
            assert metric(text, "router_feedback_events_total", outcome="applied") == len(acknowledged)
            assert metric(text, "router_feedback_caught_up") == 1
        assert totals(replicas.state(client, 0)) == want


def test_a_replica_killed_under_load_loses_no_acknowledged_reward(replicas, rows, kafka_bootstrap_servers) -> None:
    acknowledged: dict[str, tuple[str, int]] = {}
    attempted: set[str] = set()
    victim = 1
    alive = list(range(REPLICAS))
    with httpx.Client(timeout=30) as client:
        for i in range(240):
            row, label = rows[i % len(rows)]
            if i == 80:  # under load: SIGKILL, no drain, no state save
                os.killpg(replicas.procs[victim].popen.pid, signal.SIGKILL)
            answered_by = alive[i % len(alive)]
            try:
                r = client.post(f"{replicas.urls[answered_by]}/v2/models/breast-cancer/infer", json=v2_body(row))
            except httpx.TransportError:
                alive.remove(answered_by)
                continue
            assert r.status_code == 200
            rid = r.headers["x-request-id"]
            reward = int(r.json()["outputs"][0]["data"][0] == label)
            to = alive[(alive.index(answered_by) + 1) % len(alive)]
            attempted.add(rid)
            try:
                fb = client.post(f"{replicas.urls[to]}/feedback", json={"request_id": rid, "reward": reward})
            except httpx.TransportError:  # the victim died with the call: not acknowledged
                alive.remove(to)
                continue
            assert fb.status_code in (200, 202), fb.text
            acknowledged[rid] = (r.headers["x-variant"], reward)
        assert victim not in alive and len(acknowledged) > 150

        on_topic = topic_request_ids(kafka_bootstrap_servers, replicas.topic)
        assert set(acknowledged) <= set(on_topic), "an acknowledged reward is missing from the topic"
        assert set(on_topic) <= attempted
        survivors = [i for i in range(REPLICAS) if i != victim]
        n_applied = len(set(on_topic))
        wait_for(lambda: all(sum(n for n, _ in totals(replicas.state(client, i)).values()) == n_applied
                             for i in survivors), what="survivors applied every event on the topic")
        want = expected(acknowledged)
        for i in survivors:
            got = totals(replicas.state(client, i))
            for name, (n, _) in want.items():  # every acknowledged reward is in; at most the unacknowledged extra
                assert got[name][0] >= n and got[name][0] - n <= n_applied - len(acknowledged)

        # the killed replica comes back (its state file is up to a second old) and catches up before ready
        replicas.start(victim)
        reference = totals(replicas.state(client, survivors[0]))
        assert totals(replicas.state(client, victim)) == reference
        text = client.get(f"{replicas.urls[victim]}/metrics").text
        assert metric(text, "router_feedback_caught_up") == 1


def test_failed_pulls_are_scored_on_every_replica(kafka_bootstrap_servers, servers, start_service, tmp_path,
                                                  rows) -> None:
    cfg = routing(servers)
    cfg["variants"]["dead"] = {"url": "http://127.0.0.1:9", "model": "breast-cancer", "version": 1, "timeout_s": 2.0}
    cfg["outlier_detection"] = {"enabled": False}
    cfg["feedback"]["failure_reward"] = 0.0
    group = Replicas(tmp_path, kafka_bootstrap_servers, start_service, cfg)
    for i in range(REPLICAS):
        group.start(i)
    with httpx.Client(timeout=30) as client:
        for i in range(90):
            r = client.post(f"{group.urls[i % REPLICAS]}/v2/models/breast-cancer/infer",
                            json=v2_body(rows[i % len(rows)][0]))
            assert r.status_code == 200 and r.headers["x-variant"] != "dead"

        def dead_arms() -> list[tuple[int, int]]:
            arms = [group.state(client, i)["arms"]["dead"] for i in range(REPLICAS)]
            return [(a["pulls"], a["rewards"]) for a in arms]

        # each replica pulled "dead" on its own; every failure is scored (reward 0) on every replica
        wait_for(lambda: len({rewards for _, rewards in dead_arms()}) == 1
                 and dead_arms()[0][1] == sum(pulls for pulls, _ in dead_arms()), what="failures scored everywhere")
        pulls = sum(p for p, _ in dead_arms())
        assert pulls > 0
        for i in range(REPLICAS):
            assert group.state(client, i)["posterior"]["dead"] == {"alpha": PRIOR, "beta": PRIOR + pulls}
