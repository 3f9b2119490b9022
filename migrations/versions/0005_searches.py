"""searches: goals searched by Optuna, their trials (child jobs), events and artifacts

Optuna's own tables (studies, trials, trial_values, ... and version_info) are not created here:
Optuna creates them itself, with `create_all`, the first time a search controller opens the study
storage on this database (app/services/searches_study.py), and they stay out of Alembic's
autogenerate (migrations/env.py ignores them). Their schema follows the installed Optuna release
(its `version_info` row records which); the `alembic_version` table both read holds this
project's revision, so Optuna's own schema check is skipped and replaced by a check of
`version_info`. The downgrade drops them with the search tables: the studies are the searches' data.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON_TYPE = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
WHEN = sa.DateTime(timezone=True)
# Optuna's tables, children first (dropped by the downgrade when a controller created them).
OPTUNA_TABLES = ("trial_heartbeats", "trial_intermediate_values", "trial_values", "trial_system_attributes",
                 "trial_user_attributes", "trial_params", "trials", "study_system_attributes",
                 "study_user_attributes", "study_directions", "studies", "version_info")


def upgrade() -> None:
    op.create_table(
        "searches",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("tenant_id", sa.String(length=40), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("request", JSON_TYPE, nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("cancel_requested", sa.Boolean(), nullable=False),
        sa.Column("lease_owner", sa.String(length=200), nullable=True),
        sa.Column("lease_until", WHEN, nullable=True),
        sa.Column("reference", JSON_TYPE, nullable=True),
        sa.Column("summary", JSON_TYPE, nullable=True),
        sa.Column("event_seq", sa.Integer(), nullable=False),
        sa.Column("error_code", sa.String(length=64), nullable=True),
        sa.Column("error_message", sa.Text(), nullable=True),
        sa.Column("created_at", WHEN, nullable=False),
        sa.Column("started_at", WHEN, nullable=True),
        sa.Column("finished_at", WHEN, nullable=True),
        sa.ForeignKeyConstraint(["tenant_id"], ["tenants.id"], name=op.f("fk_searches_tenant_id_tenants"),
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_searches")),
    )
    with op.batch_alter_table("searches", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_searches_tenant_id"), ["tenant_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_searches_status"), ["status"], unique=False)
        batch_op.create_index(batch_op.f("ix_searches_created_at"), ["created_at"], unique=False)

    op.create_table(
        "search_trials",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("search_id", sa.String(length=40), nullable=False),
        sa.Column("number", sa.Integer(), nullable=False),
        sa.Column("job_id", sa.String(length=40), nullable=True),
        sa.Column("params", JSON_TYPE, nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("prune_requested", sa.Boolean(), nullable=False),
        sa.Column("last_step", sa.Integer(), nullable=False),
        sa.Column("values", JSON_TYPE, nullable=True),
        sa.Column("measures", JSON_TYPE, nullable=True),
        sa.Column("test", JSON_TYPE, nullable=True),
        sa.Column("created_at", WHEN, nullable=False),
        sa.Column("finished_at", WHEN, nullable=True),
        sa.ForeignKeyConstraint(["search_id"], ["searches.id"], name=op.f("fk_search_trials_search_id_searches"),
                                ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], name=op.f("fk_search_trials_job_id_jobs"),
                                ondelete="SET NULL"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_search_trials")),
        sa.UniqueConstraint("search_id", "number", name="uq_search_trials_search_number"),
        sa.UniqueConstraint("job_id", name=op.f("uq_search_trials_job_id")),
    )
    with op.batch_alter_table("search_trials", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_search_trials_search_id"), ["search_id"], unique=False)

    for table, columns in (
        ("search_events", [sa.Column("seq", sa.Integer(), nullable=False),
                           sa.Column("kind", sa.String(length=40), nullable=False),
                           sa.Column("data", JSON_TYPE, nullable=False)]),
        ("search_artifacts", [sa.Column("name", sa.String(length=200), nullable=False),
                              sa.Column("path", sa.Text(), nullable=False),
                              sa.Column("size", sa.BigInteger(), nullable=False),
                              sa.Column("sha256", sa.String(length=64), nullable=False),
                              sa.Column("media_type", sa.String(length=100), nullable=False)]),
    ):
        unique = ("search_id", "seq") if table == "search_events" else ("search_id", "name")
        unique_name = "uq_search_events_search_seq" if table == "search_events" else "uq_search_artifacts_search_name"
        op.create_table(
            table,
            sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
            sa.Column("search_id", sa.String(length=40), nullable=False),
            *columns,
            sa.Column("created_at", WHEN, nullable=False),
            sa.ForeignKeyConstraint(["search_id"], ["searches.id"], name=op.f(f"fk_{table}_search_id_searches"),
                                    ondelete="CASCADE"),
            sa.PrimaryKeyConstraint("id", name=op.f(f"pk_{table}")),
            sa.UniqueConstraint(*unique, name=unique_name),
        )
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.create_index(batch_op.f(f"ix_{table}_search_id"), ["search_id"], unique=False)


def downgrade() -> None:
    for table in ("search_artifacts", "search_events", "search_trials", "searches"):
        op.drop_table(table)
    existing = set(sa.inspect(op.get_bind()).get_table_names())
    for table in OPTUNA_TABLES:
        if table in existing:
            op.drop_table(table)
