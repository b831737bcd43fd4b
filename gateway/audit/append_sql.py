"""The append path's statements, rendered once for the database's dialect and run on the driver.

An append runs once per batch on the request path. Run as SQLAlchemy Core statements, its
per-execution work (compiled-cache lookup, parameter processing, result set-up) cost more CPU than
SQLite spent on the statements themselves: about 0.15 ms of a 0.5 ms append at one request at a
time (``exec_driver_sql`` still set up a result per statement). Rendered once here, the same SQL
runs on the driver's cursor inside the transaction the SQLAlchemy connection began (on SQLite the
chain store begins it with ``Connection.begin`` and takes the lock on the driver; elsewhere its first
statement goes through SQLAlchemy; either way its ``commit`` ends the transaction as before),
and driver errors are raised as SQLAlchemy's (an outage is still an OperationalError, and a dropped
connection is invalidated). The datetime columns take the dialect's own conversion, from its
DateTime type.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, DateTime, exc
from sqlalchemy.engine import Dialect
from sqlalchemy.sql import Executable

from gateway.db.models_audit import AuditChainHead, AuditEntry

ENTRY_COLUMNS = tuple(c.name for c in AuditEntry.__table__.columns)
HEAD_VALUES = ("last_seq", "last_hash", "last_time", "last_checkpoint_seq", "last_checkpoint_at", "key_id", "signature")
HEAD_COLUMNS = tuple(c.name for c in AuditChainHead.__table__.columns)


class RenderedStatement:
    """One statement as the driver takes it: its SQL and how to lay out its parameters."""

    def __init__(self, statement: Executable, dialect: Dialect, values: Sequence[str] = ()) -> None:
        compiled = statement.compile(dialect=dialect, column_keys=list(values) or None)
        self.sql = compiled.string
        # Parameters the statement carries itself (e.g. the head row's id in its WHERE clause).
        self._fixed = {k: v for k, v in compiled.params.items() if k not in values}
        self._order = tuple(compiled.positiontup) if compiled.positional else None

    def params(self, values: Mapping[str, Any]) -> tuple | dict:
        merged = {**self._fixed, **values} if self._fixed else values
        if self._order is None:
            return dict(merged)
        return tuple(merged[name] for name in self._order)

    def execute(self, conn: Connection, values: Mapping[str, Any] | None = None, *, fetch_one: bool = False) -> Any:
        return _on_driver(conn, self.sql, self.params(values or {}), many=False, fetch_one=fetch_one)

    def execute_many(self, conn: Connection, rows: Sequence[Mapping[str, Any]]) -> None:
        _on_driver(conn, self.sql, [self.params(row) for row in rows], many=True, fetch_one=False)


def _on_driver(conn: Connection, sql: str, params: Any, *, many: bool, fetch_one: bool) -> Any:
    """Runs ``sql`` on the connection's driver cursor; driver errors leave as SQLAlchemy's."""
    dialect = conn.dialect
    raw = conn.connection.dbapi_connection
    cursor = None
    try:
        cursor = raw.cursor()  # fails on a closed connection: a disconnect like any other
        if many:
            cursor.executemany(sql, params)
            return None
        cursor.execute(sql, params)
        return cursor.fetchone() if fetch_one else None
    except dialect.loaded_dbapi.Error as error:
        invalidated = dialect.is_disconnect(error, raw, cursor)
        if invalidated:
            conn.invalidate(error)
        raise exc.DBAPIError.instance(sql, params, error, dialect.loaded_dbapi.Error,
                                      connection_invalidated=invalidated, dialect=dialect) from error
    finally:
        if cursor is not None:
            with contextlib.suppress(Exception):  # a dead connection's cursor may fail to close
                cursor.close()


class AppendStatements:
    """The head's lock and update and the entries' insert, for one dialect."""

    def __init__(self, lock_head: Executable, insert_entries: Executable, update_head: Executable, dialect: Dialect) -> None:
        self._lock_head = RenderedStatement(lock_head, dialect)
        self._insert_entries = RenderedStatement(insert_entries, dialect, ENTRY_COLUMNS)
        self._update_head = RenderedStatement(update_head, dialect, HEAD_VALUES)
        impl = DateTime(timezone=True).dialect_impl(dialect)
        self._time_to_db: Callable[[datetime | None], Any] | None = impl.bind_processor(dialect)
        self._time_from_db: Callable[[Any], datetime | None] | None = impl.result_processor(dialect, None)

    @staticmethod
    def on_driver(conn: Connection, sql: str) -> None:
        """Runs a statement without parameters or results (e.g. SQLite's ``BEGIN IMMEDIATE``) on the driver."""
        _on_driver(conn, sql, (), many=False, fetch_one=False)

    def lock_head(self, conn: Connection) -> Mapping[str, Any]:
        """The head row, locked for this transaction (SQLite: by the BEGIN IMMEDIATE before it)."""
        row = self._lock_head.execute(conn, fetch_one=True)
        if row is None:
            raise exc.NoResultFound("the audit chain has no head row")
        head = dict(zip(HEAD_COLUMNS, row))
        if self._time_from_db is not None:
            for name in ("last_time", "last_checkpoint_at"):
                head[name] = self._time_from_db(head[name])
        return head

    def insert_entries(self, conn: Connection, rows: Sequence[dict[str, Any]]) -> None:
        rows = [self._times_to_db(row, ("recorded_at", "occurred_at")) for row in rows]
        if len(rows) == 1:
            self._insert_entries.execute(conn, rows[0])
        else:
            self._insert_entries.execute_many(conn, rows)

    def update_head(self, conn: Connection, values: dict[str, Any]) -> None:
        self._update_head.execute(conn, self._times_to_db(values, ("last_time", "last_checkpoint_at")))

    def _times_to_db(self, values: dict[str, Any], names: tuple[str, ...]) -> dict[str, Any]:
        """``values`` with the datetime columns ``names`` as the dialect stores them."""
        convert = self._time_to_db
        if convert is None:
            return values
        return {**values, **{name: convert(values[name]) for name in names}}
