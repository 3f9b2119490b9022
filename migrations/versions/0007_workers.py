"""workers: what each job worker declares it trains on (devices per pool process, accelerator)

A job worker upserts its row (host, Celery node name) when it starts and at every reaper sweep;
the API's dry run reads the rows seen recently (app/services/placement.py) to warn about a job no
live worker can take and to refuse fp16 where no live worker has CUDA.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

WHEN = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "workers",
        sa.Column("host", sa.String(length=255), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("accelerator", sa.String(length=8), nullable=False),
        sa.Column("devices_per_process", sa.Integer(), nullable=False),
        sa.Column("processes", sa.Integer(), nullable=False),
        sa.Column("period_seconds", sa.Float(), nullable=False),
        sa.Column("started_at", WHEN, nullable=False),
        sa.Column("seen_at", WHEN, nullable=False),
        sa.PrimaryKeyConstraint("host", "name", name=op.f("pk_workers")),
    )


def downgrade() -> None:
    op.drop_table("workers")
