"""API fixtures: a TestClient on the real app, two tenants with real API keys."""

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.auth import create_api_key
from app.config import Settings
from app.db import session_scope
from app.main import create_app
from tests.conftest import tiny_spec


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(), raise_server_exceptions=False) as c:
        yield c


def _key(settings: Settings, tenant: str) -> str:
    with session_scope(settings.resolved_database_url) as db:
        return create_api_key(db=db, tenant_name=tenant)[1]


@pytest.fixture
def auth(settings: Settings) -> dict[str, str]:
    return {"Authorization": f"Bearer {_key(settings, 'acme')}"}


@pytest.fixture
def other_auth(settings: Settings) -> dict[str, str]:
    return {"Authorization": f"Bearer {_key(settings, 'globex')}"}


@pytest.fixture
def spec() -> dict[str, Any]:
    return tiny_spec()
