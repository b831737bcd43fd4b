"""The local spool: entries the database could not take, kept in fsync'd append-only files until it can.

Each writer owns one file in the spool directory (``spool-<pid>-<random>.jsonl``) and holds an exclusive
``flock`` on it while it lives. A file nobody holds belongs to a writer that died (even by ``kill -9``);
any writer adopts and drains it. An entry is acknowledged only after its line is fsync'd.

Draining appends the spooled entries to the chain with ``skip_existing``, so a drain interrupted after
some commits and repeated later never duplicates an entry. Only then is the file emptied (own) or
removed (adopted). The directory must be on a local file system (``flock`` semantics).

Line format: ``{"entry": <EntryDraft.to_json()>, "sha256": <hex of canonical_json(entry)>}``. A last
line torn by a crash was never acknowledged and is dropped; any other unreadable line stops the drain
(SpoolCorrupt) and leaves the file for an operator.
"""
from __future__ import annotations

import fcntl
import json
import logging
import os
import pathlib
import uuid
from collections.abc import Iterator, Sequence

from gateway.audit.canonical import canonical_json, sha256_hex
from gateway.audit.chain import ChainStore
from gateway.audit.entries import EntryDraft
from gateway.audit.errors import AuditError, AuditUnavailable

log = logging.getLogger(__name__)

SPOOL_GLOB = "spool-*.jsonl"


class SpoolCorrupt(AuditError):
    """A spool file holds an unreadable line before its end (not a torn final write)."""


def _fsync_dir(directory: pathlib.Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _lock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False


class Spool:
    """One writer's spool in a shared directory. Not thread-safe: one writer thread drives it."""

    def __init__(self, directory: str | os.PathLike):
        self.directory = pathlib.Path(directory)
        self._path: pathlib.Path | None = None
        self._fd: int | None = None
        self._size = 0

    # --- writing -------------------------------------------------------------------------------
    def append(self, drafts: Sequence[EntryDraft]) -> None:
        """Appends drafts and fsyncs; returns only once they are durable. Raises AuditUnavailable on I/O failure."""
        if not drafts:
            return
        payload = "".join(self._line(d) for d in drafts).encode("utf-8")
        try:
            fd = self._own_fd()
            os.write(fd, payload)  # O_APPEND: one write, at the end
            os.fsync(fd)
        except OSError as exc:
            self._rollback()
            raise AuditUnavailable(f"audit spool write failed: {exc}") from exc
        self._size += len(payload)

    @staticmethod
    def _line(draft: EntryDraft) -> str:
        entry = draft.to_json()
        return json.dumps({"entry": entry, "sha256": sha256_hex(canonical_json(entry))}, ensure_ascii=False) + "\n"

    def _own_fd(self) -> int:
        if self._fd is None:
            self.directory.mkdir(parents=True, exist_ok=True)
            path = self.directory / f"spool-{os.getpid()}-{uuid.uuid4().hex[:12]}.jsonl"
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            fcntl.flock(fd, fcntl.LOCK_EX)
            _fsync_dir(self.directory)  # the file's name is durable too
            self._path, self._fd, self._size = path, fd, 0
        return self._fd

    def _rollback(self) -> None:
        # A failed write may have left part of a line: cut back to the last whole one.
        if self._fd is not None:
            try:
                os.ftruncate(self._fd, self._size)
            except OSError:
                pass

    # --- draining ------------------------------------------------------------------------------
    @property
    def own_pending(self) -> bool:
        """Whether this writer has spooled entries not yet drained (later entries must queue behind them)."""
        return self._size > 0

    def has_pending(self) -> bool:
        """Whether this writer has spooled entries, or another spool file exists (maybe left by a dead writer)."""
        if self._size > 0:
            return True
        return any(p != self._path for p in self.directory.glob(SPOOL_GLOB)) if self.directory.is_dir() else False

    def drain(self, store: ChainStore, batch_size: int = 512) -> int:
        """Appends every spooled entry (orphaned files first, then this writer's) to the chain.

        Returns how many entries were newly appended. Raises AuditUnavailable when the database
        fails midway (the files stay; a later drain resumes without duplicates), SpoolCorrupt for an
        unreadable line that is not a torn tail.
        """
        appended = 0
        if self.directory.is_dir():
            for path in sorted(self.directory.glob(SPOOL_GLOB)):
                if path == self._path:
                    continue
                appended += self._drain_orphan(path, store, batch_size)
        if self._path is not None and self._size > 0:
            appended += self._drain_file(self._path, store, batch_size)
            os.ftruncate(self._fd, 0)
            os.fsync(self._fd)
            self._size = 0
        return appended

    def _drain_orphan(self, path: pathlib.Path, store: ChainStore, batch_size: int) -> int:
        try:
            fd = os.open(path, os.O_RDWR)
        except FileNotFoundError:
            return 0  # another writer drained it just now
        try:
            if not _lock(fd):
                return 0  # its writer is alive
            if not path.exists():
                return 0  # drained and removed by another writer between our open and our lock
            try:
                appended = self._drain_file(path, store, batch_size)
            except SpoolCorrupt:
                # Keep what could not be read for an operator, out of the way of future drains.
                path.rename(path.with_name(path.name + ".corrupt"))
                log.error("audit spool: %s has an unreadable line; moved aside as %s.corrupt", path.name, path.name)
                raise
            path.unlink()
            _fsync_dir(self.directory)
            log.info("audit spool: drained %d entries left by a stopped writer (%s)", appended, path.name)
            return appended
        finally:
            os.close(fd)

    def _drain_file(self, path: pathlib.Path, store: ChainStore, batch_size: int) -> int:
        appended = 0
        chunk: list[EntryDraft] = []
        for draft in read_spool_file(path):
            chunk.append(draft)
            if len(chunk) >= batch_size:
                appended += len(store.append(chunk, skip_existing=True).refs)
                chunk = []
        if chunk:
            appended += len(store.append(chunk, skip_existing=True).refs)
        return appended

    def close(self) -> None:
        """Releases this writer's file: removed when empty, else left (locked no more) for the next drain."""
        if self._fd is None:
            return
        if self._size == 0 and self._path is not None:
            self._path.unlink(missing_ok=True)
        os.close(self._fd)
        self._fd = None


def read_spool_file(path: str | os.PathLike) -> Iterator[EntryDraft]:
    """The drafts in a spool file, in order; a torn last line is skipped. Raises SpoolCorrupt."""
    with open(path, "rb") as handle:
        lines = handle.read().split(b"\n")
    # After the final newline comes b"" (or a torn, never-acknowledged partial line).
    whole, tail = lines[:-1], lines[-1]
    if tail:
        log.warning("audit spool %s: dropping a torn final line (%d bytes, never acknowledged)", path, len(tail))
    for number, raw in enumerate(whole, start=1):
        try:
            obj = json.loads(raw)
            entry = obj["entry"]
            if sha256_hex(canonical_json(entry)) != obj["sha256"]:
                raise ValueError("checksum mismatch")
            draft = EntryDraft.from_json(entry)
        except (ValueError, KeyError, TypeError) as exc:
            raise SpoolCorrupt(f"{path}: line {number} is unreadable ({exc}); fix or move the file aside") from None
        yield draft
