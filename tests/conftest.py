"""Shared fixtures: real databases (SQLite file and a throwaway PostgreSQL database), real brokers."""

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from sqlalchemy import create_engine, text

from app.config import Settings, get_settings

PG_ADMIN_URL = os.environ.get("DISTILLERY_TEST_PG_ADMIN_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("DISTILLERY_TEST_REDIS_URL", "redis://127.0.0.1:6379/13")
ROOT = Path(__file__).resolve().parent.parent
# The suite runs workers, servers and in-process training side by side on a couple of cores;
# one torch thread each keeps them from thrashing (a stage measured 247 s vs 12 s here).
torch.set_num_threads(1)
TABLES = ("webhook_attempts", "webhook_deliveries", "webhook_endpoints", "job_events", "artifacts", "jobs", "files",
          "api_keys", "tenants", "workers")


def _pg_database() -> Iterator[str]:
    name = f"distillery_test_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT", pool_pre_ping=True)
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    finally:
        from app.db import get_engine

        get_engine(PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}").dispose()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """A fresh, empty PostgreSQL database for this test session."""
    yield from _pg_database()


@pytest.fixture(scope="session")
def migrated_urls(tmp_path_factory: pytest.TempPathFactory, pg_url: str) -> dict[str, str]:
    """SQLite and PostgreSQL databases built by the Alembic migrations (once per session)."""
    from app.cli import run_migrations

    sqlite_url = f"sqlite:///{tmp_path_factory.mktemp('sqlite') / 'api.db'}"
    for url in (sqlite_url, pg_url):
        run_migrations(url)
    return {"sqlite": sqlite_url, "postgres": pg_url}


def _wipe(url: str) -> None:
    from app.db import get_engine

    with get_engine(url).begin() as conn:
        for table in TABLES:
            conn.execute(text(f"DELETE FROM {table}"))


@pytest.fixture(params=["sqlite", "postgres"])
def settings(request: pytest.FixtureRequest, migrated_urls: dict[str, str], tmp_path: Path,
             monkeypatch: pytest.MonkeyPatch) -> Iterator[Settings]:
    """Settings for one backend pair: SQLite + filesystem broker, or PostgreSQL + Redis."""
    url = migrated_urls[request.param]
    broker = None
    if request.param == "postgres":
        import redis

        redis.Redis.from_url(REDIS_URL).flushdb()
        broker = REDIS_URL
    env = {"DISTILLERY_ENV": "test", "DISTILLERY_DATA_DIR": str(tmp_path / "data"), "DISTILLERY_DATABASE_URL": url}
    if broker:
        env["DISTILLERY_BROKER_URL"] = broker
    else:
        monkeypatch.delenv("DISTILLERY_BROKER_URL", raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    get_settings.cache_clear()
    current = get_settings()
    current.data_dir.mkdir(parents=True, exist_ok=True)
    yield current
    _wipe(url)
    get_settings.cache_clear()


def tiny_spec(**overrides: object) -> dict:
    """A digits-mt job that trains in about a second on a CPU."""
    spec = {
        "name": "tiny-digits",
        "dataset": {"builtin": "digits-mt"},
        "tasks": [
            {"name": "digit", "kind": "multiclass", "num_classes": 10},
            {"name": "parity", "kind": "multiclass", "num_classes": 2},
            {"name": "large", "kind": "binary"},
        ],
        "teachers": [{"name": "t", "tasks": ["digit", "parity", "large"],
                      "source": {"train": {"arch": {"type": "mlp", "hidden": [64]}, "epochs": 2}}}],
        "student": {"type": "mlp", "trunk": [16], "head": []},
        "distillation": {"strategy": "task_kd", "temperature": 4.0, "alpha": 0.5},
        "training": {"epochs": 2, "batch_size": 128, "lr": 0.003, "seed": 0},
        "baseline": True,
        "export": ["safetensors"],
    }
    spec.update(overrides)
    return spec
