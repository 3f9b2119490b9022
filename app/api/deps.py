"""Request dependencies: settings, a database session, the caller's tenant, a job of that tenant."""

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Path
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from app.auth import authenticate
from app.config import Settings, get_settings
from app.db import get_sessionmaker
from app.errors import Unauthorized
from app.models import Job, Tenant
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


def get_tenant(db: SessionDep, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]) -> Tenant:
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise Unauthorized("missing API key: send 'Authorization: Bearer <key>'",
                           headers={"WWW-Authenticate": "Bearer"})
    tenant = authenticate(db=db, plain_key=credentials.credentials)
    if tenant is None:
        raise Unauthorized("invalid or revoked API key", headers={"WWW-Authenticate": "Bearer"})
    return tenant


TenantDep = Annotated[Tenant, Depends(get_tenant)]


def get_tenant_job(db: SessionDep, tenant: TenantDep, job_id: Annotated[str, Path(max_length=64)]) -> Job:
    return get_job(db=db, tenant=tenant, job_id=job_id)


JobDep = Annotated[Job, Depends(get_tenant_job)]
