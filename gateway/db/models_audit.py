"""The audit log: append-only hash-chained entries, their signed checkpoints, and the chain head.

Rows of audit_entries are never updated. The chain head is the one row every append locks; it holds
the last sequence number and hash, signed, so a truncated or extended tail is detectable.
"""
from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, DateTime, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from gateway.db.base import Base
from gateway.identifiers import MODEL_NAME_MAX, REQUEST_ID_MAX, SUBJECT_MAX, TEAM_NAME_MAX

# The head row's fixed primary key: there is one chain per database.
CHAIN_HEAD_ID = 1


class AuditEntry(Base):
    __tablename__ = "audit_entries"

    # gap-free, assigned under the chain-head lock: 1, 2, 3, ...
    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    # chosen by the writer before the append; makes re-appending a spooled entry idempotent
    entry_id: Mapped[str] = mapped_column(String(36), unique=True)
    # request, request_open, request_complete, admin, access, purge
    kind: Mapped[str] = mapped_column(String(24))
    recorded_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))  # append time, non-decreasing
    occurred_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))  # when the event happened
    request_id: Mapped[str | None] = mapped_column(String(REQUEST_ID_MAX), nullable=True)
    team: Mapped[str | None] = mapped_column(String(TEAM_NAME_MAX), nullable=True)
    subject: Mapped[str | None] = mapped_column(String(SUBJECT_MAX), nullable=True)
    model: Mapped[str | None] = mapped_column(String(MODEL_NAME_MAX), nullable=True)
    status: Mapped[str | None] = mapped_column(String(16), nullable=True)
    http_status: Mapped[int | None] = mapped_column(Integer, nullable=True)
    data: Mapped[str] = mapped_column(Text)  # canonical JSON, hashed byte for byte
    prev_hash: Mapped[str] = mapped_column(String(64))
    entry_hash: Mapped[str] = mapped_column(String(64))

    __table_args__ = (
        Index("ix_audit_entries_request_id", "request_id"),
        Index("ix_audit_entries_team_seq", "team", "seq"),
        Index("ix_audit_entries_occurred_at", "occurred_at"),
        Index("ix_audit_entries_recorded_at", "recorded_at"),
    )


class AuditCheckpoint(Base):
    __tablename__ = "audit_checkpoints"

    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    entry_hash: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    key_id: Mapped[str] = mapped_column(String(32))
    signature: Mapped[str] = mapped_column(String(128))  # base64 Ed25519 over the canonical statement


class AuditChainHead(Base):
    __tablename__ = "audit_chain_head"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    last_seq: Mapped[int] = mapped_column(BigInteger)
    last_hash: Mapped[str] = mapped_column(String(64))
    last_time: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    last_checkpoint_seq: Mapped[int] = mapped_column(BigInteger)
    last_checkpoint_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    # the head's own signed statement (seq, hash, time); NULL only before the first append
    key_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    signature: Mapped[str | None] = mapped_column(String(REQUEST_ID_MAX), nullable=True)
