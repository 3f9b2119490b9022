"""Request dependencies: settings, a database session, the caller's tenant, a job of that tenant.

Every sync dependency costs a hop to the threadpool and back (profiled: the hand-offs were ~20 % of the
status request's CPU), so only the ones that wait on the database are sync; the rest are ``async def``
and run on the event loop without I/O.
"""

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Annotated

from fastapi import Depends, Path, Request
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
    """One permit per pooled connection, per event loop; None for a pool without a bound."""
    capacity = pool_capacity(url)
    if capacity is None:
        return None
    key = (id(asyncio.get_running_loop()), url)
    if key not in _permits:
        _permits[key] = asyncio.Semaphore(capacity)
    return _permits[key]


async def get_db(request: Request, settings: SettingsDep) -> AsyncIterator[Session]:
    # A request holds its pooled connection across threadpool hops (key check, job lookup, handler,
    # response validation, each a hop). With more requests than connections, a burst filled every
    # threadpool token with requests waiting for a connection while every connection was held by a
    # request waiting for a token: nothing moved until the pool timed out (tests/api/test_request_burst.py).
    # So at most as many requests as the pool has connections hold a session; the others wait here, on
    # the event loop, holding neither a token nor a connection.
    permits = _db_permits(settings.resolved_database_url)
    if permits is not None:
        await permits.acquire()
    # GET and HEAD never write (no route of theirs does), so their session runs in autocommit: no BEGIN,
    # no ROLLBACK, and closing it does no I/O. Opening any session does no I/O (it connects on first
    # use); closing a transactional one sends a ROLLBACK, so that runs in the threadpool (shielded from
    # cancellation by anyio, so the connection always goes back to the pool).
    read_only = request.method in READ_ONLY_METHODS
    session = get_sessionmaker(settings.resolved_database_url, autocommit=read_only)()
    session.info["release_permit"] = _releaser(permits)
    try:
        yield session
    finally:
        if session.in_transaction() and not read_only:
            await run_in_threadpool(session.close)
        else:
            session.close()
        session.info["release_permit"]()


def _releaser(permits: asyncio.Semaphore | None) -> Callable[[], None]:
    """Give the permit back once, from the event loop (a stream gives it back early: release_session)."""
    released = False

    def release() -> None:
        nonlocal released
        if permits is not None and not released:
            released = True
            permits.release()

    return release


def release_session(db: Session) -> None:
    """Close a request's session now and give its permit back (a stream that outlives its queries)."""
    db.close()
    db.info["release_permit"]()


SessionDep = Annotated[Session, Depends(get_db)]
_bearer = HTTPBearer(auto_error=False, description="an API key: `Authorization: Bearer dk_...`")


def get_api_key(db: SessionDep, settings: SettingsDep,
                credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]) -> ApiKey:
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise Unauthorized("missing API key: send 'Authorization: Bearer <key>'",
                           headers={"WWW-Authenticate": "Bearer"})
    key = authenticate_key(db=db, plain_key=credentials.credentials)
    if key is None:
        raise Unauthorized("invalid or revoked API key", headers={"WWW-Authenticate": "Bearer"})
    check_rate_limit(settings=settings, key_sha256=key.key_sha256)
    return key


ApiKeyDep = Annotated[ApiKey, Depends(get_api_key)]


async def get_tenant(key: ApiKeyDep) -> Tenant:
    return key.tenant  # loaded with the key (one query), so no I/O here


TenantDep = Annotated[Tenant, Depends(get_tenant)]


async def get_admin_key(key: ApiKeyDep) -> ApiKey:
    if not key.is_admin:
        raise Forbidden("this call needs an admin API key")
    return key


AdminDep = Annotated[ApiKey, Depends(get_admin_key)]


def get_tenant_job(db: SessionDep, tenant: TenantDep, job_id: Annotated[str, Path(max_length=64)]) -> Job:
    return get_job(db=db, tenant=tenant, job_id=job_id)


JobDep = Annotated[Job, Depends(get_tenant_job)]
