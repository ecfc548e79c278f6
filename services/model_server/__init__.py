"""The model server: every model and version of a repository over REST and gRPC (see README.md).

    settings.py      ModelServerSettings (MODEL_SERVER_*)
    config.py        per-model config.yaml: version policy, labels, batching
    repository.py    the registry: scan, load, swap, unload; name + version/label -> loaded version
    batching.py      dynamic batching queue and worker per model version
    dispatch.py      the one inference path of every protocol: resolve, contract, predict, count
    metadata.py      what the Open Inference Protocol front-ends say about the server and a model
    rest.py          codecs: KServe V2 REST, TF Serving REST; /metrics (Starlette)
    grpc_tfs.py      codec: TF Serving gRPC (PredictionService, ModelService)
    grpc_oip.py      codec: Open Inference Protocol gRPC (inference.GRPCInferenceService)
    grpc_server.py   the grpc.aio server: both gRPC codecs on one port, health, reflection
    metrics.py       Prometheus metrics, label children resolved once per version
    __main__.py      the process: REST + gRPC through services.core.http.serve
"""
