# syntax=docker/dockerfile:1
#
# cirelay's image: gunicorn serving app.asgi (its event-loop worker) on :8080, as uid 10001.
#
#   docker build -t cirelay --build-arg REVISION="$(git rev-parse HEAD)" .
#   docker run --rm -p 8080:8080 -e CIRELAY_API_KEYS=... -e CIRELAY_CALLBACK_KEYS=... cirelay
#   docker run --rm -e CIRELAY_DATABASE_URL=postgresql://... cirelay db upgrade
#   docker run --rm -e ... cirelay worker
#
# Both stages use the same base image, pinned to a full version tag. To pin its digest as well,
# read it with `docker buildx imagetools inspect python:3.11.14-slim-bookworm` (the "Digest:"
# line) and write `python:3.11.14-slim-bookworm@sha256:<digest>` in both FROM lines.

# --- builder: wheels for cirelay and its dependencies, installed into /opt/venv ---------------
FROM python:3.11.14-slim-bookworm AS builder

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore

WORKDIR /src

# The dependencies first, from pyproject.toml alone, so that this layer is rebuilt only when
# they change. Every runtime dependency ships wheels for linux/amd64 and linux/arm64, so no
# compiler is needed; should one ever need building, install build-essential here (the builder
# only: nothing of this stage but /opt/venv reaches the image).
COPY pyproject.toml ./
RUN python -c "import tomllib; print(*tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies'], sep='\n')" > requirements.txt \
 && pip wheel --wheel-dir /wheels --requirement requirements.txt

COPY README.md ./
COPY app ./app
RUN pip wheel --no-deps --wheel-dir /wheels . \
 && python -m venv /opt/venv \
 && /opt/venv/bin/pip install --no-index --find-links /wheels cirelay \
 && /opt/venv/bin/pip check

# --- runtime: the venv, the XSDs and the entrypoint; no build tools, not root -----------------
FROM python:3.11.14-slim-bookworm AS runtime

ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="cirelay" \
      org.opencontainers.image.description="Receiver for Tencent Cloud CI VoiceSeparate job callbacks: validate, record, fan out." \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="docker.io/library/python:3.11.14-slim-bookworm"

# CIRELAY_SCHEMA_DIR: installed from a wheel, the app package no longer sits beside schemas/
# (its default location), so it is told where the image keeps them.
ENV PATH="/opt/venv/bin:${PATH}" \
    VIRTUAL_ENV=/opt/venv \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    CIRELAY_SCHEMA_DIR=/app/schemas

RUN groupadd --gid 10001 cirelay \
 && useradd --uid 10001 --gid 10001 --no-log-init --no-create-home --home-dir /nonexistent \
            --shell /usr/sbin/nologin cirelay

COPY --from=builder /opt/venv /opt/venv

WORKDIR /app
COPY schemas ./schemas
COPY --chmod=0755 docker/entrypoint.sh ./docker/entrypoint.sh
# The default SQLite database is ./var/cirelay.db: /app/var is the one directory the service
# may write besides /tmp (where PROMETHEUS_MULTIPROC_DIR is). Mount a volume there to keep it.
RUN install -d -o 10001 -g 10001 -m 0750 /app/var

USER 10001:10001

EXPOSE 8080
STOPSIGNAL SIGTERM
# /healthz only says the process answers (readiness, /readyz, is the orchestrator's business).
# The slim image has no curl: Python's urllib; any error (refused, timeout, non-2xx) exits 1.
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=4).status == 200 else 1)"]

ENTRYPOINT ["/app/docker/entrypoint.sh"]
CMD ["serve"]
