"""The gRPC contract's generated code is exactly what `python -m proto.generate` produces."""
from __future__ import annotations

import pathlib

from proto.generate import PROTOS, ROOT, generate


def test_generated_code_is_not_stale(tmp_path: pathlib.Path):
    fresh = generate(tmp_path)
    assert len(fresh) == 3 * len(PROTOS)
    for path in fresh:
        committed = ROOT / path.relative_to(tmp_path)
        assert committed.exists(), f"{committed} is missing: run `python -m proto.generate`"
        assert committed.read_bytes() == path.read_bytes(), (
            f"{committed.relative_to(ROOT)} is stale: run `python -m proto.generate` and commit the result"
        )


def test_contract_is_versioned():
    from proto.ward.worker.v1 import worker_pb2

    assert worker_pb2.DESCRIPTOR.package == "ward.worker.v1"
    service = worker_pb2.DESCRIPTOR.services_by_name["Worker"]
    assert {m.name for m in service.methods} == {
        "Generate", "Multiplex", "Embed", "Tokenize", "ModelInfo", "Health", "LoadStats", "Metrics"}
