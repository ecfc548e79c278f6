"""Locust: KServe V2 / Open Inference Protocol REST (`POST /v2/models/{m}/versions/{v}/infer`).

Works against anything speaking V2: the model server (`--host http://127.0.0.1:8501`), MLServer,
the FastAPI baseline.

    .venv/bin/python -m locust -f loadtests/locust_kserve_v2.py --headless --host http://127.0.0.1:8501 \
        --model wine --model-version 2 --load-profile realtime

`KServeV2User` is the abstract base (one request body per user, built once from the holdout set);
`V2OneRow` and `V2Batch64` send 1-row and 64-row requests.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Locust imports a locustfile by path: make `loadtests` and `services` importable from the repo root.
if str(Path(__file__).resolve().parents[1]) not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from locust import FastHttpUser, constant, task  # noqa: E402

from loadtests.locust_support import model_from, profile_shape  # noqa: E402
from loadtests.payloads import check_v2_response, v2_infer_body, v2_infer_path  # noqa: E402


class KServeV2User(FastHttpUser):
    """Closed loop: each user sends its next request as soon as the previous one is answered."""

    abstract = True
    rows = 1
    wait_time = constant(0)

    def on_start(self) -> None:
        model = model_from(self.environment)
        self.path = v2_infer_path(model)
        self.body = v2_infer_body(model, self.rows)
        self.label = f"V2 infer {model.name}:{model.version} x{self.rows}"

    @task
    def infer(self) -> None:
        with self.client.post(
            self.path, data=self.body, headers={"Content-Type": "application/json"}, name=self.label,
            catch_response=True,
        ) as response:
            if response.status_code != 200:
                response.failure(f"HTTP {response.status_code}: {(response.text or '')[:200]}")
                return
            try:
                check_v2_response(response.content, self.rows)
            except ValueError as exc:
                response.failure(str(exc))


class V2OneRow(KServeV2User):
    rows = 1


class V2Batch64(KServeV2User):
    rows = 64


Profile = profile_shape(one_row=V2OneRow, batch=V2Batch64)
