"""Recomputes the chain and checks every signature: is the log as it was written?

What is checked, reading one consistent snapshot in sequence order:
- each entry's hash over its own columns (a changed field, a moved or swapped row fails here);
- each entry's link to the one before it (a rewritten-and-rehashed entry fails at its successor);
- the sequence is gap-free (a deleted row), and starts at 1 or at a signed checkpoint that a purge
  entry in the chain names (retention);
- every checkpoint, in the database or exported, is signed by a trusted key and matches its entry
  (a rewritten stretch or a truncated tail fails here);
- the chain head is signed by a trusted key and names the last entry (a truncated or extended tail).

A problem names the first record that cannot be vouched for, as precisely as the evidence allows.
"""
from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import Connection, Engine, select

from gateway.audit.canonical import GENESIS_HASH, as_utc, entry_hash, parse_utc_iso, utc_iso
from gateway.audit.chain import CHECKPOINTS, ENTRIES, HEAD
from gateway.audit.entries import EntryKind, entry_header
from gateway.audit.errors import AuditInputError
from gateway.audit.signing import TrustedKeys
from gateway.db.models_audit import CHAIN_HEAD_ID

# How far a record may have moved for the verifier to say where it came from.
_MOVE_OFFSETS = (-1, 1, -2, 2, -3, 3)


@dataclass(frozen=True)
class SignedCheckpoint:
    """A checkpoint as exported for safekeeping (one JSON object per line)."""

    seq: int
    entry_hash: str
    time: datetime
    key_id: str
    signature: str

    def to_json(self) -> dict:
        return {
            "seq": self.seq,
            "entry_hash": self.entry_hash,
            "time": utc_iso(self.time),
            "key_id": self.key_id,
            "signature": self.signature,
        }

    @classmethod
    def from_json(cls, obj: dict) -> SignedCheckpoint:
        try:
            return cls(int(obj["seq"]), str(obj["entry_hash"]), parse_utc_iso(obj["time"]), str(obj["key_id"]), str(obj["signature"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise AuditInputError(f"not an exported checkpoint: {exc}") from None


def load_checkpoint_file(path: str | os.PathLike) -> list[SignedCheckpoint]:
    """Checkpoints from a JSONL export. Raises AuditInputError on a malformed line."""
    checkpoints = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if line.strip():
                try:
                    checkpoints.append(SignedCheckpoint.from_json(json.loads(line)))
                except (ValueError, AuditInputError) as exc:
                    raise AuditInputError(f"{path} line {number}: {exc}") from None
    return checkpoints


def read_checkpoints(conn: Connection, since_seq: int = 0) -> list[SignedCheckpoint]:
    rows = conn.execute(select(CHECKPOINTS).where(CHECKPOINTS.c.seq > since_seq).order_by(CHECKPOINTS.c.seq))
    return [SignedCheckpoint(r.seq, r.entry_hash, as_utc(r.created_at), r.key_id, r.signature) for r in rows]


@dataclass(frozen=True)
class Problem:
    seq: int | None  # the first record this problem concerns (None: the log as a whole)
    message: str
    request_id: str | None = None

    def describe(self) -> str:
        where = "log" if self.seq is None else f"record seq {self.seq}"
        if self.request_id:
            where += f" (request {self.request_id})"
        return f"{where}: {self.message}"


@dataclass
class VerifyReport:
    entries: int = 0
    first_seq: int | None = None
    last_seq: int | None = None
    checkpoints_checked: int = 0
    external_checked: int = 0
    head_checked: bool = False
    problems: list[Problem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    truncated_problems: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def first_problem(self) -> Problem | None:
        """The problem at the lowest sequence number (log-wide problems last)."""
        if not self.problems:
            return None
        return min(self.problems, key=lambda p: (p.seq is None, p.seq or 0))


class _Verifier:
    def __init__(self, trusted: TrustedKeys, external: Iterable[SignedCheckpoint], max_problems: int):
        self.trusted = trusted
        self.external = list(external)
        self.max_problems = max_problems
        self.report = VerifyReport()
        self.expected: dict[int, tuple[str, str]] = {}  # seq -> (hash a checkpoint signed, where it came from)
        self.purged_through: set[int] = set()
        self.last_good_checkpoint = 0
        self._moved: dict[int, int] = {}  # seq now -> seq it was written as

    def problem(self, seq: int | None, message: str, request_id: str | None = None) -> None:
        if len(self.report.problems) < self.max_problems:
            self.report.problems.append(Problem(seq, message, request_id))
        else:
            self.report.truncated_problems += 1

    # --- checkpoints ---------------------------------------------------------------------------
    def load_checkpoints(self, stored: list[SignedCheckpoint]) -> None:
        by_seq = {}
        for cp in stored:
            by_seq[cp.seq] = cp
            self._expect(cp, "checkpoint")
        for cp in self.external:
            if cp.seq in by_seq and by_seq[cp.seq].entry_hash != cp.entry_hash:
                self.problem(cp.seq, "the database's checkpoint differs from the exported one (replaced)")
            elif cp.seq not in by_seq:
                self.report.notes.append(f"exported checkpoint at seq {cp.seq} is not in the database")
            self._expect(cp, "exported checkpoint")
            self.report.external_checked += 1

    def _expect(self, cp: SignedCheckpoint, source: str) -> None:
        why = self.trusted.check(cp.seq, cp.entry_hash, cp.time, cp.key_id, cp.signature)
        if why is not None:
            self.problem(cp.seq, f"{source} at this seq: {why}")
            return
        if source == "checkpoint":
            self.report.checkpoints_checked += 1
        if cp.seq not in self.expected:
            self.expected[cp.seq] = (cp.entry_hash, source)

    # --- entries -------------------------------------------------------------------------------
    def check_entries(self, rows: Iterable) -> None:
        prev_seq: int | None = None
        prev_hash: str | None = None
        for row in rows:
            seq = row.seq
            own_ok = self._hash_of(row, seq) == row.entry_hash
            if prev_seq is None:
                self.report.first_seq = seq
                if seq == 1 and row.prev_hash != GENESIS_HASH:
                    self.problem(1, "the first record does not start the chain (its predecessor is not the genesis hash)", row.request_id)
            elif seq != prev_seq + 1:
                missing = f"{prev_seq + 1}" if seq == prev_seq + 2 else f"{prev_seq + 1}..{seq - 1}"
                self.problem(prev_seq + 1, f"missing: record(s) {missing} were deleted")
            elif row.prev_hash != prev_hash and own_ok:
                # This record is intact but its predecessor is not the one it was chained to.
                self.problem(prev_seq, "changed: its hash was recomputed, but the next record still links to the original")
            if not own_ok:
                self._diagnose_bad_row(row)
            if row.kind == EntryKind.PURGE.value and own_ok:
                try:
                    self.purged_through.add(int(json.loads(row.data)["through_seq"]))
                except (ValueError, KeyError, TypeError):
                    self.problem(seq, "a purge record without a readable through_seq")
            if seq in self.expected:
                signed_hash, source = self.expected[seq]
                if signed_hash != row.entry_hash:
                    start = self.last_good_checkpoint + 1
                    if not self._named_between(start, seq):
                        self.problem(start, f"records {start}..{seq} were rewritten: the {source} at seq {seq} signed a different hash")
                else:
                    self.last_good_checkpoint = seq
            self.report.entries += 1
            prev_seq, prev_hash = seq, row.entry_hash
        self.report.last_seq = prev_seq

    def _named_between(self, first: int, last: int) -> bool:
        """Whether a more precise problem already names a record in first..last."""
        return any(p.seq is not None and first <= p.seq <= last for p in self.report.problems)

    @staticmethod
    def _hash_of(row, seq: int) -> str:
        header = entry_header(
            seq=seq,
            entry_id=row.entry_id,
            kind=row.kind,
            recorded_at=as_utc(row.recorded_at),
            occurred_at=as_utc(row.occurred_at),
            request_id=row.request_id,
            team=row.team,
            subject=row.subject,
            model=row.model,
            status=row.status,
            http_status=row.http_status,
        )
        return entry_hash(row.prev_hash, header, row.data)

    def _diagnose_bad_row(self, row) -> None:
        seq = row.seq
        for offset in _MOVE_OFFSETS:
            original = seq + offset
            if original < 1 or self._hash_of(row, original) != row.entry_hash:
                continue
            previous = self._moved.get(seq - 1)
            self._moved[seq] = original
            if previous == seq and original == seq - 1:
                self.report.problems = [p for p in self.report.problems if not (p.seq == seq - 1 and p.message.startswith("moved"))]
                self.problem(seq - 1, f"reordered: records {seq - 1} and {seq} were swapped", row.request_id)
            elif previous is not None and previous - (seq - 1) == offset:
                pass  # the same shift as the record before: one problem already names where it began
            elif offset < 0:
                message = f"inserted: a forged record sits at seq {original}; the record now at seq {seq} was written as seq {original}"
                self.problem(original, message, row.request_id)
            else:
                message = f"moved: the record now at seq {seq} was written as seq {original} (rows deleted or reordered)"
                self.problem(seq, message, row.request_id)
            return
        self.problem(seq, "changed: its content does not match its hash", row.request_id)

    # --- the ends of the chain -----------------------------------------------------------------
    def check_start(self, first_prev_hash: str | None) -> None:
        first = self.report.first_seq
        if first is None or first == 1:
            return
        anchor = first - 1
        signed = self.expected.get(anchor)
        if signed is None or signed[0] != first_prev_hash:
            self.problem(1, f"missing: records 1..{anchor} are gone and no signed checkpoint at seq {anchor} anchors the rest")
        elif anchor not in self.purged_through:
            self.problem(1, f"missing: records 1..{anchor} were deleted without a purge record")
        else:
            self.report.notes.append(f"records 1..{anchor} were purged under the retention policy (anchored at a signed checkpoint)")

    def check_tail(self, head, last_hash: str | None) -> None:
        last = self.report.last_seq or 0
        for seq in sorted(s for s in self.expected if s > last):
            self.problem(last + 1, f"missing: the log ends at seq {last} but a checkpoint signed seq {seq} (tail truncated)")
            break
        if head is None:
            self.problem(None, "the chain head row is missing")
            return
        if head.last_seq > last:
            self.problem(last + 1, f"missing: the log ends at seq {last} but the signed head says {head.last_seq} (tail truncated)")
        elif head.last_seq < last:
            self.problem(head.last_seq + 1, f"inserted: records {head.last_seq + 1}..{last} lie beyond the signed chain head")
        elif last and head.last_hash != last_hash:
            start = self.last_good_checkpoint + 1
            if not self._named_between(start, last):
                self.problem(start, f"records {start}..{last} were rewritten: the signed head names a different last hash")
        if head.last_seq == 0 and head.signature is None:
            self.report.head_checked = True
            return
        if head.signature is None or head.key_id is None or head.last_time is None:
            self.problem(None, "the chain head is not signed")
            return
        why = self.trusted.check(head.last_seq, head.last_hash, as_utc(head.last_time), head.key_id, head.signature)
        if why is not None:
            # The head's signature is what vouches for the records after the last checkpoint.
            start = self.last_good_checkpoint + 1
            if last >= start and not self._named_between(start, last):
                message = f"records {start}..{last} cannot be vouched for (rewritten?): the chain head does not check out ({why})"
                self.problem(start, message)
            else:
                self.problem(None, f"the chain head: {why}")
        else:
            self.report.head_checked = True


def verify_chain(
    engine: Engine,
    trusted: TrustedKeys,
    external_checkpoints: Iterable[SignedCheckpoint] = (),
    *,
    max_problems: int = 50,
) -> VerifyReport:
    """Verifies the whole log in one snapshot. Never writes. See the module docstring for what is checked."""
    verifier = _Verifier(trusted, external_checkpoints, max_problems)
    if not trusted.keys:
        verifier.problem(None, "no trusted public key: signatures cannot be checked (pass --public-key)")
    with _snapshot(engine) as conn:
        head = conn.execute(select(HEAD).where(HEAD.c.id == CHAIN_HEAD_ID)).one_or_none()
        verifier.load_checkpoints(read_checkpoints(conn))
        first_prev: list[str] = []
        last_hash: list[str] = []

        def rows():
            result = conn.execution_options(yield_per=2000).execute(select(ENTRIES).order_by(ENTRIES.c.seq))
            for row in result:
                if not first_prev:
                    first_prev.append(row.prev_hash)
                last_hash[:] = [row.entry_hash]
                yield row

        verifier.check_entries(rows())
    verifier.check_start(first_prev[0] if first_prev else None)
    verifier.check_tail(head, last_hash[0] if last_hash else None)
    return verifier.report


class _snapshot:
    """A read-only connection that sees one consistent state of the log while writers go on."""

    def __init__(self, engine: Engine):
        self.engine = engine

    def __enter__(self) -> Connection:
        if self.engine.dialect.name == "sqlite":
            self.conn = self.engine.connect()
            self.conn.exec_driver_sql("BEGIN")  # a WAL read transaction: one snapshot until it ends
        else:
            self.conn = self.engine.connect().execution_options(isolation_level="REPEATABLE READ")
            self.conn.exec_driver_sql("SET TRANSACTION READ ONLY")
        return self.conn

    def __exit__(self, *exc) -> None:
        self.conn.rollback()
        self.conn.close()
