"""Prometheus metrics of the consuming application (all three shapes): `app_*`.

The streaming app also exposes the model lifecycle metrics of the models-topic follower it runs
(`model_swaps_total`, `model_rejections_total{reason}`, `model_publish_to_swap_seconds`,
`model_load_seconds`, `model_served_version`, ...). They are defined once, in
services/kafka/metrics.py, because the scoring worker runs the same follower and reports the
same names.
"""

from prometheus_client import Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)

REQUESTS = Counter(
    "app_requests_total",
    "Prediction requests by outcome.",
    ["app", "model_name", "model_version", "status"],
)
REQUEST_SECONDS = Histogram(
    "app_request_seconds",
    "Time to answer a prediction request, parse to response.",
    ["app", "model_name"],
    buckets=LATENCY_BUCKETS,
)
ROWS = Counter("app_predicted_rows_total", "Rows predicted.", ["app", "model_name", "model_version"])
OUT_OF_RANGE = Counter(
    "app_out_of_range_values_total",
    "Feature values outside the training range (plus margin) that were flagged.",
    ["app", "model_name", "feature"],
)
MODEL_INFO = Gauge(
    "app_model_info", "1 for the model version currently served.", ["app", "model_name", "model_version"]
)
