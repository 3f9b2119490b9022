"""Keyset pages of a tenant's rows, newest first (jobs, searches): one cursor rule for every list."""

from typing import Any

from sqlalchemy import Select, and_, or_, select
from sqlalchemy.orm import Session

from app.errors import InvalidRequest


def newest_first(*, db: Session, model: Any, query: Select, tenant_id: str, after: str | None, limit: int,
                 noun: str) -> tuple[list[Any], bool]:
    """Return up to ``limit`` rows of ``query`` after the tenant's row ``after``, and whether more follow.

    ``model`` has ``id``, ``tenant_id`` and ``created_at``; ties on ``created_at`` are ordered by id.
    An unknown cursor (or another tenant's) is a 422 on ``query.after``.
    """
    if after is not None:
        cursor = db.scalar(select(model).where(model.id == after, model.tenant_id == tenant_id))
        if cursor is None:
            raise InvalidRequest(f"unknown cursor {after!r}", errors=[
                {"field": "query.after", "message": f"no such {noun}", "type": "invalid_cursor"}])
        query = query.where(or_(model.created_at < cursor.created_at,
                                and_(model.created_at == cursor.created_at, model.id < cursor.id)))
    rows = list(db.scalars(query.order_by(model.created_at.desc(), model.id.desc()).limit(limit + 1)))
    return rows[:limit], len(rows) > limit
