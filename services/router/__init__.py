"""The router: one front door (KServe V2 REST, TF Serving gRPC, Open Inference Protocol gRPC) routing
each inference request to a model variant.

Requests flow one way: codec -> dispatcher -> variant -> codec; decisions, metrics, mirrors and
state leave to the side. One module per concern:

    __main__.py        entry point: settings, config check before binding, serve
    settings.py        process-level ROUTER_* settings (ports, admin token, state file, pools)
    config.py          the routing config YAML: validated schema, content hash
    table.py           the immutable route table of one config version (variants, pools, metric children)
    control.py         control plane: config file load/reload, admin PUT with versions, state carry-over
    state.py           the state file, written atomically
    dispatch.py        the one inference path for every protocol: decide, call, fail over, settle
    ejection.py        consecutive-failure outlier ejection
    feedback.py        answered requests awaiting feedback, and applying POST /feedback (every policy)
    tokens.py          signed request ids (feedback tokens) any replica verifies
    feedback_log.py    the feedback topic on Kafka: replicas share rewards, each applied once
    labels_out.py      the labels topic: accepted label feedback for the online trainer, by upstream request id
    quality.py         per-variant quality: predicted labels, accuracy and rewards from feedback
    shadow.py          the shadow mirror: bounded queue, workers, answer comparison
    tap.py             the input tap: a bounded per-variant sample of request inputs (drift checks)
    upstream.py        the lean HTTP/1.1 client with keep-alive pools (REST variants)
    grpc_upstream.py   gRPC channels to variants and reading an upstream's status
    rest.py            REST codec: the ASGI app, KServe V2 inference and metadata, health, metrics
    grpc_predict.py    gRPC codec: TF Serving PredictionService/Predict
    grpc_oip.py        gRPC codec: Open Inference Protocol inference.GRPCInferenceService (KServe V2)
    grpc_front.py      the gRPC port (ROUTER_GRPC_PORT) hosting the gRPC codecs
    admin.py           operator API: bearer auth, feedback, quality, reports, shadow summary, routing config
    service.py         the parts wired together, started and stopped
    errors.py          the router's leaves of the error hierarchy (403, 409, 412, 502)
    metrics.py         Prometheus metrics and per-variant metric children
    policies/          routing policies behind RoutingPolicy, one module per policy

See services/router/README.md for the API, the config and the measured cost.
"""
