"""AuditLog: the service the gateway calls per request; batches entries into group commits.

Every call returns only once its entry is durable: committed to the database, or (when a spool is
configured and the database is down) fsync'd into the spool. Calls made while a batch is being
committed wait for the next one, so concurrent requests share transactions and the log keeps up with
the gateway. Building an entry (capture level, redaction, JSON) and all I/O run on the log's own
writer thread, which wakes as soon as an entry is queued and hands each batch's results back to the
event loop in one call (no task or executor hop in between). A caller that is the only request the
gateway is serving may ask for its entry to be written inline instead (``alone=True``): on a log made
with ``inline_alone`` (a local SQLite file), when nothing is queued, the writer is idle and the last
write succeeded, the event loop writes it itself, the same way, and saves the two thread hand-offs
(about 0.1 ms of a one-client request's 2 ms); with nothing else to serve, the loop has nothing better
to do meanwhile. Never on a networked database, whose stalls would stall the loop.

Usage::

    log = AuditLog(store, capture_levels=..., redactor=...)
    await log.start()
    handle = await log.open(RequestStart(...))      # a stream: before its first byte
    ...
    await log.complete(handle, RequestEnd(...))     # before its last byte ([DONE])
    await log.record_request(start, end)            # a non-streamed answer or a rejection (401/429/400)
    await log.close()

Raises AuditUnavailable (HTTP 503: serve nothing) when the entry cannot be made durable, and
AuditInputError when the entry is malformed. An entry is queued before the call first suspends, so a
``complete`` issued from a cancelled task's ``finally`` is still written.
"""
from __future__ import annotations

import asyncio
import collections
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from gateway.audit.capture import CaptureLevel, Redactor
from gateway.audit.chain import ChainStore
from gateway.audit.correlation import current_request_id
from gateway.audit.entries import EntryDraft, EntryRef
from gateway.audit.errors import AuditClosed, AuditError, AuditInputError, AuditUnavailable
from gateway.audit.metrics import AuditMetrics
from gateway.audit.records import (
    Actor,
    OpenRequest,
    RequestEnd,
    RequestStart,
    access_draft,
    admin_draft,
    as_actor,
    complete_draft,
    open_draft,
    request_draft,
)
from gateway.audit.spool import Spool, SpoolCorrupt
from gateway.auth.principal import Principal

log = logging.getLogger(__name__)


class CaptureLevels(Protocol):
    def level_for(self, team: str | None) -> CaptureLevel: ...


@dataclass
class _Pending:
    build: Callable[[], EntryDraft]
    future: asyncio.Future
    queued_at: float = field(default_factory=time.perf_counter)
    draft: EntryDraft | None = None
    ref: EntryRef | None = None
    error: BaseException | None = None


@dataclass
class AuditStats:
    batches: int = 0
    entries: int = 0  # committed to the database directly
    spooled: int = 0  # fsync'd into the spool
    drained: int = 0  # moved from the spool into the database
    largest_batch: int = 0
    failures: int = 0  # batches refused with AuditUnavailable
    extra: dict[str, Any] = field(default_factory=dict)


class AuditLog:
    """The gateway's audit writer; one per process. Implements AdminChangeRecorder (gateway.auth.admin_audit)."""

    def __init__(
        self,
        store: ChainStore,
        *,
        capture_levels: CaptureLevels,
        redactor: Redactor | None = None,
        spool: Spool | None = None,
        max_batch: int = 512,
        drain_interval_s: float = 2.0,
        checkpoint_check_s: float | None = None,
        on_close: Callable[[], None] | None = None,
        inline_alone: bool = False,
    ):
        self.store = store
        self.capture_levels = capture_levels
        self.redactor = redactor or Redactor()
        self.spool = spool
        self.max_batch = max_batch
        self.drain_interval_s = drain_interval_s
        # How often idle time checks for a time-based checkpoint.
        self.checkpoint_check_s = checkpoint_check_s or max(1.0, min(60.0, store.policy.every_s / 4))
        self.stats = AuditStats()
        self.metrics = AuditMetrics(spool_pending=lambda: self._spool_pending)
        self.available = True  # False after a batch failed with no spool to fall back on
        self._on_close = on_close
        self.inline_alone = inline_alone
        self._pending: collections.deque[_Pending] = collections.deque()
        self._wakeup = threading.Condition()
        self._writing = threading.Lock()  # held while a batch or idle work runs (writer thread or inline)
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closing = False
        self._spool_pending = False  # own entries or other files wait in the spool directory
        self._last_checkpoint_check = time.monotonic()
        self._last_drain_try = 0.0

    # --- lifecycle -----------------------------------------------------------------------------
    async def start(self) -> None:
        """Starts the writer thread (which also drains, in the background, what a previous run spooled)."""
        if self._thread is not None:
            return
        self._loop = asyncio.get_running_loop()
        if self.spool is not None:
            self._spool_pending = await asyncio.to_thread(self.spool.has_pending)
        self._thread = threading.Thread(target=self._run, name="audit-writer", daemon=True)
        self._thread.start()

    async def close(self) -> None:
        """Writes everything queued, then stops. Later calls raise AuditClosed."""
        self._closing = True
        if self._thread is not None:
            with self._wakeup:
                self._wakeup.notify()
            await asyncio.to_thread(self._thread.join)
            self._thread = None
        close_store = getattr(self.store, "close", None)
        if close_store is not None:  # the connection the writer kept between batches
            await asyncio.to_thread(close_store)
        if self.spool is not None:
            self.spool.close()
        if self._on_close is not None:
            self._on_close()
            self._on_close = None

    # --- the API -------------------------------------------------------------------------------
    async def open(self, start: RequestStart) -> OpenRequest:
        """Records that a stream started (an incomplete record until completed). Returns once durable."""
        handle = OpenRequest(request_id=start.request_id)
        ref = await self._submit(lambda: open_draft(start, self._level(start), self.redactor, handle))
        handle.seq = ref.seq
        return handle

    async def complete(self, handle: OpenRequest, end: RequestEnd, *, alone: bool = False) -> EntryRef:
        """Records how an opened stream ended. Returns once durable: send the final byte only after.
        ``alone``: the caller is the only request being served (see the module's docstring)."""
        if handle.completed:
            raise AuditInputError(f"request {handle.request_id} was already completed")
        handle.completed = True
        return await self._submit(lambda: complete_draft(handle, end, self.redactor), alone=alone)

    async def record_request(self, start: RequestStart, end: RequestEnd, *, alone: bool = False) -> EntryRef:
        """Records a whole request in one entry. Returns once durable: send the response only after.
        ``alone``: the caller is the only request being served (see the module's docstring)."""
        return await self._submit(lambda: request_draft(start, end, self._level(start), self.redactor), alone=alone)

    async def record_admin_change(
        self,
        principal: Principal | Actor,
        action: str,
        target: str,
        before: dict[str, Any] | None,
        after: dict[str, Any] | None,
    ) -> None:
        """An admin change (teams, keys, quotas, policy) into the same chain. Returns once durable.
        The entry names the admin API request it was made in (``x-request-id``), when there is one."""
        actor = as_actor(principal)
        request_id = current_request_id()
        await self._submit(lambda: admin_draft(actor, action, target, before, after, request_id=request_id))

    async def record_access(
        self,
        who: Principal | Actor,
        action: str,
        query: dict[str, Any],
        *,
        allowed: bool,
        record_ids: list[str] | None = None,
        count: int | None = None,
        through_seq: int | None = None,
        client_address: str | None = None,
        http_status: int | None = None,
        request_id: str | None = None,
    ) -> EntryRef:
        """A read of the audit log or the admin API (who looked at what). Returns once durable. The
        entry names the request it answers (``x-request-id``; default: the request being served)."""
        actor = as_actor(who)
        request_id = request_id or current_request_id()
        return await self._submit(
            lambda: access_draft(
                actor,
                action,
                query,
                allowed=allowed,
                record_ids=record_ids,
                count=count,
                through_seq=through_seq,
                client_address=client_address,
                request_id=request_id,
                http_status=http_status,
            )
        )

    # --- the writer ----------------------------------------------------------------------------
    def _level(self, start: RequestStart) -> CaptureLevel:
        if start.capture_level is not None:
            return CaptureLevel.parse(start.capture_level)
        actor = as_actor(start.principal)
        return self.capture_levels.level_for(actor.team if actor else None)

    def _submit(self, build: Callable[[], EntryDraft], *, alone: bool = False) -> asyncio.Future:
        # Not a coroutine: the entry is queued (or written) at call time, before the caller can be
        # cancelled. close() runs on the same loop, so no entry can be queued after the writer saw it
        # closing.
        if self._closing or self._thread is None or not self._thread.is_alive():
            raise AuditClosed("the audit log is not running")
        future = self._loop.create_future()
        # Entries are only ever queued from this loop, so an empty queue stays empty while we write;
        # a writer busy with idle work keeps the lock, and the entry is queued as usual.
        if (alone and self.inline_alone and self.available and not self._spool_pending and not self._pending
                and self._writing.acquire(blocking=False)):
            item = _Pending(build, future)
            try:
                self._write_resolving([item])
            finally:
                self._writing.release()
            self._resolve([item])
            return future
        with self._wakeup:
            self._pending.append(_Pending(build, future))
            self._wakeup.notify()
        return future

    def _run(self) -> None:
        """The writer thread: batches what is queued, commits it, hands the results to the loop."""
        while True:
            with self._wakeup:
                if not self._pending and not self._closing:
                    self._wakeup.wait(self._idle_timeout())
                if not self._pending and self._closing:
                    return
            # Taken before the batch, so an entry written inline meanwhile never overtakes one queued earlier.
            with self._writing:
                with self._wakeup:
                    count = min(self.max_batch, len(self._pending))
                    batch = [self._pending.popleft() for _ in range(count)] if count else None
                if batch is None:
                    self._idle_tick()
                    continue
                self._write_resolving(batch)
            try:
                self._loop.call_soon_threadsafe(self._resolve, batch)
            except RuntimeError:  # the loop is gone: nobody is waiting any more
                log.warning("audit writer: event loop closed; %d entries written, not acknowledged", len(batch))

    def _write_resolving(self, batch: list[_Pending]) -> None:
        """Writes ``batch``; whatever happens, every item ends with a ref or an error."""
        try:
            self._write_batch(batch)
        except BaseException as error:  # the batch must always resolve, whatever happened
            failure = error if isinstance(error, AuditError) else AuditUnavailable(f"audit write failed: {error!r}")
            for item in batch:
                if item.error is None and item.ref is None:
                    item.error = failure
            if not isinstance(error, AuditUnavailable):
                log.exception("audit writer: unexpected failure")

    def _idle_timeout(self) -> float:
        timeout = self.checkpoint_check_s
        if self._spool_pending:
            timeout = min(timeout, self.drain_interval_s)
        return timeout

    def _idle_tick(self) -> None:
        try:
            self._tick_sync()
        except AuditError as error:
            log.warning("audit writer: idle work deferred: %s", error)
        except Exception:  # never let idle work end the writer: every later request would hang
            log.exception("audit writer: idle work failed")

    def _tick_sync(self) -> None:
        now = time.monotonic()
        if self.spool is not None and now - self._last_drain_try >= self.drain_interval_s:
            if self._spool_pending or self.spool.has_pending():
                self._drain_sync()
            else:
                self._last_drain_try = now
        if now - self._last_checkpoint_check >= self.checkpoint_check_s:
            self._last_checkpoint_check = now
            self.store.checkpoint_if_due()

    def _drain_sync(self) -> None:
        """Moves spooled entries into the database. Raises AuditUnavailable while it is still down."""
        self._last_drain_try = time.monotonic()
        try:
            self.stats.drained += self.spool.drain(self.store, self.max_batch)
        except SpoolCorrupt as error:
            log.error("audit writer: %s", error)
        self._spool_pending = self.spool.has_pending()

    def _write_batch(self, batch: list[_Pending]) -> None:
        """Builds drafts, then commits them (or spools them); on the writer thread, or inline while
        holding ``_writing``."""
        drafts = []
        for item in batch:
            try:
                item.draft = item.build()
                drafts.append(item.draft)
            except AuditError as error:
                item.error = error
            except Exception as error:  # a bug in a caller's data must not sink the batch
                item.error = AuditInputError(f"cannot record this entry: {error!r}")
        if not drafts:
            return
        self.stats.batches += 1
        self.stats.largest_batch = max(self.stats.largest_batch, len(drafts))
        refs = self._commit(drafts)
        by_id = {ref.entry_id: ref for ref in refs}
        for item in batch:
            if item.draft is not None:
                item.ref = by_id[item.draft.entry_id]

    def _commit(self, drafts: list[EntryDraft]) -> list[EntryRef]:
        if self.spool is not None and self.spool.own_pending:
            # Keep order: nothing goes to the database ahead of this writer's spooled entries. The
            # database is tried again once per drain interval, not per batch: during an outage a
            # connection attempt can take up to its timeout, and requests must not wait for it.
            if time.monotonic() - self._last_drain_try < self.drain_interval_s:
                return self._spool_batch(drafts)
            try:
                self._drain_sync()
            except AuditUnavailable:
                return self._spool_batch(drafts)
        try:
            refs = self.store.append(drafts).refs
        except AuditUnavailable:
            if self.spool is None:
                self.available = False
                self.stats.failures += 1
                raise
            self._last_drain_try = time.monotonic()  # the database just failed: spool until the next try
            return self._spool_batch(drafts)
        self.available = True
        self.stats.entries += len(refs)
        return refs

    def _spool_batch(self, drafts: list[EntryDraft]) -> list[EntryRef]:
        self.spool.append(drafts)  # raises AuditUnavailable if even the disk fails
        self._spool_pending = True
        self.stats.spooled += len(drafts)
        return [EntryRef(entry_id=d.entry_id, spooled=True) for d in drafts]

    def _resolve(self, batch: list[_Pending]) -> None:
        now = time.perf_counter()
        for item in batch:
            if item.ref is not None:
                self.metrics.observe_written(now - item.queued_at, spooled=item.ref.spooled)
            elif not isinstance(item.error, AuditInputError):  # a malformed entry is a caller's bug, not the writer's
                self.metrics.observe_failed()
            if item.future.done():
                continue  # the caller gave up waiting (cancelled); the entry was still written
            if item.error is not None:
                item.future.set_exception(item.error)
            elif item.ref is not None:
                item.future.set_result(item.ref)
            else:
                item.future.set_exception(AuditUnavailable("audit entry was not written"))
