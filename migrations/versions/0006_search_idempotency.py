"""searches.idempotency_key: POST /v1/searches takes an Idempotency-Key as POST /v1/jobs does

Unique per tenant, as on jobs; NULL (no key) repeats freely. A replay compares the stored request
(defaults filled in) with the new one, so no digest column is needed.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("searches", schema=None) as batch_op:
        batch_op.add_column(sa.Column("idempotency_key", sa.String(length=200), nullable=True))
        batch_op.create_unique_constraint(batch_op.f("uq_searches_tenant_idempotency"), ["tenant_id", "idempotency_key"])


def downgrade() -> None:
    with op.batch_alter_table("searches", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("uq_searches_tenant_idempotency"), type_="unique")
        batch_op.drop_column("idempotency_key")
