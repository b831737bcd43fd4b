from sqlalchemy.orm import DeclarativeBase


class Base(DeclarativeBase):
    """Declarative base of every gateway table; Alembic migrations in migrations/ create them."""
