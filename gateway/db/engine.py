"""Engine creation and schema migration for the gateway database."""
from __future__ import annotations

import os
import pathlib

from sqlalchemy import Engine, create_engine, event

from ward.paths import default_data_dir

MIGRATIONS = pathlib.Path(__file__).resolve().parent / "migrations"


def database_url(data_dir: str | os.PathLike | None = None, url: str | None = None) -> str:
    """The URL to use: an explicit one, then $WARD_DATABASE_URL, then SQLite in the data directory."""
    if url:
        return url
    if os.environ.get("WARD_DATABASE_URL"):
        return os.environ["WARD_DATABASE_URL"]
    d = pathlib.Path(data_dir) if data_dir else default_data_dir()
    d.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{d / 'ward.db'}"


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    # WAL lets readers run beside the writer; FULL sync makes a commit durable before it returns.
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=FULL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=10000")
    cur.close()


def create_db_engine(url: str, **kwargs) -> Engine:
    """A SQLAlchemy engine with the settings Ward relies on for each backend."""
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30}, **kwargs)
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    kwargs.setdefault("pool_pre_ping", True)
    return create_engine(url, **kwargs)


def upgrade_to_head(url: str) -> None:
    """Applies every Alembic migration to the database at url (idempotent)."""
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    command.upgrade(cfg, "head")
