"""Locust: the consuming app's `POST /predict` (embedded, model-as-service, ... shapes alike).

    .venv/bin/python -m locust -f loadtests/locust_app.py --headless --host http://127.0.0.1:8080 \
        --load-profile realtime

The app serves one model, so `--model`/`--model-version` only choose which holdout rows are sent
(same feature layout as the served model). `AppPredictUser` is the abstract base; `AppOneRow` and
`AppBatch64` send 1-row and 64-row requests.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Locust imports a locustfile by path: make `loadtests` and `services` importable from the repo root.
if str(Path(__file__).resolve().parents[1]) not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from locust import FastHttpUser, constant, task  # noqa: E402

from loadtests.locust_support import model_from, profile_shape  # noqa: E402
from loadtests.payloads import app_predict_body, check_app_response  # noqa: E402


class AppPredictUser(FastHttpUser):
    abstract = True
    rows = 1
    wait_time = constant(0)

    def on_start(self) -> None:
        model = model_from(self.environment)
        self.body = app_predict_body(model, self.rows)
        self.label = f"/predict x{self.rows}"

    @task
    def predict(self) -> None:
        with self.client.post(
            "/predict", data=self.body, headers={"Content-Type": "application/json"}, name=self.label,
            catch_response=True,
        ) as response:
            if response.status_code != 200:
                response.failure(f"HTTP {response.status_code}: {(response.text or '')[:200]}")
                return
            try:
                check_app_response(response.content, self.rows)
            except ValueError as exc:
                response.failure(str(exc))


class AppOneRow(AppPredictUser):
    rows = 1


class AppBatch64(AppPredictUser):
    rows = 64


Profile = profile_shape(one_row=AppOneRow, batch=AppBatch64)
