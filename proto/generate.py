"""Regenerates the Python code for Ward's protos: `python -m proto.generate`.

The generated files are committed; tests/test_proto.py fails when they are stale. grpcio-tools is
pinned in pyproject's dev extra so the output (and its protobuf runtime floor) is reproducible.
"""
from __future__ import annotations

import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
PROTOS = ["proto/ward/worker/v1/worker.proto"]


def generate(out_dir: pathlib.Path = ROOT) -> list[pathlib.Path]:
    """Writes *_pb2.py, *_pb2.pyi and *_pb2_grpc.py for every proto under out_dir; returns their paths."""
    from grpc_tools import protoc

    args = ["protoc", f"-I{ROOT}", f"--python_out={out_dir}", f"--pyi_out={out_dir}", f"--grpc_python_out={out_dir}"]
    if protoc.main(args + PROTOS) != 0:
        raise RuntimeError("protoc failed")
    outs = []
    for p in PROTOS:
        stem = p[: -len(".proto")]
        outs += [out_dir / f"{stem}_pb2.py", out_dir / f"{stem}_pb2.pyi", out_dir / f"{stem}_pb2_grpc.py"]
    return outs


if __name__ == "__main__":
    for path in generate():
        print(path.relative_to(ROOT))
    sys.exit(0)
