#!/usr/bin/env python3
"""ward-worker-health: asks a Ward worker's Health RPC whether it is live (or, with --ready, ready).

The worker image's HEALTHCHECK and the chart's probes run it. Exit 0: yes; 1: no (the reason on
stderr). Over TLS it presents the certificate in --tls-dir (tls.crt, tls.key; the worker asks for a
client certificate chained to ca.crt) and checks the worker's against ca.crt and --server-name.

Live means the worker answers and its engine has not failed; a busy worker answers slowly but is
alive, so give the probe a generous timeout rather than a short one.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys

import grpc

from proto.ward.worker.v1 import worker_pb2 as pb
from proto.ward.worker.v1 import worker_pb2_grpc as pb_grpc


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="ward-worker-health", description=__doc__.splitlines()[0])
    parser.add_argument("--address", default=os.environ.get("WARD_WORKER_HEALTH_ADDRESS", "127.0.0.1:50051"))
    parser.add_argument("--ready", action="store_true", help="require ready (serving), not only live")
    parser.add_argument("--tls-dir", default=os.environ.get("WARD_WORKER_HEALTH_TLS_DIR"),
                        help="directory with tls.crt, tls.key and ca.crt (default: plaintext)")
    parser.add_argument("--server-name", default=None, help="name to check the worker certificate against")
    parser.add_argument("--timeout", type=float, default=4.0, help="seconds to wait for the answer")
    return parser.parse_args(argv)


def open_channel(args: argparse.Namespace) -> grpc.Channel:
    if not args.tls_dir:
        return grpc.insecure_channel(args.address)
    tls = pathlib.Path(args.tls_dir)
    credentials = grpc.ssl_channel_credentials(
        root_certificates=(tls / "ca.crt").read_bytes(),
        private_key=(tls / "tls.key").read_bytes(),
        certificate_chain=(tls / "tls.crt").read_bytes(),
    )
    options = [("grpc.ssl_target_name_override", args.server_name)] if args.server_name else []
    return grpc.secure_channel(args.address, credentials, options=options)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        with open_channel(args) as channel:
            health = pb_grpc.WorkerStub(channel).Health(pb.HealthRequest(), timeout=args.timeout)
    except grpc.RpcError as err:
        print(f"worker {args.address} did not answer: {err.code().name} {err.details()}", file=sys.stderr)
        return 1
    except OSError as err:  # unreadable TLS files
        print(f"cannot read TLS material: {err}", file=sys.stderr)
        return 1
    if not health.live:
        print(f"worker {args.address} is not live: {health.detail}", file=sys.stderr)
        return 1
    if args.ready and not health.ready:
        print(f"worker {args.address} is not ready: {health.detail}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
