# syntax=docker/dockerfile:1
# One image for every service of serving-patterns; the entry point is chosen by the command:
#
#   python3 -m services.apps.embedded      embedded app            (EMBEDDED_*)
#   python3 -m services.apps.remote        model-as-service app    (REMOTE_*)
#   python3 -m services.apps.streaming     model-as-data app       (STREAMING_*)
#   python3 -m services.model_server       model server            (MODEL_SERVER_*)
#   python3 -m services.router             router                  (ROUTER_*)
#   python3 -m services.kafka.scoring      stream-scoring worker   (SCORING_*)
#   python3 -m services.kafka.publisher    model publisher (a Job)
#
# Build: `make image` (buildah bud if installed, else docker build), after `make models`: the model
# repository (models/repository) is baked in. BASE_IMAGE can be any Debian-like image with Python
# 3.11 and the venv module (the official slim image has python3 in /usr/local/bin, a Debian
# python3 + python3-venv base has it in /usr/bin: python3 is called by PATH in both stages, and
# both stages use the same base, so the venv's interpreter link is valid in the runtime stage).
#
# Runs as the numeric non-root user 10001 with a read-only root file system: nothing is written
# under /app. The services' only writes (the router's state file and routing-config write-back,
# temp files) go to /var/run/serving-patterns and /tmp, which the Helm chart mounts as emptyDir
# volumes; the defaults below point there too, so `docker run --read-only --tmpfs ...` works.
ARG BASE_IMAGE=python:3.11-slim-bookworm

# ---------------------------------------------------------------------------------------------
FROM ${BASE_IMAGE} AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PYTHONDONTWRITEBYTECODE=1
WORKDIR /build
COPY pyproject.toml requirements.lock ./
# Only the runtime dependencies (pyproject's [project.dependencies]), each resolved to the exact
# version pinned in requirements.lock (the lock pins the whole tree, dev and training tools too;
# none of those, and no TensorFlow, goes into the image).
RUN python3 -m venv /opt/venv \
 && python3 -c "import tomllib; deps = tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']; open('runtime.txt', 'w').write(chr(10).join(deps) + chr(10))" \
 && /opt/venv/bin/python -m pip install --constraint requirements.lock --requirement runtime.txt \
 && /opt/venv/bin/python -m pip check \
 && if /opt/venv/bin/python -m pip show tensorflow tensorflow-cpu >/dev/null 2>&1; then echo "TensorFlow must not be in the image" >&2; exit 1; fi
COPY services /app/services
COPY models/repository /app/models/repository
# Byte-compile now: at run time the file system is read-only.
RUN test -f /app/models/repository/breast-cancer/1/model-card.json \
 || { echo "models/repository is missing or incomplete: run 'make models' before building" >&2; exit 1; } \
 && /opt/venv/bin/python -m compileall -q /app/services /opt/venv/lib

# ---------------------------------------------------------------------------------------------
FROM ${BASE_IMAGE} AS runtime
ARG APP_VERSION=0.1.0
LABEL org.opencontainers.image.title="serving-patterns" \
      org.opencontainers.image.description="Model-serving patterns: embedded, model-as-service, model-as-data, shadow, canary, A/B, bandits, stream scoring" \
      org.opencontainers.image.version="${APP_VERSION}"
# A passwd entry for 10001 (getpass.getuser() in the publisher needs one); group 0 as OpenShift expects.
RUN if command -v useradd >/dev/null 2>&1; then \
      useradd --uid 10001 --gid 0 --home-dir /tmp --no-create-home --shell /usr/sbin/nologin app; \
    else echo "app:x:10001:0::/tmp:/usr/sbin/nologin" >> /etc/passwd; fi \
 && mkdir -p /var/run/serving-patterns && chown 10001:0 /var/run/serving-patterns && chmod 0770 /var/run/serving-patterns
COPY --from=builder /opt/venv /opt/venv
COPY --from=builder /app /app
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONPATH=/app \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    TMPDIR=/tmp \
    EMBEDDED_HOST=0.0.0.0 REMOTE_HOST=0.0.0.0 STREAMING_HOST=0.0.0.0 MODEL_SERVER_HOST=0.0.0.0 \
    ROUTER_HOST=0.0.0.0 SCORING_HOST=0.0.0.0 \
    EMBEDDED_MODEL_REPOSITORY=/app/models/repository REMOTE_MODEL_REPOSITORY=/app/models/repository \
    STREAMING_MODEL_REPOSITORY=/app/models/repository MODEL_SERVER_MODEL_REPOSITORY=/app/models/repository \
    SCORING_MODEL_REPOSITORY=/app/models/repository \
    ROUTER_STATE_FILE=/var/run/serving-patterns/router-state.json
WORKDIR /app
USER 10001:0
# Every entry point must import (and so start) with only the runtime dependencies.
RUN python3 -c "import services.apps.embedded, services.apps.remote, services.apps.streaming, services.model_server.__main__, services.router.__main__, services.kafka.scoring, services.kafka.publisher, services.supervisor.__main__"
EXPOSE 8080 8500 8501 8090
CMD ["python3", "-m", "services.apps.embedded"]
