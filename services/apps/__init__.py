"""The consuming application in its three shapes, one HTTP API over different backends.

| module | concern |
|---|---|
| `api.py` | the HTTP API every shape serves: /predict, /healthz, /readyz, /model, /metrics |
| `backend.py` | `Backend` (where predictions come from), `LocalBackend`, `PredictionSink`, `ContractCache` |
| `embedded.py` | `python -m services.apps.embedded`: the model in-process (pattern embedded) |
| `remote.py` | `python -m services.apps.remote`: calls the model server (pattern model-as-service) |
| `hotswap.py` | the backend serving whatever version the models topic brought (over services/kafka/follower.py) |
| `streaming.py` | `python -m services.apps.streaming`: the app with models as data (pattern model-as-data) |
| `prediction_log.py` | the optional prediction log: every answer as an event on the `predictions` topic |
| `feedback.py` | optional `POST /feedback`: labels of answered requests onto the `labels` topic (online learning) |
| `v2.py` | optional KServe V2 REST face of the streaming app, so the router can route to it |
| `metrics.py` | the app's Prometheus metrics (`app_*`) |
"""
