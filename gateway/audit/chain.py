"""Appending to the chain: one short transaction per batch under the chain-head lock.

Every append, from any gateway process, locks the single chain-head row (``SELECT ... FOR UPDATE``
on PostgreSQL, ``BEGIN IMMEDIATE`` on SQLite), numbers its entries after the head, chains their
hashes, signs the new head, writes a checkpoint when one is due, and commits. Appends are therefore
serialised and the sequence is gap-free; throughput comes from batching many entries per transaction
(see log.py), not from parallel appends.
"""
from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from sqlalchemy import Connection, Engine, exc, insert, select, update

from gateway.audit.append_sql import AppendStatements
from gateway.audit.canonical import as_utc, entry_hash
from gateway.audit.entries import AppendResult, EntryDraft, EntryRef, entry_header
from gateway.audit.errors import AuditUnavailable
from gateway.audit.signing import Signer
from gateway.db.models_audit import CHAIN_HEAD_ID, AuditChainHead, AuditCheckpoint, AuditEntry

ENTRIES = AuditEntry.__table__
CHECKPOINTS = AuditCheckpoint.__table__
HEAD = AuditChainHead.__table__

# Built once: the append path runs per batch, and statement construction is most of its CPU time.
_SELECT_HEAD = select(HEAD).where(HEAD.c.id == CHAIN_HEAD_ID)
_LOCK_HEAD = _SELECT_HEAD.with_for_update()
_INSERT_ENTRIES = insert(ENTRIES)
_INSERT_CHECKPOINT = insert(CHECKPOINTS)
_UPDATE_HEAD = update(HEAD).where(HEAD.c.id == CHAIN_HEAD_ID)

# Errors that mean "the database cannot take the write now", as opposed to a bug or a bad schema.
OUTAGE_ERRORS = (exc.OperationalError, exc.InterfaceError, exc.DisconnectionError, exc.TimeoutError)


@dataclass(frozen=True)
class CheckpointPolicy:
    every_records: int = 1000
    every_s: float = 300.0


@dataclass
class Head:
    last_seq: int
    last_hash: str
    last_time: datetime | None
    last_checkpoint_seq: int
    last_checkpoint_at: datetime | None


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


class ChainStore:
    """The chain in one database. Thread-safe; any number of processes may share the database."""

    def __init__(self, engine: Engine, signer: Signer, policy: CheckpointPolicy | None = None, *, write_timeout_s: float = 5.0):
        self.engine = engine
        self.signer = signer
        self.policy = policy or CheckpointPolicy()
        self.write_timeout_s = write_timeout_s
        self._sqlite = engine.dialect.name == "sqlite"
        self._sql = AppendStatements(_LOCK_HEAD, _INSERT_ENTRIES, _UPDATE_HEAD, engine.dialect)
        # One connection kept open between appends: checking one out of the pool and resetting it
        # on return cost more CPU than the append itself (and a ping round trip on PostgreSQL).
        # Whichever thread holds the lock uses it; a concurrent caller takes a pooled one.
        self._held: Connection | None = None
        self._held_lock = threading.Lock()

    # --- the locked transaction ----------------------------------------------------------------
    @contextmanager
    def locked(self) -> Iterator[tuple[Connection, Head]]:
        """A transaction holding the chain-head lock, with the head as it stands; commits on success.

        Raises AuditUnavailable when the database cannot be reached or the lock not had in time.
        """
        try:
            if not self._held_lock.acquire(blocking=False):
                with self.engine.connect() as conn:  # another thread is appending: a pooled connection
                    head = self._lock_head(conn)
                    yield conn, head
                    conn.commit()
                return
            try:
                conn, head = self._held_and_locked()
                try:
                    yield conn, head
                    conn.commit()
                except BaseException:
                    self._drop_held()  # rolls back; the next append starts on a fresh connection
                    raise
            finally:
                self._held_lock.release()
        except OUTAGE_ERRORS as error:
            cause = getattr(error, "orig", None) or error
            raise AuditUnavailable(f"audit database unavailable: {type(cause).__name__}: {cause}") from error

    def close(self) -> None:
        """Closes the connection kept between appends (the next append opens one again)."""
        with self._held_lock:
            self._drop_held()

    def _held_and_locked(self) -> tuple[Connection, Head]:
        """The kept connection with the head locked. A kept connection the database dropped since
        its last use (a restart, an idle timeout) fails on its first statement as a disconnect: then
        one fresh connection from the pool (which pings it) is tried before the outage is reported."""
        for attempt in range(2):
            reused = self._held is not None
            if self._held is None:
                self._held = self.engine.connect()
            try:
                return self._held, self._lock_head(self._held)
            except BaseException as error:
                self._drop_held()
                if attempt or not (reused and getattr(error, "connection_invalidated", False)):
                    raise
        raise AssertionError("unreachable")

    def _drop_held(self) -> None:
        conn, self._held = self._held, None
        if conn is not None:
            try:
                conn.close()
            except Exception:  # a dead connection may fail to roll back; it is discarded either way
                conn.invalidate()

    def _lock_head(self, conn: Connection) -> Head:
        timeout_ms = int(self.write_timeout_s * 1000)
        if self._sqlite:
            info = conn.connection.info  # lives as long as the pooled DBAPI connection
            if info.get("audit_busy_timeout_ms") != timeout_ms:
                self._sql.on_driver(conn, f"PRAGMA busy_timeout = {timeout_ms}")
                info["audit_busy_timeout_ms"] = timeout_ms
            # The write lock, taken up front, on the driver (without a statement execution's set-up
            # around it); then SQLAlchemy's transaction, which emits nothing on SQLite, so that its
            # commit ends the driver's.
            self._sql.on_driver(conn, "BEGIN IMMEDIATE")
            conn.begin()
        else:
            # Both limits for this transaction only, in one round trip.
            conn.exec_driver_sql(
                "SELECT set_config('lock_timeout', %(t)s, true), set_config('statement_timeout', %(t)s, true)",
                {"t": str(timeout_ms)},
            )
        row = self._sql.lock_head(conn)
        return Head(
            last_seq=row["last_seq"],
            last_hash=row["last_hash"],
            last_time=as_utc(row["last_time"]),
            last_checkpoint_seq=row["last_checkpoint_seq"],
            last_checkpoint_at=as_utc(row["last_checkpoint_at"]),
        )

    # --- public operations ---------------------------------------------------------------------
    def append(self, drafts: Sequence[EntryDraft], *, skip_existing: bool = False) -> AppendResult:
        """Appends drafts in order, in one transaction; returns where each landed.

        skip_existing: leave out drafts whose entry_id is already in the chain (re-draining a spool
        after a crash must not duplicate). Raises AuditUnavailable on an outage.
        """
        with self.locked() as (conn, head):
            if skip_existing:
                present = self._present_ids(conn, [d.entry_id for d in drafts])
                todo = [d for d in drafts if d.entry_id not in present]
            else:
                todo = list(drafts)
            result = self.append_locked(conn, head, todo)
            result.skipped = len(drafts) - len(todo)
            return result

    def checkpoint_if_due(self, *, force: bool = False) -> int | None:
        """Writes a checkpoint at the head when the policy says one is due (or force); returns its seq."""
        if not force:
            # Look before locking: an idle tick must not take the write lock for nothing.
            try:
                with self.engine.connect() as conn:
                    row = conn.execute(_SELECT_HEAD).one()
            except OUTAGE_ERRORS as error:
                raise AuditUnavailable(f"audit database unavailable: {error}") from error
            peek = Head(row.last_seq, row.last_hash, as_utc(row.last_time), row.last_checkpoint_seq, as_utc(row.last_checkpoint_at))
            if peek.last_seq <= peek.last_checkpoint_seq or not self._checkpoint_due(peek, peek.last_seq, _utcnow()):
                return None
        with self.locked() as (conn, head):
            result = self.append_locked(conn, head, [], force_checkpoint=force)
            return result.checkpoint_seq

    def append_locked(self, conn: Connection, head: Head, drafts: Sequence[EntryDraft], *, force_checkpoint: bool = False) -> AppendResult:
        """Appends inside a transaction opened by locked(); updates head in place. For this module and retention."""
        now = _utcnow()
        if head.last_time is not None and now < head.last_time:
            now = head.last_time  # recorded_at never goes backwards, whatever the writers' clocks say
        result = AppendResult()
        rows = []
        prev, seq = head.last_hash, head.last_seq
        for draft in drafts:
            seq += 1
            header = entry_header(
                seq=seq,
                entry_id=draft.entry_id,
                kind=draft.kind,
                recorded_at=now,
                occurred_at=draft.occurred_at,
                request_id=draft.request_id,
                team=draft.team,
                subject=draft.subject,
                model=draft.model,
                status=draft.status,
                http_status=draft.http_status,
            )
            digest = entry_hash(prev, header, draft.data)
            rows.append(
                {
                    "seq": seq,
                    "entry_id": draft.entry_id,
                    "kind": draft.kind,
                    "recorded_at": now,
                    "occurred_at": draft.occurred_at,
                    "request_id": draft.request_id,
                    "team": draft.team,
                    "subject": draft.subject,
                    "model": draft.model,
                    "status": draft.status,
                    "http_status": draft.http_status,
                    "data": draft.data,
                    "prev_hash": prev,
                    "entry_hash": digest,
                }
            )
            result.refs.append(EntryRef(entry_id=draft.entry_id, seq=seq, entry_hash=digest))
            prev = digest
        if rows:
            self._sql.insert_entries(conn, rows)
        if seq > head.last_checkpoint_seq and (force_checkpoint or self._checkpoint_due(head, seq, now)):
            checkpoint = {"seq": seq, "entry_hash": prev, "created_at": now, "key_id": self.signer.key_id}
            conn.execute(_INSERT_CHECKPOINT, {**checkpoint, "signature": self.signer.sign(seq, prev, now)})
            head.last_checkpoint_seq, head.last_checkpoint_at = seq, now
            result.checkpoint_seq = seq
        if rows or result.checkpoint_seq is not None:
            head.last_seq, head.last_hash = seq, prev
            head.last_time = now if rows else head.last_time
            self._write_head(conn, head)
        return result

    # --- helpers -------------------------------------------------------------------------------
    def _checkpoint_due(self, head: Head, seq: int, now: datetime) -> bool:
        if seq - head.last_checkpoint_seq >= self.policy.every_records:
            return True
        since = head.last_checkpoint_at
        return since is None or now - since >= timedelta(seconds=self.policy.every_s)

    def _write_head(self, conn: Connection, head: Head) -> None:
        # The head's signature covers (seq, hash, time): a truncated or extended tail cannot be
        # made to match it without the private key.
        signed_time = head.last_time or head.last_checkpoint_at or _utcnow()
        head.last_time = signed_time
        self._sql.update_head(
            conn,
            {
                "last_seq": head.last_seq,
                "last_hash": head.last_hash,
                "last_time": signed_time,
                "last_checkpoint_seq": head.last_checkpoint_seq,
                "last_checkpoint_at": head.last_checkpoint_at,
                "key_id": self.signer.key_id,
                "signature": self.signer.sign(head.last_seq, head.last_hash, signed_time),
            },
        )

    @staticmethod
    def _present_ids(conn: Connection, entry_ids: list[str]) -> set[str]:
        present: set[str] = set()
        for start in range(0, len(entry_ids), 500):
            chunk = entry_ids[start : start + 500]
            present.update(conn.execute(select(ENTRIES.c.entry_id).where(ENTRIES.c.entry_id.in_(chunk))).scalars())
        return present
