"""Canonical JSON and the chained entry hash."""
from __future__ import annotations

import hashlib
from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.audit.canonical import GENESIS_HASH, canonical_json, entry_hash, parse_utc_iso, utc_iso
from gateway.audit.entries import EntryDraft, EntryKind, entry_header
from gateway.audit.errors import AuditInputError


def test_canonical_json_sorts_keys_and_has_no_whitespace():
    assert canonical_json({"b": 1, "a": [1, 2, {"d": None, "c": True}]}) == '{"a":[1,2,{"c":true,"d":null}],"b":1}'


def test_canonical_json_writes_timestamps_as_utc_with_microseconds():
    moment = datetime(2025, 1, 2, 3, 4, 5, 6, tzinfo=timezone(timedelta(hours=2)))
    assert canonical_json({"t": moment}) == '{"t":"2025-01-02T01:04:05.000006Z"}'
    assert parse_utc_iso(utc_iso(moment)) == moment


def test_utc_iso_writes_a_utc_moment_as_the_same_moment_in_any_other_zone():
    for moment in (datetime(2026, 12, 6, 12, 0, 0, tzinfo=timezone.utc), datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=timezone.utc),
                   datetime(1999, 12, 31, 23, 59, 59, 999999, tzinfo=timezone.utc), datetime(1000, 1, 1, tzinfo=timezone.utc)):
        elsewhere = moment.astimezone(timezone(timedelta(hours=2, minutes=30)))
        assert utc_iso(moment) == utc_iso(elsewhere) == moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    early = datetime(999, 5, 1, tzinfo=timezone.utc)  # strftime's text (no padding) for years below 1000, as before
    assert utc_iso(early) == early.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def test_canonical_json_refuses_naive_datetimes_and_nan():
    with pytest.raises(AuditInputError):
        canonical_json({"t": datetime(2025, 1, 1)})
    with pytest.raises(AuditInputError):
        canonical_json({"x": float("nan")})
    with pytest.raises(AuditInputError):
        canonical_json({"x": object()})


def test_canonical_json_keeps_unicode_and_escapes_lone_surrogates():
    assert canonical_json({"t": "Größe 頭痛"}) == '{"t":"Größe 頭痛"}'
    text = canonical_json({"t": "bad \ud800 surrogate"})
    text.encode("utf-8")  # storable as UTF-8
    assert "\\ud800" in text


def test_entry_hash_is_sha256_of_prev_header_and_data():
    header = {"seq": 1, "kind": "admin"}
    expected = hashlib.sha256(f'{GENESIS_HASH}\n{{"kind":"admin","seq":1}}\n{{"x":1}}'.encode()).hexdigest()
    assert entry_hash(GENESIS_HASH, header, '{"x":1}') == expected


def test_draft_rejects_oversized_header_values_and_bad_status():
    now = datetime.now(timezone.utc)
    with pytest.raises(AuditInputError):
        EntryDraft.build(EntryKind.ADMIN, now, {}, team="t" * 65)
    with pytest.raises(AuditInputError):
        EntryDraft.build(EntryKind.ADMIN, now, {}, http_status=42)
    with pytest.raises(AuditInputError):
        EntryDraft.build(EntryKind.ADMIN, datetime(2025, 1, 1), {})


def test_spool_form_of_a_draft_round_trips():
    draft = EntryDraft.build(EntryKind.REQUEST, datetime.now(timezone.utc), {"a": 1}, request_id="r1", team="t", http_status=200)
    assert EntryDraft.from_json(draft.to_json()) == draft


_header_values = st.fixed_dictionaries(
    {
        "request_id": st.none() | st.text(max_size=20),
        "team": st.none() | st.text(max_size=10),
        "subject": st.none() | st.text(max_size=10),
        "status": st.none() | st.sampled_from(["ok", "error"]),
        "http_status": st.none() | st.integers(100, 599),
    }
)


@settings(max_examples=150, deadline=None)
@given(values=_header_values, data=st.dictionaries(st.text(max_size=5), st.integers() | st.text(max_size=8), max_size=4), field=st.sampled_from(
    ["seq", "entry_id", "kind", "recorded_at", "occurred_at", "request_id", "team", "subject", "model", "status", "http_status", "data", "prev"]
))
def test_any_change_to_any_hashed_field_changes_the_hash(values, data, field):
    now = datetime(2025, 1, 1, tzinfo=timezone.utc)
    header = entry_header(seq=7, entry_id="e", kind="request", recorded_at=now, occurred_at=now, model="m", **values)
    data_text = canonical_json(data)
    original = entry_hash(GENESIS_HASH, header, data_text)
    prev = GENESIS_HASH
    if field == "data":
        data_text = canonical_json({**data, "tampered": 1})
    elif field == "prev":
        prev = "1" * 64
    else:
        changed = {
            "seq": 8, "entry_id": "f", "kind": "admin", "recorded_at": utc_iso(now + timedelta(microseconds=1)),
            "occurred_at": utc_iso(now - timedelta(seconds=1)), "model": "m2",
        }.get(field)
        if changed is None:
            current = header[field]
            changed = (current + 1 if current < 599 else current - 1) if isinstance(current, int) else (None if current is not None else "x")
            if field == "status" and current is not None:
                changed = "cancelled"
        header = {**header, field: changed}
    assert entry_hash(prev, header, data_text) != original
