#!/usr/bin/env bash
# Downloads the gateway's Python packages that a GPU machine's image lacks (Python 3.12, x86-64
# manylinux wheels) into DIR (default .gpu/gw-wheels), for bench/gpu_serving.sh and the fairness run.
set -euo pipefail
out=${1:-.gpu/gw-wheels}
mkdir -p "$out"
plat="--only-binary=:all: --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any"
python3 -m pip download -q --no-deps $plat -d "$out" fastapi starlette pydantic pydantic-core pydantic-settings \
  python-dotenv annotated-types typing-inspection uvicorn authlib joserfc cryptography cffi pycparser redis \
  sqlalchemy greenlet alembic mako opentelemetry-api importlib-metadata pyyaml
du -sh "$out"
