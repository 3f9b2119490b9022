"""Request dependencies: settings, a database session, the caller's tenant, a job of that tenant.

Every sync dependency costs a hop to the threadpool and back (profiled: the hand-offs were ~20 % of the
status request's CPU), so only the ones that wait on the database are sync; the rest are ``async def``
and run on the event loop without I/O.
"""

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated

from fastapi import Depends, Path, Query, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from app.auth import authenticate_key
from app.config import Settings, get_settings
from app.db import get_sessionmaker, pool_capacity
from app.errors import Forbidden, Unauthorized
from app.models import ApiKey, Job, Tenant
from app.ratelimit import check_rate_limit
from app.services.jobs import get_job


async def settings_dep() -> Settings:
    return get_settings()  # cached; async so that reading it costs no threadpool hop


SettingsDep = Annotated[Settings, Depends(settings_dep)]


READ_ONLY_METHODS = frozenset({"GET", "HEAD"})


_permits: dict[tuple[int, str], asyncio.Semaphore] = {}


def _db_permits(url: str) -> asyncio.Semaphore | None:
    """One permit per kept pooled connection, per event loop; None for a pool without a bound."""
    capacity = pool_capacity(url)
    if capacity is None:
        return None
    key = (id(asyncio.get_running_loop()), url)
    if key not in _permits:
        _permits[key] = asyncio.Semaphore(capacity)
    return _permits[key]


class _Permit:
    """A request's right to hold a pooled connection: taken before its session is used, given back once."""

    def __init__(self, semaphore: asyncio.Semaphore | None):
        self.semaphore, self.held = semaphore, False

    async def take(self) -> None:
        if self.semaphore is not None and not self.held:
            await self.semaphore.acquire()
            self.held = True

    def give_back(self) -> None:
        if self.semaphore is not None and self.held:
            self.held = False
            self.semaphore.release()


async def get_db(request: Request, settings: SettingsDep) -> AsyncIterator[Session]:
    # A request holds its pooled connection across threadpool hops (key check, job lookup, handler,
    # response validation, each a hop). With more requests than connections, a burst filled every
    # threadpool token with requests waiting for a connection while every connection was held by a
    # request waiting for a token: nothing moved until the pool timed out (tests/api/test_request_burst.py).
    # So at most as many requests as the pool keeps connections hold a session; the others wait here, on
    # the event loop, holding neither a token nor a connection.
    permit = _Permit(_db_permits(settings.resolved_database_url))
    await permit.take()
    # GET and HEAD never write (no route of theirs does), so their session runs in autocommit: no BEGIN,
    # no ROLLBACK, and closing it does no I/O. Opening any session does no I/O (it connects on first
    # use); closing a transactional one sends a ROLLBACK, so that runs in the threadpool (shielded from
    # cancellation by anyio, so the connection always goes back to the pool).
    read_only = request.method in READ_ONLY_METHODS
    session = get_sessionmaker(settings.resolved_database_url, autocommit=read_only)()
    session.info["permit"] = permit
    try:
        yield session
    finally:
        if session.in_transaction() and not read_only:
            await run_in_threadpool(session.close)
        else:
            session.close()
        permit.give_back()


def release_session(db: Session) -> None:
    """Close a request's session now and give its permit back (a stream that outlives its queries)."""
    db.close()
    db.info["permit"].give_back()


@asynccontextmanager
async def session_paused(db: Session) -> AsyncIterator[None]:
    """Give the connection and the permit back during a long wait that needs no database (an upload's
    body arriving); the session is usable again after it (its loaded rows stay loaded)."""
    if db.in_transaction():
        await run_in_threadpool(db.commit)
    db.info["permit"].give_back()
    try:
        yield
    finally:
        await db.info["permit"].take()


SessionDep = Annotated[Session, Depends(get_db)]
# An event number: the seq columns are 32-bit INTEGERs, so a larger `after` could match nothing, and
# SQLite refused one past 2**63 with an OverflowError (a 500, found by schemathesis): 422 instead.
EventCursor = Annotated[int, Query(ge=0, le=2**31 - 1, description="the last event number seen")]
_bearer = HTTPBearer(auto_error=False, description="an API key: `Authorization: Bearer dk_...`")


Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]


def _checked_key(db: Session, settings: Settings, credentials: HTTPAuthorizationCredentials | None) -> ApiKey:
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise Unauthorized("missing API key: send 'Authorization: Bearer <key>'",
                           headers={"WWW-Authenticate": "Bearer"})
    key = authenticate_key(db=db, plain_key=credentials.credentials)
    if key is None:
        raise Unauthorized("invalid or revoked API key", headers={"WWW-Authenticate": "Bearer"})
    check_rate_limit(settings=settings, key_sha256=key.key_sha256)
    return key


def get_api_key(db: SessionDep, settings: SettingsDep, credentials: Credentials) -> ApiKey:
    return _checked_key(db, settings, credentials)


ApiKeyDep = Annotated[ApiKey, Depends(get_api_key)]


async def get_tenant(key: ApiKeyDep) -> Tenant:
    return key.tenant  # loaded with the key (one query), so no I/O here


TenantDep = Annotated[Tenant, Depends(get_tenant)]


async def get_admin_key(key: ApiKeyDep) -> ApiKey:
    if not key.is_admin:
        raise Forbidden("this call needs an admin API key")
    return key


AdminDep = Annotated[ApiKey, Depends(get_admin_key)]


def get_tenant_job(db: SessionDep, settings: SettingsDep, credentials: Credentials,
                   job_id: Annotated[str, Path(max_length=64)]) -> Job:
    # The key check and the lookup in one threadpool hop, not two (each hop was ~10 % of a status
    # request's CPU, profiled with py-spy): this is the most frequent request (clients poll it).
    key = _checked_key(db, settings, credentials)
    return get_job(db=db, tenant=key.tenant, job_id=job_id)


JobDep = Annotated[Job, Depends(get_tenant_job)]
