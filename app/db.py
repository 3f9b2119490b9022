"""Engine, sessions and the declarative Base (with a constraint naming convention for Alembic)."""

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from functools import lru_cache

from sqlalchemy import DateTime, MetaData, create_engine, event
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker
from sqlalchemy.pool import QueuePool
from sqlalchemy.types import TypeDecorator

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite hands back naive values)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: object) -> datetime | None:
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value

    def process_result_value(self, value: datetime | None, dialect: object) -> datetime | None:
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value


def utcnow() -> datetime:
    return datetime.now(UTC)


def _sqlite_pragmas(dbapi_connection, _record) -> None:  # type: ignore[no-untyped-def]
    # WAL lets the API read while a worker writes; busy_timeout rides out short write locks.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


@lru_cache(maxsize=8)
def get_engine(url: str) -> Engine:
    """Return one pooled engine per database URL."""
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20)


@lru_cache(maxsize=8)
def pool_capacity(url: str) -> int | None:
    """How many connections the URL's pool keeps open (its size, without the overflow); None when unbounded.

    Overflow connections are closed when they come back, so requests beyond the pool's size opened and
    closed a connection each (py-spy: connect, ping and close were ~8 % of a status request's CPU under
    50 clients). The overflow stays for the others: the stream poller, the validator, health checks.
    """
    pool = get_engine(url).pool
    return pool.size() if isinstance(pool, QueuePool) else None


@lru_cache(maxsize=16)
def get_sessionmaker(url: str, *, autocommit: bool = False) -> sessionmaker[Session]:
    """Return the session factory for a URL; ``autocommit=True`` is for read-only requests."""
    engine = get_engine(url)
    if autocommit:
        # Each statement is its own transaction: no BEGIN before the first query and no ROLLBACK when the
        # connection goes back to the pool, two round trips fewer per request (same pool). Reads see
        # nothing different: under READ COMMITTED (the PostgreSQL default used here) every statement
        # takes its own snapshot inside a transaction too. Writes would commit statement by statement,
        # so only sessions that never write may be opened this way.
        engine = engine.execution_options(isolation_level="AUTOCOMMIT")
    return sessionmaker(bind=engine, expire_on_commit=False)


@contextmanager
def session_scope(url: str) -> Iterator[Session]:
    """Open a session for plain code (worker, CLI); commits are explicit, rollback on error."""
    session = get_sessionmaker(url)()
    try:
        yield session
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()
