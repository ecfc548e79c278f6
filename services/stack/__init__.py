"""Development tools only: the local process stack, the local Kafka broker and Kubernetes cluster,
the demos, and the fetchers of helper binaries. No service imports this package.

| module | concern |
|---|---|
| `__main__.py` | `python -m services.stack up|down|status|publish`: the CLI behind `make up/down/status` |
| `runner.py` | start a pattern's processes in order, record `.run/endpoints.json`, stop exactly those |
| `patterns.py` | what each pattern runs locally: processes, settings (env), endpoints |
| `routed.py` | the routed patterns: a model server per variant plus the router, with a local routing config |
| `process.py` | `ServiceProcess` (start, wait ready, stop a real process), `PatternStack`, free ports |
| `paths.py` | `.run/` inside the checkout; build caches outside it (`~/.cache/serving-patterns`) |
| `kafka_broker.py` | fetch (Maven Central), start and stop a real single-node KRaft broker |
| `kafka_tools.py` | read a topic, send scoring requests: helpers for the demo, benchmarks and tests |
| `demo.py` | `make demo`: every pattern, one table |
| `demo_common.py` | the result row, the holdout set, one request per row |
| `demo_kafka.py` | the model-as-data and stream-scoring scenarios |
| `demo_routed.py` | the shadow, canary, A/B and bandit scenarios through the router |
| `promtool.py` | build Prometheus's `promtool` from the Go module proxy; check metrics text |
| `helm.py` | fetch helm 3 and helm 4; generate the chart's `values.schema.json` from the settings classes |
| `cluster/` | build and run a real single-node Kubernetes cluster (see its README) |
"""
