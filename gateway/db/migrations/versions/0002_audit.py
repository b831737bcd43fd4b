"""audit log: chained entries, signed checkpoints, chain head

Revision ID: 0002_audit
Revises: 0001_identity
"""
from alembic import op
import sqlalchemy as sa

revision = "0002_audit"
down_revision = "0001_identity"
branch_labels = None
depends_on = None

GENESIS_HASH = "0" * 64


def upgrade() -> None:
    op.create_table(
        "audit_entries",
        sa.Column("seq", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("entry_id", sa.String(36), nullable=False, unique=True),
        sa.Column("kind", sa.String(24), nullable=False),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("request_id", sa.String(128), nullable=True),
        sa.Column("team", sa.String(64), nullable=True),
        sa.Column("subject", sa.String(512), nullable=True),
        sa.Column("model", sa.String(256), nullable=True),
        sa.Column("status", sa.String(16), nullable=True),
        sa.Column("http_status", sa.Integer, nullable=True),
        sa.Column("data", sa.Text, nullable=False),
        sa.Column("prev_hash", sa.String(64), nullable=False),
        sa.Column("entry_hash", sa.String(64), nullable=False),
    )
    op.create_index("ix_audit_entries_request_id", "audit_entries", ["request_id"])
    op.create_index("ix_audit_entries_team_seq", "audit_entries", ["team", "seq"])
    op.create_index("ix_audit_entries_occurred_at", "audit_entries", ["occurred_at"])
    op.create_index("ix_audit_entries_recorded_at", "audit_entries", ["recorded_at"])
    op.create_table(
        "audit_checkpoints",
        sa.Column("seq", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("entry_hash", sa.String(64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("key_id", sa.String(32), nullable=False),
        sa.Column("signature", sa.String(128), nullable=False),
    )
    head = op.create_table(
        "audit_chain_head",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("last_seq", sa.BigInteger, nullable=False),
        sa.Column("last_hash", sa.String(64), nullable=False),
        sa.Column("last_time", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_checkpoint_seq", sa.BigInteger, nullable=False),
        sa.Column("last_checkpoint_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("key_id", sa.String(32), nullable=True),
        sa.Column("signature", sa.String(128), nullable=True),
    )
    # The one row every append locks; it exists from the start so appends never race to create it.
    op.bulk_insert(head, [{"id": 1, "last_seq": 0, "last_hash": GENESIS_HASH, "last_checkpoint_seq": 0}])


def downgrade() -> None:
    op.drop_table("audit_chain_head")
    op.drop_table("audit_checkpoints")
    op.drop_index("ix_audit_entries_recorded_at", table_name="audit_entries")
    op.drop_index("ix_audit_entries_occurred_at", table_name="audit_entries")
    op.drop_index("ix_audit_entries_team_seq", table_name="audit_entries")
    op.drop_index("ix_audit_entries_request_id", table_name="audit_entries")
    op.drop_table("audit_entries")
