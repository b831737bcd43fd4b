"""Property tests: any appended history verifies; any single tampering is caught and named."""
from __future__ import annotations

import json
from datetime import datetime, timezone

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import delete, select, update

from gateway.audit.chain import ENTRIES
from gateway.audit.entries import EntryDraft, EntryKind
from gateway.audit.service import create_audit_engine
from gateway.audit.signing import Signer, TrustedKeys
from gateway.audit.verify import verify_chain
from gateway.db.engine import upgrade_to_head
from test_audit_support import make_store, reset_log

MUTATIONS = ("none", "data", "team", "status", "delete", "swap_next")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    directory = tmp_path_factory.mktemp("audit-properties")
    url = f"sqlite:///{directory / 'ward.db'}"
    upgrade_to_head(url)
    engine = create_audit_engine(url)
    signer = Signer.load_or_create(directory / "key.pem")
    yield engine, signer
    engine.dispose()


def _draft(i: int, tokens: int) -> EntryDraft:
    return EntryDraft.build(
        EntryKind.REQUEST, datetime(2025, 1, 1, tzinfo=timezone.utc), {"prompt_tokens": tokens, "n": i},
        request_id=f"r{i}", team="t", status="ok", http_status=200,
    )


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    batches=st.lists(st.integers(1, 5), min_size=1, max_size=8),
    tokens=st.integers(0, 10_000),
    every=st.integers(1, 7),
    mutation=st.sampled_from(MUTATIONS),
    where=st.floats(0, 1, exclude_max=True),
)
def test_history_verifies_and_any_single_tampering_is_named(setup, batches, tokens, every, mutation, where):
    engine, signer = setup
    reset_log(engine)
    store = make_store(engine, signer, every_records=every)
    total = 0
    for size in batches:
        store.append([_draft(total + k, tokens) for k in range(size)])
        total += size
    trusted = TrustedKeys.from_keys([signer.public_key])
    assert verify_chain(engine, trusted).ok

    if mutation == "none":
        return
    if mutation == "swap_next" and total < 2:
        return
    seq = 1 + int(where * (total - 1 if mutation == "swap_next" else total))
    with engine.begin() as conn:
        row = conn.execute(select(ENTRIES).where(ENTRIES.c.seq == seq)).one()
        if mutation == "data":
            data = json.loads(row.data)
            data["prompt_tokens"] += 1
            conn.execute(update(ENTRIES).where(ENTRIES.c.seq == seq).values(data=json.dumps(data, separators=(",", ":"), sort_keys=True)))
        elif mutation == "team":
            conn.execute(update(ENTRIES).where(ENTRIES.c.seq == seq).values(team="u"))
        elif mutation == "status":
            conn.execute(update(ENTRIES).where(ENTRIES.c.seq == seq).values(http_status=500))
        elif mutation == "delete":
            conn.execute(delete(ENTRIES).where(ENTRIES.c.seq == seq))
        else:  # swap_next
            conn.execute(update(ENTRIES).where(ENTRIES.c.seq == seq).values(seq=-1))
            conn.execute(update(ENTRIES).where(ENTRIES.c.seq == seq + 1).values(seq=seq))
            conn.execute(update(ENTRIES).where(ENTRIES.c.seq == -1).values(seq=seq + 1))
    report = verify_chain(engine, trusted)
    assert not report.ok
    assert report.first_problem.seq == seq, (mutation, seq, [p.describe() for p in report.problems])
