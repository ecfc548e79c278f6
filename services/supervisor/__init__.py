"""The model supervisor: the analysis core (pure, tested decision logic) and the service around it.

    spec.py        rollout specs in YAML, validated with pydantic (steps, bake, rules, limits)
    windows.py     per-variant metric windows; windows from cumulative snapshots, counter resets
    rules.py       candidate vs stable over the same window -> RuleResult (pass/fail/inconclusive)
    sequential.py  always-valid mixture SPRTs (error/misprediction rate, reward), A/B interval
    drift.py       PSI per feature against the model card's training bins, KS, label drift
    decisions.py   Decision records and RolloutState, both JSON (schema documented there)
    analysis.py    the state machine: evaluate(spec, state, evidence, now) -> decision + state

The service (python -m services.supervisor):

    settings.py    SUPERVISOR_* settings
    scrape.py      the router's /metrics (or Prometheus query results) -> per-variant snapshots
    actions.py     the routing an action asks for; PUT /admin/routing with If-Match; conflicts
    service.py     the control loop: read, windows, evaluate, act, record, persist
    app.py         GET /status, /decisions, POST /resume, /metrics, the dashboard routes
    dashboard.py   GET /api/dashboard: what the page shows, gathered from the router and the loop
    metrics.py     the supervisor's Prometheus metrics
    static/        the dashboard page (uPlot vendored, no CDN)
    grafana/       the Grafana dashboard JSON over the same metrics, and the script that builds it

The Kubernetes ConfigMap writes, the drift input and the benchmark are not built yet; see README.md.
"""
