"""The gateway with identity, quotas and audit off, for the overhead benchmark's baseline.

``python -m ward.benchmarks.gateway.serve_plain --config FILE`` serves ``create_app(settings)`` (the config's
static ``api_keys``, no database, no request hooks) through ``gateway.cli.serve``, exactly as
``ward gateway`` serves its full app. Not for production: nothing is audited and nothing is limited.
"""
from __future__ import annotations

import argparse
import logging
import pathlib


def main() -> None:
    from gateway.app import create_app
    from gateway.cli import serve
    from gateway.settings import GatewaySettings

    parser = argparse.ArgumentParser(prog="python -m ward.benchmarks.gateway.serve_plain", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=pathlib.Path, required=True)
    args = parser.parse_args()
    logging.basicConfig(level="WARNING")
    settings = GatewaySettings.load(args.config)
    serve(create_app(settings), settings, log_level="warning")


if __name__ == "__main__":
    main()
