"""Locust: the consuming app's `POST /predict` (embedded, model-as-service, model-as-data shapes alike).

    .venv/bin/python -m locust -f loadtests/locust_app.py --headless --host http://127.0.0.1:8080 \
        --load-profile realtime

The app serves one model; `--model`/`--model-version` choose whose holdout rows (and true labels)
are sent (same feature layout as the served model). `AppPredictUser` is the abstract base (holdout
rows in turn, answers checked, accuracy counted); `AppOneRow` sends one row per request, `AppBatch`
client-side batches of `--batch-rows` rows.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Locust imports a locustfile by path: make `loadtests` and `services` importable from the repo root.
if str(Path(__file__).resolve().parents[1]) not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from locust import FastHttpUser, constant, task  # noqa: E402

from loadtests.locust_support import QUALITY, Samples, model_from, option, profile_shape, rows_of  # noqa: E402
from loadtests.payloads import app_predict_body, check_app_response  # noqa: E402


class AppPredictUser(FastHttpUser):
    abstract = True
    batch = False
    wait_time = constant(0)

    def on_start(self) -> None:
        model = model_from(self.environment)
        self.rows = rows_of(self.environment, self.batch)
        self.ceiling = option(self.environment, "ceiling", False)
        self.path = "/ceiling" if self.ceiling else "/predict"
        self.samples = Samples(model, self.rows, app_predict_body, start=id(self))
        self.label = f"/predict x{self.rows}"

    @task
    def predict(self) -> None:
        body, truth = self.samples.next()
        with self.client.post(
            self.path, data=body, headers={"Content-Type": "application/json"}, name=self.label,
            catch_response=True,
        ) as response:
            if self.ceiling:
                return
            if response.status_code != 200:
                response.failure(f"HTTP {response.status_code}: {(response.text or '')[:200]}")
                return
            try:
                QUALITY.add(check_app_response(response.content, self.rows), truth)
            except ValueError as exc:
                response.failure(str(exc))


class AppOneRow(AppPredictUser):
    batch = False


class AppBatch(AppPredictUser):
    """Client-side batches: --batch-rows rows per request (default 64)."""

    batch = True


Profile = profile_shape(one_row=AppOneRow, batch=AppBatch)
