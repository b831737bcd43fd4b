"""The peer for ``ward bench gateway --peer litellm``: LiteLLM's proxy, measured in the same run.

The proxy is installed into its own virtual environment under ``.peer/litellm`` (git-ignored; pip from
PyPI, the version pinned below) so it never shares packages with Ward. It runs as its documentation's
quick start has it: a master key (from the environment, ``LITELLM_MASTER_KEY``; a random one when
unset), one model with a mock response (no upstream call), no database, no Redis. The benchmark
loads it with the same load generator and body as Ward's gateways, in the same rounds.
"""
from __future__ import annotations

import os
import pathlib
import secrets
import subprocess
import sys

import yaml

LITELLM_VERSION = "1.108.7"
PEER_DIR = pathlib.Path(".peer/litellm")


def litellm_python(root: pathlib.Path = PEER_DIR) -> pathlib.Path:
    """The peer environment's interpreter, creating the environment and installing LiteLLM if needed."""
    python = root / "bin" / "python"
    marker = root / f".installed-{LITELLM_VERSION}"
    if marker.exists():
        return python
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(root)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", f"litellm[proxy]=={LITELLM_VERSION}"], check=True)
    marker.touch()
    return python


def litellm_command(model: str, port: int, data_dir: pathlib.Path, root: pathlib.Path = PEER_DIR) -> tuple[list[str], dict[str, str], str]:
    """argv, environment and API key to serve ``model`` with a mock one-word answer on ``port``."""
    key = os.environ.get("LITELLM_MASTER_KEY") or f"sk-{secrets.token_hex(16)}"
    config = {
        "model_list": [{"model_name": model, "litellm_params": {"model": f"openai/{model}", "mock_response": "ok"}}],
        "general_settings": {"master_key": "os.environ/LITELLM_MASTER_KEY"},
        "litellm_settings": {"drop_params": True},
    }
    path = data_dir / "litellm.yaml"
    path.write_text(yaml.safe_dump(config))
    python = litellm_python(root.resolve())
    argv = [str(python.parent / "litellm"), "--config", str(path), "--host", "127.0.0.1",
            "--port", str(port), "--num_workers", "1"]
    env = {"LITELLM_MASTER_KEY": key, "LITELLM_LOG": "ERROR", "LITELLM_TELEMETRY": "False",
           "DISABLE_SCHEMA_UPDATE": "true"}
    return argv, env, key
