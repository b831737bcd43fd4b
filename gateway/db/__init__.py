"""The gateway's database: teams, API keys, admin policy and the audit log (SQLite by default, PostgreSQL in production)."""
from gateway.db.base import Base
from gateway.db.engine import create_db_engine, database_url, upgrade_to_head

__all__ = ["Base", "create_db_engine", "database_url", "upgrade_to_head"]
