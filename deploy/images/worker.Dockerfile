# syntax=docker/dockerfile:1
# A Ward worker: the engine on a GPU (CUDA), serving one model over gRPC. Weights are mounted at
# run time (never baked in, never downloaded at start).
# Build from the repository root (docs/operations.md, "Images"):
#   docker build -f deploy/images/worker.Dockerfile -t ward/worker:0.1.0 .
# Runs as uid 10001 with a read-only root filesystem; /tmp must be writable (Triton's kernel cache).

# CUDA runtime base, pinned by version (pin by digest too where your registry mirrors it). torch's
# wheel brings its own CUDA libraries; the host needs an NVIDIA driver that supports them.
ARG CUDA_IMAGE=nvidia/cuda:12.8.1-runtime-ubuntu24.04

FROM ${CUDA_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1 DEBIAN_FRONTEND=noninteractive
# Ubuntu 24.04's Python 3.12; the base's release fixes the versions, updates bring security fixes.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/ward
COPY deploy/images/worker-requirements.txt /tmp/worker-requirements.txt
RUN /opt/ward/bin/pip install -r /tmp/worker-requirements.txt \
    && /opt/ward/bin/pip install --no-deps wheel==0.45.1
# Ward itself, without the gateway: the engine, the proto contract and the ward CLI.
WORKDIR /src
COPY pyproject.toml README.md ./
COPY proto ./proto
COPY worker ./worker
COPY ward ./ward
RUN /opt/ward/bin/pip install --no-deps --no-build-isolation . \
    && /opt/ward/bin/pip uninstall -y wheel
COPY --chmod=0755 deploy/images/worker_health.py /opt/ward/bin/ward-worker-health

FROM ${CUDA_IMAGE}
LABEL org.opencontainers.image.title="ward-worker" \
      org.opencontainers.image.description="Ward worker: paged-KV continuous-batching engine over gRPC" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV DEBIAN_FRONTEND=noninteractive
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 ward \
    && useradd --system --uid 10001 --gid ward --home-dir /nonexistent --no-create-home --shell /usr/sbin/nologin ward
COPY --from=build /opt/ward /opt/ward
ENV PATH=/opt/ward/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    XDG_CACHE_HOME=/tmp/cache \
    TRITON_CACHE_DIR=/tmp/triton \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1
USER 10001:10001
WORKDIR /tmp
EXPOSE 50051
# Loading a large model takes minutes: the start period covers it.
HEALTHCHECK --interval=15s --timeout=10s --start-period=600s --retries=4 CMD ["ward-worker-health"]
ENTRYPOINT ["ward"]
CMD ["worker", "--model", "/models/model", "--host", "0.0.0.0", "--port", "50051"]
