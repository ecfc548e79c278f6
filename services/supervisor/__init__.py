"""The model supervisor's analysis core: pure, tested decision logic for rollouts (no I/O yet).

    spec.py        rollout specs in YAML, validated with pydantic (steps, bake, rules, limits)
    windows.py     per-variant metric windows; windows from cumulative snapshots, counter resets
    rules.py       candidate vs stable over the same window -> RuleResult (pass/fail/inconclusive)
    sequential.py  always-valid mixture SPRTs (error/misprediction rate, reward), A/B interval
    drift.py       PSI per feature against the model card's training bins, KS, label drift
    decisions.py   Decision records and RolloutState, both JSON (schema documented there)
    analysis.py    the state machine: evaluate(spec, state, evidence, now) -> decision + state

The service loop, the router / Kubernetes actions, the dashboard and the benchmark are not
built yet; see README.md for how they plug in.
"""
