"""`ward` command: one entry point for the worker, the gateway and the tools around them.

Each subcommand lives in its own module, imported only when it runs (the gateway never pays for
torch). A module exposes ``add_arguments(parser)`` and ``run(args) -> int``.
"""
from __future__ import annotations

import argparse
import importlib
import sys

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "up": ("ward.up", "start a gateway and workers on this machine with embedded defaults"),
    "worker": ("worker.server.cli", "run a gRPC inference worker"),
    "gateway": ("gateway.cli", "run the OpenAI-compatible gateway"),
    "batch": ("worker.batch", "run an OpenAI Batch API input file through the engine"),
    "model": ("worker.model.cli", "manage local models (path, import-gguf)"),
    "keys": ("gateway.auth.cli", "create, list and revoke API keys"),
    "teams": ("gateway.auth.teams_cli", "create and list teams"),
    "quotas": ("gateway.quota.cli", "show and set a team's limits, priority class and weight"),
    "approvals": ("gateway.policy.cli", "model approval: models' statuses and teams' allowed models"),
    "audit": ("gateway.audit.cli", "verify, export and purge the audit log"),
    "bench": ("ward.bench", "benchmarks: print a table and write JSON"),
    "tune": ("worker.tuning.cli", "tune kernels on this machine's card for a model (decode GEMV plans)"),
}


def _top_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ward", description="Ward: private LLM inference for hospitals.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS:
        parser = _top_parser()
        if argv and argv[0] not in ("-h", "--help"):
            parser.print_usage(sys.stderr)
            print(f"ward: unknown command {argv[0]!r}", file=sys.stderr)
            return 2
        parser.print_help()
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    module = importlib.import_module(COMMANDS[name][0])
    parser = argparse.ArgumentParser(prog=f"ward {name}", description=COMMANDS[name][1])
    module.add_arguments(parser)
    args = parser.parse_args(rest)
    return int(module.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
