"""Settings: embedded defaults, and production refusing unsafe ones."""

import pytest
from pydantic import ValidationError

from app.config import Settings


def test_embedded_defaults_live_under_the_data_dir(tmp_path, monkeypatch) -> None:  # noqa: ANN001
    for key in ("DISTILLERY_DATABASE_URL", "DISTILLERY_BROKER_URL", "DISTILLERY_ENV"):
        monkeypatch.delenv(key, raising=False)
    s = Settings(data_dir=tmp_path)
    assert s.resolved_database_url == f"sqlite:///{tmp_path.resolve()}/distillery.db"
    assert s.resolved_broker_url == "filesystem://"
    assert s.resolved_artifact_dir == (tmp_path / "artifacts").resolve()


def test_production_refuses_sqlite_filesystem_broker_and_dev_key(monkeypatch) -> None:  # noqa: ANN001
    for key in ("DISTILLERY_DATABASE_URL", "DISTILLERY_BROKER_URL"):
        monkeypatch.delenv(key, raising=False)
    with pytest.raises(ValidationError) as err:
        Settings(env="production", dev_api_key="dk_fixed")
    text = str(err.value)
    assert "DISTILLERY_DATABASE_URL" in text and "DISTILLERY_BROKER_URL" in text and "DEV_API_KEY" in text
    ok = Settings(env="production", database_url="postgresql+psycopg://u@db/x", broker_url="redis://r:6379/0")
    assert ok.env == "production"


def test_env_prefix_is_read(monkeypatch) -> None:  # noqa: ANN001
    monkeypatch.setenv("DISTILLERY_PORT", "9123")
    monkeypatch.setenv("DISTILLERY_MAX_ATTEMPTS", "5")
    s = Settings()
    assert s.port == 9123 and s.max_attempts == 5
