"""API key management (admin keys only)."""

from typing import Annotated

from fastapi import APIRouter, Path, Query

from app import auth
from app.api.deps import AdminDep, SessionDep
from app.api.problems import problems
from app.errors import NotFound
from app.schemas import KeyCreate, KeyCreated, KeyOut

router = APIRouter(prefix="/v1/keys", tags=["keys"])


@router.post("", status_code=201, response_model=KeyCreated, responses=problems(401, 403, 422))
def create_key(body: KeyCreate, _admin: AdminDep, db: SessionDep) -> KeyCreated:
    """Create a key for a new or existing tenant; the key is shown only in this response."""
    row, plain = auth.create_api_key(db=db, tenant_name=body.tenant, key_name=body.name, is_admin=body.admin)
    return KeyCreated(**KeyOut.from_key(row).model_dump(), key=plain)


@router.get("", response_model=list[KeyOut], responses=problems(401, 403, 422))
def list_keys(_admin: AdminDep, db: SessionDep,
              tenant: Annotated[str | None, Query(max_length=200)] = None) -> list[KeyOut]:
    """List keys (never the keys themselves), optionally of one tenant."""
    return [KeyOut.from_key(k) for k in auth.list_api_keys(db=db, tenant_name=tenant)]


@router.post("/{key_id}/revoke", response_model=KeyOut, responses=problems(401, 403, 404))
def revoke_key(key_id: Annotated[str, Path(max_length=64)], _admin: AdminDep, db: SessionDep) -> KeyOut:
    """Revoke a key; it stops working at once."""
    row = auth.revoke_api_key(db=db, key_id=key_id)
    if row is None:
        raise NotFound(f"key {key_id} not found")
    return KeyOut.from_key(row)
