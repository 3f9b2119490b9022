"""API keys: random bearer tokens stored only as sha256, scoped to one tenant."""

import hashlib
import hmac
import secrets

from sqlalchemy import bindparam, select
from sqlalchemy.orm import Session, contains_eager

from app.db import utcnow
from app.models import ApiKey, Tenant

KEY_PREFIX = "dk_"


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def get_or_create_tenant(*, db: Session, name: str) -> Tenant:
    tenant = db.scalar(select(Tenant).where(Tenant.name == name))
    if tenant is None:
        tenant = Tenant(name=name)
        db.add(tenant)
        db.flush()
    return tenant


def create_api_key(*, db: Session, tenant_name: str, key_name: str = "default",
                   is_admin: bool = False) -> tuple[ApiKey, str]:
    """Create a key for a new or existing tenant; return the row and the plain key (shown once)."""
    tenant = get_or_create_tenant(db=db, name=tenant_name)
    plain = KEY_PREFIX + secrets.token_urlsafe(32)
    row = ApiKey(tenant_id=tenant.id, name=key_name, key_sha256=hash_key(plain), prefix=plain[:10],
                 is_admin=is_admin)
    db.add(row)
    db.commit()
    return row, plain


def register_api_key(*, db: Session, tenant_name: str, plain_key: str, key_name: str = "dev") -> ApiKey:
    """Store a given key (the dev key of `distillery up`) unless it is already known."""
    digest = hash_key(plain_key)
    existing = db.scalar(select(ApiKey).where(ApiKey.key_sha256 == digest))
    if existing is not None:
        return existing
    tenant = get_or_create_tenant(db=db, name=tenant_name)
    row = ApiKey(tenant_id=tenant.id, name=key_name, key_sha256=digest, prefix=plain_key[:10])
    db.add(row)
    db.commit()
    return row


# Built once: every request runs it, and building + cache-keying a fresh select cost ~8 % of a status
# request's CPU in the profile. The tenant comes in the same query (no lazy load afterwards).
_ACTIVE_KEY_BY_HASH = (select(ApiKey).join(ApiKey.tenant).options(contains_eager(ApiKey.tenant))
                       .where(ApiKey.key_sha256 == bindparam("digest"), ApiKey.revoked_at.is_(None)))


def authenticate_key(*, db: Session, plain_key: str) -> ApiKey | None:
    """Return the active key row with its tenant loaded, or None."""
    digest = hash_key(plain_key)
    # Not cached: a revoked key must fail on the very next request, so every call asks the database.
    row = db.scalar(_ACTIVE_KEY_BY_HASH, {"digest": digest})
    # The lookup is by hash; the constant-time compare keeps the final check free of timing leaks.
    if row is None or not hmac.compare_digest(row.key_sha256, digest):
        return None
    return row


def authenticate(*, db: Session, plain_key: str) -> Tenant | None:
    """Return the tenant of an active key, or None."""
    row = authenticate_key(db=db, plain_key=plain_key)
    return None if row is None else row.tenant


def list_api_keys(*, db: Session, tenant_name: str | None = None) -> list[ApiKey]:
    query = select(ApiKey).join(Tenant).order_by(ApiKey.created_at)
    if tenant_name is not None:
        query = query.where(Tenant.name == tenant_name)
    return list(db.scalars(query))


def revoke_api_key(*, db: Session, key_id: str) -> ApiKey | None:
    """Mark a key revoked (it stops working at once); None if there is no such key."""
    row = db.get(ApiKey, key_id)
    if row is None:
        return None
    if row.revoked_at is None:
        row.revoked_at = utcnow()
        db.commit()
    return row
