"""The serving core every service shares: model artifacts and their one lifecycle, input
contracts, errors, settings, logging and the HTTP plumbing that maps errors to the wire.

| module | concern |
|---|---|
| `card.py` | `ModelCard`: the contract a model artifact carries (`model-card.json`) |
| `runtime.py` | `OnnxModel`: an ONNX Runtime session, checked against its card; async load / predict / unload |
| `lifecycle.py` | the one model lifecycle: load, verify, integration check, warm up, ready, swap, drain, unload |
| `contract.py` | `InputContract`: rows or tensors -> a validated float32 matrix; range policy; micro-batches |
| `repository.py` | finding model versions in `<repo>/<model>/<version>/`; the default (gate-passing) version |
| `errors.py` | the one error hierarchy, each error with its HTTP status, gRPC code and `code` |
| `grpc_status.py` | `ServingError` <-> gRPC status, in one place |
| `http.py` | JSON bodies, errors to HTTP responses, `/metrics`, `serve()` (uvicorn, graceful SIGTERM) |
| `connections.py` | bounds on HTTP connections: header timeout, header size, connections per process |
| `files.py` | `atomic_write`: state and config files replaced atomically (temp + fsync + rename) |
| `settings.py` | the settings base classes every service's pydantic-settings class extends |
| `logging.py` | JSON log lines |
"""
