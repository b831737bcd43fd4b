# syntax=docker/dockerfile:1
# The Ward gateway: the OpenAI-compatible API, identity, quotas, audit. No torch, no CUDA.
# Build from the repository root (docs/operations.md, "Images"):
#   docker build -f deploy/images/gateway.Dockerfile -t ward/gateway:0.1.0 .
# Runs as uid 10001 and writes nothing outside its volumes: run it with a read-only root
# filesystem, a writable /tmp, and /var/lib/ward when the gateway keeps files (SQLite, spool).

# The base is pinned by version; pin it by digest too where your registry mirrors it:
#   --build-arg PYTHON_IMAGE=python:3.11.11-slim-bookworm@sha256:<digest>
ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/ward
# Dependencies first (a layer that changes only with the pins), exactly the pinned set.
COPY deploy/images/gateway-requirements.txt /tmp/gateway-requirements.txt
RUN /opt/ward/bin/pip install --no-deps -r /tmp/gateway-requirements.txt \
    && /opt/ward/bin/pip install --no-deps setuptools==84.2.1 wheel==0.45.1
# Ward itself, without the worker: only the packages the gateway and the ward CLI need.
WORKDIR /src
COPY pyproject.toml README.md ./
COPY proto ./proto
COPY gateway ./gateway
COPY ward ./ward
RUN /opt/ward/bin/pip install --no-deps --no-build-isolation . \
    && /opt/ward/bin/pip uninstall -y setuptools wheel \
    && /opt/ward/bin/pip check
COPY --chmod=0755 deploy/images/gateway_health.py /opt/ward/bin/ward-gateway-health

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="ward-gateway" \
      org.opencontainers.image.description="Ward gateway: governed OpenAI-compatible API in front of Ward workers" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --system --gid 10001 ward \
    && useradd --system --uid 10001 --gid ward --home-dir /nonexistent --no-create-home --shell /usr/sbin/nologin ward \
    && install -d -o ward -g ward -m 0750 /var/lib/ward /etc/ward
COPY --from=build /opt/ward /opt/ward
ENV PATH=/opt/ward/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    WARD_DATA_DIR=/var/lib/ward \
    HOME=/tmp
USER 10001:10001
WORKDIR /var/lib/ward
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 CMD ["ward-gateway-health"]
ENTRYPOINT ["ward"]
CMD ["gateway", "--config", "/etc/ward/gateway/gateway.yaml"]
