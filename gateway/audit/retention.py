"""Retention: removing entries older than the retention period, keeping the rest verifiable.

Entries are removed only up to a signed checkpoint (the anchor): the first remaining entry links to
the anchor's hash, so the verifier can start there. Each purge first appends a ``purge`` entry naming
the anchor (``through_seq``), so a deletion without such an entry shows as tampering. Then, in a
second transaction that does not hold the chain lock (appends go on), the entries up to the anchor
and the checkpoints before it are deleted. A purge interrupted between the two is completed by the
next run; in between, the log verifies as it is.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from sqlalchemy import delete, func, select

from gateway.audit.canonical import utc_iso
from gateway.audit.chain import CHECKPOINTS, ENTRIES, ChainStore
from gateway.audit.entries import EntryDraft, EntryKind
from gateway.audit.records import Actor


@dataclass(frozen=True)
class PurgeResult:
    cutoff: datetime
    through_seq: int | None  # the anchor: entries up to it were (or would be) removed; None: nothing to do
    removed: int
    purge_seq: int | None  # where the purge entry landed (None on a dry run or when nothing was due)


def retention_cutoff(retention_days: int, now: datetime | None = None) -> datetime:
    try:
        return (now or datetime.now(timezone.utc)) - timedelta(days=retention_days)
    except OverflowError:  # a retention reaching before year 1: nothing is old enough
        return datetime.min.replace(tzinfo=timezone.utc)


def purge_expired(store: ChainStore, cutoff: datetime, actor: Actor, *, dry_run: bool = False) -> PurgeResult:
    """Removes the entries recorded before cutoff, up to the last checkpoint before the first one kept.

    Raises AuditUnavailable on an outage.
    """
    with store.locked() as (conn, head):
        first_kept = conn.execute(select(func.min(ENTRIES.c.seq)).where(ENTRIES.c.recorded_at >= cutoff)).scalar()
        if first_kept is None:
            first_kept = head.last_seq + 1
        current_first = conn.execute(select(func.min(ENTRIES.c.seq))).scalar()
        anchor = conn.execute(select(func.max(CHECKPOINTS.c.seq)).where(CHECKPOINTS.c.seq < first_kept)).scalar()
        if current_first is None or anchor is None or anchor < current_first:
            return PurgeResult(cutoff, None, 0, None)
        removed = anchor - current_first + 1
        if dry_run:
            return PurgeResult(cutoff, anchor, removed, None)
        anchor_hash = conn.execute(select(CHECKPOINTS.c.entry_hash).where(CHECKPOINTS.c.seq == anchor)).scalar_one()
        draft = EntryDraft.build(
            EntryKind.PURGE,
            datetime.now(timezone.utc),
            {
                "actor": actor.to_json(),
                "cutoff": utc_iso(cutoff),
                "from_seq": current_first,
                "through_seq": anchor,
                "anchor_hash": anchor_hash,
                "removed": removed,
            },
            subject=actor.subject,
            status="ok",
        )
        purge_seq = store.append_locked(conn, head, [draft]).refs[0].seq
    delete_purged(store, anchor)
    return PurgeResult(cutoff, anchor, removed, purge_seq)


def delete_purged(store: ChainStore, through_seq: int) -> None:
    """Deletes entries up to through_seq and the checkpoints before it (the anchor stays)."""
    with store.engine.begin() as conn:
        conn.execute(delete(ENTRIES).where(ENTRIES.c.seq <= through_seq))
        conn.execute(delete(CHECKPOINTS).where(CHECKPOINTS.c.seq < through_seq))
