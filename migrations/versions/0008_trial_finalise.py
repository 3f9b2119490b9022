"""search_trials.final_job_id: the finalise job of a front trial (light trials, spec.trial)

A search's trials run as light jobs (validation only, no exports); when the search ends, each
trial on the front gets one finalise job that loads the light job's student, evaluates it on test
once and exports it. This column links the trial to that job (unique: one per trial; SET NULL
when the job is deleted, like job_id).

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("search_trials", schema=None) as batch_op:
        batch_op.add_column(sa.Column("final_job_id", sa.String(length=40), nullable=True))
        batch_op.create_unique_constraint(batch_op.f("uq_search_trials_final_job_id"), ["final_job_id"])
        batch_op.create_foreign_key(batch_op.f("fk_search_trials_final_job_id_jobs"), "jobs",
                                    ["final_job_id"], ["id"], ondelete="SET NULL")


def downgrade() -> None:
    with op.batch_alter_table("search_trials", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("fk_search_trials_final_job_id_jobs"), type_="foreignkey")
        batch_op.drop_constraint(batch_op.f("uq_search_trials_final_job_id"), type_="unique")
        batch_op.drop_column("final_job_id")
