"""Router replicas on the real cluster: the bandit pattern with the demo Kafka broker runs 2 router
pods (router.replicas auto), and through the router's Service any pod takes feedback for a request
any pod answered; both pods' bandit state then holds every reward (the feedback topic).

A client pod sends each inference request and then its feedback through the Service (kube-proxy
picks a pod per connection, so feedback regularly lands on the pod that did not answer); the
token's nonce (the answering process's id prefix) shows that both pods answered.
"""

from __future__ import annotations

import json
import time

import pytest
from kubernetes import client

from tests.cluster import test_chart_on_cluster as chart
from tests.cluster.chart_support import hardened_pod_spec, v2_body, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(1800)]  # image build + cluster start + a Kafka install

# the chart tests' fixtures: images in the node, API clients, helm, deploy-into-a-namespace
built_images, chart_cluster, kube, core, apps, helm, deploy = (
    chart.built_images, chart.chart_cluster, chart.kube, chart.core, chart.apps, chart.helm, chart.deploy)

REQUESTS = 60

CLIENT = r"""
import json, sys, time, urllib.error, urllib.request
spec = json.loads(sys.argv[1])

def post(url, body):
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                 headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, dict(resp.headers), json.loads(resp.read())
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), {"error": e.read()[:300].decode(errors="replace")}

deadline = time.time() + 60
while True:  # warm-up: the Service may not be programmed into kube-proxy yet
    try:
        status, _, _ = post(spec["infer"], spec["body"])
        if status == 200:
            break
    except Exception:
        pass
    if time.time() > deadline:
        sys.exit(2)
    time.sleep(0.5)
for i in range(spec["n"]):
    status, headers, body = post(spec["infer"], spec["body"])
    rid = headers.get("x-request-id") or headers.get("X-Request-Id")
    fb_status, _, fb = post(spec["feedback"], {"request_id": rid, "reward": i % 2})
    print(json.dumps({"status": status, "rid": rid, "fb_status": fb_status, "fb": fb}), flush=True)
for ip in spec["pods"]:
    with urllib.request.urlopen(f"http://{ip}:8080/policy", timeout=10) as resp:
        print(json.dumps({"pod": ip, "state": json.loads(resp.read())["state"]}), flush=True)
print(json.dumps({"done": True}), flush=True)
"""


def run_client(core: client.CoreV1Api, namespace: str, spec: dict) -> list[dict]:
    name = f"replicas-client-{int(time.time() * 1000) % 10**8}"
    core.create_namespaced_pod(namespace, hardened_pod_spec(name, ["python3", "-c", CLIENT, json.dumps(spec)]))
    phase = wait_for(f"client pod {name} to finish", lambda: (
        p := core.read_namespaced_pod(name, namespace).status.phase) in ("Succeeded", "Failed") and p, 300)
    logs = core.read_namespaced_pod_log(name, namespace, container="client")
    lines = [json.loads(ln) for ln in (logs or "").splitlines() if ln.startswith("{")]
    assert phase == "Succeeded" and lines and lines[-1] == {"done": True}, f"{phase}: {logs}"
    return lines[:-1]


def test_feedback_through_the_service_is_taken_by_any_router_pod(deploy, chart_cluster, kube, core) -> None:
    rel = deploy("bandit", "kafka.enabled=true", release="bandit-replicas")
    pods_of = chart.check_release(chart_cluster, kube, rel)
    routers = pods_of[rel.resource("router")]
    assert len(routers) == 2, [p.metadata.name for p in routers]
    ips = [p.status.pod_ip for p in routers]
    lines = run_client(core, rel.namespace, {
        "infer": rel.svc_url("router", 8080, "/v2/models/breast-cancer/infer"),
        "feedback": rel.svc_url("router", 8080, "/feedback"),
        "body": v2_body(), "n": REQUESTS, "pods": ips})
    answers = [x for x in lines if "rid" in x]
    states = [x for x in lines if "pod" in x]
    assert len(answers) == REQUESTS and all(a["status"] == 200 for a in answers), answers
    assert all(a["fb_status"] in (200, 202) and a["fb"]["acknowledged"] for a in answers), answers
    nonces = {a["rid"].split("~")[5].split("-")[0] for a in answers}  # rt1~variant~v~e~t~<prefix>-<n>~labels~mac
    assert len(nonces) == 2, f"both router pods should have answered: {nonces}"
    rewards = sum(i % 2 for i in range(REQUESTS))

    def totals(state: dict) -> tuple[int, float]:
        return (sum(a["rewards"] for a in state["arms"].values()), sum(a["reward_sum"] for a in state["arms"].values()))

    assert len(states) == 2
    # the client read /policy right after its last feedback: each pod applies events within seconds
    if not all(totals(s["state"]) == (REQUESTS, rewards) for s in states):
        again = wait_for("both router pods to apply every reward", lambda: (
            lines2 := [x for x in run_client(core, rel.namespace, {
                "infer": rel.svc_url("router", 8080, "/v2/models/breast-cancer/infer"),
                "feedback": rel.svc_url("router", 8080, "/feedback"), "body": v2_body(), "n": 0, "pods": ips})
                if "pod" in x]) and all(totals(s["state"]) == (REQUESTS, rewards) for s in lines2) and lines2, 120)
        states = again
    for s in states:
        assert totals(s["state"]) == (REQUESTS, rewards), s
    assert states[0]["state"]["posterior"] == states[1]["state"]["posterior"]
