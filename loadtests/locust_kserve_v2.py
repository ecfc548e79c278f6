"""Locust: KServe V2 / Open Inference Protocol REST (`POST /v2/models/{m}/versions/{v}/infer`).

Works against anything speaking V2: the model server (`--host http://127.0.0.1:8501`), the router
of the routed patterns (`--unversioned`, and `--feedback reward|label` for A/B, bandit, canary),
MLServer, the FastAPI baseline.

    .venv/bin/python -m locust -f loadtests/locust_kserve_v2.py --headless --host http://127.0.0.1:8501 \
        --model wine --model-version 2 --load-profile realtime

`KServeV2User` is the abstract base: it sends the holdout rows in turn (one sample per request),
checks the answer and counts its accuracy (and, behind the router, the variant that answered:
`x-variant`). `V2OneRow` sends one row per request, `V2Batch` client-side batches of `--batch-rows`.
With `--feedback`, each answer is followed by `POST /feedback` with its `x-feedback-token` (else
`x-request-id`; the token is valid on any router replica): `reward` sends 1 when every row was
right (else 0), `label` the true label(s). Each request carries a fresh `x-user-id`, so sticky
splits (canary, A/B) spread requests, not just Locust's few users.
"""

from __future__ import annotations

import itertools
import sys
from pathlib import Path

# Locust imports a locustfile by path: make `loadtests` and `services` importable from the repo root.
if str(Path(__file__).resolve().parents[1]) not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from locust import FastHttpUser, constant, task  # noqa: E402

from loadtests.locust_support import QUALITY, Samples, model_from, option, profile_shape, rows_of  # noqa: E402
from loadtests.payloads import check_v2_response, feedback_id, v2_infer_body, v2_infer_path  # noqa: E402

_user_ids = itertools.count()


def feedback_body(kind: str, request_id: str, truth: list[int], right: int) -> dict:
    if kind == "reward":
        return {"request_id": request_id, "reward": 1 if right == len(truth) else 0}
    return {"request_id": request_id, "label": truth[0]} if len(truth) == 1 else {"request_id": request_id,
                                                                                   "labels": truth}


class KServeV2User(FastHttpUser):
    """Closed loop: each user sends its next request as soon as the previous one is answered."""

    abstract = True
    batch = False
    wait_time = constant(0)

    def on_start(self) -> None:
        env = self.environment
        model = model_from(env)
        self.rows = rows_of(env, self.batch)
        self.ceiling = option(env, "ceiling", False)
        self.feedback = option(env, "feedback", "none")
        if option(env, "unversioned", False):
            self.path = f"/v2/models/{model.name}/infer"
        else:
            self.path = v2_infer_path(model)
        if self.ceiling:
            self.path = "/ceiling"
        self.samples = Samples(model, self.rows, v2_infer_body, start=id(self))
        self.label = f"V2 infer {model.name}:{'*' if option(env, 'unversioned', False) else model.version} x{self.rows}"

    @task
    def infer(self) -> None:
        body, truth = self.samples.next()
        headers = {"Content-Type": "application/json", "x-user-id": f"u{next(_user_ids)}"}
        with self.client.post(self.path, data=body, headers=headers, name=self.label,
                              catch_response=True) as response:
            if self.ceiling:
                return  # the trivial endpoint: only the round trip counts
            if response.status_code != 200:
                response.failure(f"HTTP {response.status_code}: {(response.text or '')[:200]}")
                return
            try:
                predicted = check_v2_response(response.content, self.rows)
            except ValueError as exc:
                response.failure(str(exc))
                return
            right = QUALITY.add(predicted, truth, response.headers.get("x-variant"))
            request_id = feedback_id(response.headers)
        if self.feedback != "none" and request_id:
            with self.client.post("/feedback", json=feedback_body(self.feedback, request_id, truth, right),
                                  name="POST /feedback", catch_response=True) as fb:
                if fb.status_code == 200:
                    QUALITY.feedback["sent"] += 1
                else:  # 409/410 are the router's to explain; a refused feedback is a failure here
                    QUALITY.feedback["refused"] += 1
                    fb.failure(f"feedback HTTP {fb.status_code}: {(fb.text or '')[:200]}")


class V2OneRow(KServeV2User):
    batch = False


class V2Batch(KServeV2User):
    """Client-side batches: --batch-rows rows per request (default 64)."""

    batch = True


Profile = profile_shape(one_row=V2OneRow, batch=V2Batch)
