"""admin policy: team scheduling, team model allow-lists, model approvals

Revision ID: 0003_policy
Revises: 0002_audit
"""
from alembic import op
import sqlalchemy as sa

revision = "0003_policy"
down_revision = "0002_audit"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "team_scheduling",
        sa.Column("team", sa.String(64), sa.ForeignKey("teams.name"), primary_key=True),
        sa.Column("priority", sa.Integer, nullable=True),
        sa.Column("weight", sa.Float, nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_by", sa.String(200), nullable=False, server_default=""),
    )
    op.create_table(
        "team_model_access",
        sa.Column("team", sa.String(64), sa.ForeignKey("teams.name"), primary_key=True),
        sa.Column("allowed_models", sa.JSON, nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_by", sa.String(200), nullable=False, server_default=""),
    )
    op.create_table(
        "model_approvals",
        sa.Column("model", sa.String(256), primary_key=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("note", sa.String(500), nullable=False, server_default=""),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_by", sa.String(200), nullable=False, server_default=""),
    )


def downgrade() -> None:
    op.drop_table("model_approvals")
    op.drop_table("team_model_access")
    op.drop_table("team_scheduling")
