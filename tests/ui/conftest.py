"""Browser fixtures: Debian's Chromium, headless, driven by Selenium through Debian's chromedriver."""

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from app.config import Settings
from tests.procs import free_port, redis_server, wait_until

CHROMIUM = shutil.which("chromium")
CHROMEDRIVER = shutil.which("chromedriver")
# Screenshots land under the test's tmp dir, and also here when set (e.g. to refresh docs/img).
SCREENSHOTS_ENV = "DISTILLERY_UI_SCREENSHOTS"


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[object]:
    """A headless Chromium whose downloads go to tmp_path/downloads."""
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.skip("needs Debian's chromium and chromium-driver (.ci/run installs them)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    downloads = tmp_path / "downloads"
    downloads.mkdir()
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1280,1100", "--disable-extensions", "--no-first-run"):
        options.add_argument(arg)
    options.add_experimental_option("prefs", {"download.default_directory": str(downloads),
                                              "download.prompt_for_download": False})
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER, log_output=str(tmp_path / "chromedriver.log")))
    driver.execute_cdp_cmd("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)})
    driver.set_page_load_timeout(60)
    driver.set_script_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def shoot(tmp_path: Path, browser: object):
    """Save a full-window screenshot as tmp_path/screenshots/NAME.png (and under $DISTILLERY_UI_SCREENSHOTS)."""
    folders = [tmp_path / "screenshots"]
    if os.environ.get(SCREENSHOTS_ENV):
        folders.append(Path(os.environ[SCREENSHOTS_ENV]))
    for folder in folders:
        folder.mkdir(parents=True, exist_ok=True)

    def save(name: str) -> Path:
        png = browser.get_screenshot_as_png()
        for folder in folders:
            (folder / f"{name}.png").write_bytes(png)
        return folders[0] / f"{name}.png"

    return save


@pytest.fixture
def broker_env(settings: Settings, tmp_path: Path) -> Iterator[dict[str, str]]:
    """A private redis-server for the PostgreSQL run: other suites' workers share the test Redis, and one
    of them would take this test's job message (and skip it: the job is not in its database)."""
    if not settings.broker_url:
        yield {}
        return
    port = free_port()
    proc = redis_server(port, tmp_path / "redis.log")

    def up() -> bool:
        try:
            return bool(redis.Redis(port=port).ping())
        except redis.ConnectionError:
            return False

    try:
        wait_until(up, timeout=15, interval=0.05, what="the private redis-server")
        yield {"DISTILLERY_BROKER_URL": f"redis://127.0.0.1:{port}/0"}
    finally:
        proc.terminate()
        proc.wait(timeout=10)
