"""The Alembic revisions build the schema on SQLite and PostgreSQL, match the models, and undo cleanly."""

from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from app.cli import ROOT
from app.db import Base, get_engine
from tests.conftest import _pg_database

TABLES = {"tenants", "api_keys", "jobs", "job_events", "artifacts", "files", "webhook_endpoints",
          "webhook_deliveries", "webhook_attempts"}


def _config(url: str) -> Config:
    cfg = Config(str(ROOT / "alembic.ini"))
    cfg.set_main_option("script_location", str(ROOT / "migrations"))
    cfg.attributes["url"] = url
    return cfg


@pytest.fixture(params=["sqlite", "postgres"])
def empty_url(request: pytest.FixtureRequest, tmp_path: Path):  # noqa: ANN201
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'm.db'}"
    else:
        yield from _pg_database()


def test_upgrade_matches_models_and_downgrade_empties(empty_url: str) -> None:
    cfg = _config(empty_url)
    command.upgrade(cfg, "head")
    engine = get_engine(empty_url)
    assert TABLES <= set(inspect(engine).get_table_names())
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata)
    assert diff == [], f"models and migrations disagree: {diff}"
    command.downgrade(cfg, "base")
    assert not TABLES & set(inspect(engine).get_table_names())
    command.upgrade(cfg, "head")  # and up again from nothing
    assert TABLES <= set(inspect(engine).get_table_names())
    engine.dispose()
