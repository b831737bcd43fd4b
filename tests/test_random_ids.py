"""gateway.random_ids: the request and reservation ids are uuid4-shaped hex, the audit entry ids
version 4 UUIDs, all unique, and a forked process does not repeat its parent's."""
from __future__ import annotations

import os
import re
import uuid

from gateway.http.request_context import RequestContext
from gateway.random_ids import new_hex_id, new_uuid4


def test_ids_are_32_hex_digits_and_do_not_repeat():
    ids = [new_hex_id() for _ in range(20_000)]
    assert all(re.fullmatch(r"[0-9a-f]{32}", i) for i in ids)
    assert len(set(ids)) == len(ids)
    assert re.fullmatch(r"[0-9a-f]{32}", RequestContext.new_id())


def test_entry_ids_are_version_4_uuids_as_uuid4_writes_them_and_do_not_repeat():
    ids = [new_uuid4() for _ in range(20_000)]
    for text in ids:
        parsed = uuid.UUID(text)
        assert str(parsed) == text and parsed.version == 4 and parsed.variant == uuid.RFC_4122
    assert len(set(ids)) == len(ids)


def test_a_forked_child_draws_other_ids_than_its_parent():
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its first ids, to the parent
        os.close(read)
        os.write(write, " ".join(new_hex_id() for _ in range(3)).encode())
        os._exit(0)
    os.close(write)
    parent = [new_hex_id() for _ in range(3)]
    with os.fdopen(read) as pipe:
        child = pipe.read().split()
    os.waitpid(pid, 0)
    assert len(child) == 3 and not set(child) & set(parent)
