"""Request dependencies: settings, a database session, the caller's tenant, a job of that tenant."""

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Path
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from app.auth import authenticate_key
from app.config import Settings, get_settings
from app.db import get_sessionmaker
from app.errors import Forbidden, Unauthorized
from app.models import ApiKey, Job, Tenant
from app.ratelimit import check_rate_limit
from app.services.jobs import get_job

SettingsDep = Annotated[Settings, Depends(get_settings)]


def get_db(settings: SettingsDep) -> Iterator[Session]:
    session = get_sessionmaker(settings.resolved_database_url)()
    try:
        yield session
    finally:
        session.close()


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


def get_tenant(key: ApiKeyDep) -> Tenant:
    return key.tenant


TenantDep = Annotated[Tenant, Depends(get_tenant)]


def get_admin_key(key: ApiKeyDep) -> ApiKey:
    if not key.is_admin:
        raise Forbidden("this call needs an admin API key")
    return key


AdminDep = Annotated[ApiKey, Depends(get_admin_key)]


def get_tenant_job(db: SessionDep, tenant: TenantDep, job_id: Annotated[str, Path(max_length=64)]) -> Job:
    return get_job(db=db, tenant=tenant, job_id=job_id)


JobDep = Annotated[Job, Depends(get_tenant_job)]
