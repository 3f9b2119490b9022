"""The dashboard's files: served from the package under a strict CSP, with no inline code and no HTML
built from strings."""

import re
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.api.routes.ui import FILES
from app.config import Settings
from app.files.checks import PURPOSES
from app.main import create_app

STATIC = Path(__file__).resolve().parents[2] / "app" / "ui" / "static"


@pytest.fixture
def client(settings: Settings) -> TestClient:
    return TestClient(create_app())  # no lifespan: these requests touch neither the database nor the validator


def test_page_and_files_carry_a_strict_csp(client: TestClient) -> None:
    page = client.get("/ui")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    csp = dict(part.strip().split(" ", 1) for part in page.headers["content-security-policy"].split(";"))
    assert csp["default-src"] == "'none'" and csp["script-src"] == "'self'" and csp["style-src"] == "'self'"
    assert csp["connect-src"] == "'self'" and csp["frame-ancestors"] == "'none'"
    assert "unsafe" not in page.headers["content-security-policy"]
    assert page.headers["x-content-type-options"] == "nosniff"
    for name in sorted(FILES):
        served = client.get(f"/ui/static/{name}")
        assert served.status_code == 200 and served.content == (STATIC / name).read_bytes(), name
        assert served.headers["content-security-policy"] == page.headers["content-security-policy"]
    assert client.get("/ui/static/main.js").headers["content-type"].startswith("text/javascript")


@pytest.mark.parametrize("path", ["/ui/static/nope.js", "/ui/static/..%2F..%2Fconfig.py", "/ui/static/__init__.py"])
def test_only_shipped_files_are_served(client: TestClient, path: str) -> None:
    answer = client.get(path)
    assert answer.status_code == 404 and answer.headers["content-type"] == "application/problem+json"


def test_the_dashboard_is_not_in_the_api_schema(client: TestClient) -> None:
    assert not [p for p in client.get("/openapi.json").json()["paths"] if p.startswith("/ui")]


def test_no_inline_code_and_no_html_from_strings() -> None:
    page = (STATIC / "index.html").read_text()
    assert re.findall(r"<script\b[^>]*>", page) == ['<script type="module" src="/ui/static/main.js">']
    assert not re.search(r"\s(on\w+|style)\s*=", page), "inline handlers or styles would break the CSP"
    assert "http://" not in page and "https://" not in page  # no CDN
    for script in STATIC.glob("*.js"):
        code = script.read_text()
        for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function"):
            assert sink not in code, f"{script.name} uses {sink}"
        assert not re.search(r"https?://(?!www\.w3\.org/2000/svg)", code), f"{script.name} reaches another origin"


def test_upload_purposes_match_the_api() -> None:
    listed = re.search(r"PURPOSES = \[(.*?)\];", (STATIC / "files.js").read_text(), re.DOTALL).group(1)
    assert tuple(re.findall(r'"(\w+)"', listed)) == PURPOSES
