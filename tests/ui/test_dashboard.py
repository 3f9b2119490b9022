"""The dashboard in headless Chromium against a real uvicorn and a real Celery worker.

A user signs in, submits a spec (a bad one first: the field at fault is shown), watches the job go from
queued to succeeded on its page without a reload, reads the curves and results, downloads the student,
filters the list, cancels a second job whose name is an HTML payload (it renders as text), and uploads
a file. Screenshots are saved under the test's tmp dir (see conftest.shoot).
"""

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from selenium.common.exceptions import NoAlertPresentException
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import Select, WebDriverWait

from app.auth import create_api_key
from app.client import Client
from app.config import Settings
from app.db import session_scope
from tests.conftest import tiny_spec
from tests.procs import api_argv, env_for, free_port, running, wait_http, worker_argv

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]
XSS_NAME = "<img src=x onerror=alert(1)>"
# Generous: the suite shares two cores with benchmarks; every wait ends as soon as its condition holds.
UI_TIMEOUT = 60
TRAIN_TIMEOUT = 240


def wait_for(driver: WebDriver, condition, *, timeout: float = UI_TIMEOUT, what: str = "condition"):
    return WebDriverWait(driver, timeout, poll_frequency=0.2).until(lambda d: condition(d), message=what)


def text_of(driver: WebDriver, css: str) -> str:
    found = driver.find_elements(By.CSS_SELECTOR, css)
    return found[0].text if found else ""


def set_value(driver: WebDriver, css: str, value: str) -> None:
    driver.execute_script("arguments[0].value = arguments[1]", driver.find_element(By.CSS_SELECTOR, css), value)


def test_dashboard_in_chromium(settings: Settings, tmp_path: Path, browser: WebDriver, shoot,
                               broker_env: dict[str, str]) -> None:
    with session_scope(settings.resolved_database_url) as db:
        key = create_api_key(db=db, tenant_name="ui")[1]
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = env_for(settings, **broker_env)
    with running(api_argv(port), env=env, log=tmp_path / "api.log") as api, Client(base, key) as client:
        wait_http(f"{base}/readyz", timeout=60)
        job_id = _sign_in_and_submit(browser, base, key, shoot)
        with running(worker_argv("ui"), env=env, log=tmp_path / "worker.log"):
            _watch_it_succeed(browser, client, job_id, shoot)
            _download_the_student(browser, client, job_id, tmp_path / "downloads")
            _cancel_the_html_named_job(browser, client, shoot)
        _filter_by_status(browser, job_id)
        _upload_a_file(browser, tmp_path, shoot)
        logs = browser.get_log("browser")
        assert any("401" in e["message"] for e in logs), logs  # the log is read: the refused key is in it
        assert not [e for e in logs if "Content Security Policy" in e["message"]], logs  # nothing inline ran
        # no uncaught script error (the refused key's 401 is logged as a failed resource load)
        assert not [e for e in logs if e["level"] == "SEVERE" and "Failed to load resource" not in e["message"]], logs
        assert key not in api.output(), "the API key reached the API's log"


def _sign_in_and_submit(driver: WebDriver, base: str, key: str, shoot) -> str:
    driver.get(f"{base}/ui")
    wait_for(driver, lambda d: d.find_element(By.ID, "api-key").is_displayed(), what="the sign-in form")
    driver.find_element(By.ID, "api-key").send_keys("dk_not-a-key")
    driver.find_element(By.ID, "signin-button").click()
    wait_for(driver, lambda d: "refused" in text_of(d, "#signin-error"), what="a refused key")
    driver.find_element(By.ID, "api-key").send_keys(key)
    driver.find_element(By.ID, "signin-button").click()
    wait_for(driver, lambda d: "No jobs yet" in text_of(d, "#jobs-message"), what="the empty jobs list")
    assert key not in driver.current_url
    assert driver.execute_script("return sessionStorage.getItem('distillery.apiKey')") == key
    assert driver.execute_script("return localStorage.length") == 0

    driver.find_element(By.ID, "nav-submit").click()
    wait_for(driver, lambda d: d.find_elements(By.ID, "spec-text"), what="the submit form")
    set_value(driver, "#spec-text", json.dumps(tiny_spec(training={"epochs": 0})))
    driver.find_element(By.ID, "validate").click()
    wait_for(driver, lambda d: "body.training.epochs" in text_of(d, "#submit-result .problem-field"),
             what="the field at fault")
    set_value(driver, "#spec-text", "{not json")
    driver.find_element(By.ID, "validate").click()
    wait_for(driver, lambda d: "not valid JSON" in text_of(d, "#submit-result"), what="a JSON syntax error")
    set_value(driver, "#spec-text", json.dumps(tiny_spec(name="ui-tiny", export=["safetensors", "onnx"])))
    driver.find_element(By.ID, "submit").click()
    wait_for(driver, lambda d: d.execute_script("return location.hash").startswith("#/jobs/"), what="the new job's page")
    job_id = driver.execute_script("return decodeURIComponent(location.hash.split('/')[2])")
    wait_for(driver, lambda d: text_of(d, "#job-status") == "queued", what="the job queued (no worker yet)")
    assert text_of(driver, "#job-name") == "ui-tiny"
    shoot("1-queued")
    return job_id


def _watch_it_succeed(driver: WebDriver, client: Client, job_id: str, shoot) -> None:
    driver.execute_script("window.__sameDocument = true")  # gone if the page reloads
    wait_for(driver, lambda d: text_of(d, "#job-status") == "succeeded", timeout=TRAIN_TIMEOUT,
             what="the job to succeed on its open page")
    assert driver.execute_script("return window.__sameDocument") is True, "the page reloaded"
    assert client.job(job_id).status == "succeeded"
    results = client.results(job_id)
    wait_for(driver, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#results-table tbody tr")) == len(results["tasks"]),
             what="the results table")
    for task, row in results["tasks"].items():
        cells = [c.text for c in driver.find_elements(By.CSS_SELECTOR, f'#results-table tr[data-task="{task}"] td')]
        assert cells == [task, row["metric"], *(f"{row[k]:.4f}" for k in ("teacher", "student", "baseline"))]
        series = {p.get_attribute("data-series")
                  for p in driver.find_elements(By.CSS_SELECTOR, f'figure.curve[data-task="{task}"] path')}
        assert series == {"teacher", "student", "baseline"}, task
    shown = [li.text for li in driver.find_elements(By.CSS_SELECTOR, "#diagnostics li")]
    assert shown == (results["diagnostics"] or ["none"])
    spec = json.loads(driver.find_element(By.ID, "spec").get_attribute("textContent"))
    assert spec == client.job(job_id).spec
    assert not driver.find_element(By.ID, "cancel").is_displayed()
    shoot("2-succeeded")


def _download_the_student(driver: WebDriver, client: Client, job_id: str, downloads: Path) -> None:
    listing = {a.name: a for a in client.artifacts(job_id)}
    wait_for(driver, lambda d: d.find_elements(By.CSS_SELECTOR, '#artifacts tr[data-artifact="student.safetensors"]'),
             what="the artifact list")
    shown = {r.get_attribute("data-artifact") for r in driver.find_elements(By.CSS_SELECTOR, "#artifacts tbody tr")}
    assert shown == set(listing)
    driver.find_element(By.CSS_SELECTOR, 'button.download[data-name="student.safetensors"]').click()
    target = downloads / "student.safetensors"
    wait_for(driver, lambda d: target.is_file() and not list(downloads.glob("*.crdownload")), what="the download")
    assert hashlib.sha256(target.read_bytes()).hexdigest() == listing["student.safetensors"].sha256


def _cancel_the_html_named_job(driver: WebDriver, client: Client, shoot) -> None:
    long_spec = tiny_spec(name=XSS_NAME, training={"epochs": 400, "batch_size": 32, "lr": 0.003, "seed": 0})
    job = client.submit(long_spec)
    driver.find_element(By.ID, "nav-jobs").click()
    row_css = f'tr[data-job-id="{job.id}"]'
    wait_for(driver, lambda d: d.find_elements(By.CSS_SELECTOR, row_css), what="the second job in the list")
    assert text_of(driver, f"{row_css} .job-name") == XSS_NAME  # the markup is text, not an element
    assert driver.execute_script("return document.querySelectorAll('main img').length") == 0
    wait_for(driver, lambda d: d.find_element(By.CSS_SELECTOR, row_css).get_attribute("data-status") == "running",
             timeout=TRAIN_TIMEOUT, what="the second job running, live in the list")
    shoot("3-list")
    driver.find_element(By.CSS_SELECTOR, f"{row_css} .job-name").click()
    wait_for(driver, lambda d: text_of(d, "#job-name") == XSS_NAME, what="the second job's page")
    wait_for(driver, lambda d: d.find_element(By.ID, "cancel").is_displayed(), what="the cancel button")
    driver.find_element(By.ID, "cancel").click()
    driver.find_element(By.ID, "cancel-confirm").click()
    wait_for(driver, lambda d: text_of(d, "#job-status") == "cancelled", timeout=TRAIN_TIMEOUT,
             what="the job cancelled")
    assert client.job(job.id).status == "cancelled"
    with pytest.raises(NoAlertPresentException):
        driver.switch_to.alert.accept()
    shoot("4-cancelled")


def _filter_by_status(driver: WebDriver, succeeded_id: str) -> None:
    driver.find_element(By.ID, "nav-jobs").click()
    wait_for(driver, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#jobs-body tr")) == 2, what="both jobs listed")
    Select(driver.find_element(By.ID, "status-filter")).select_by_value("succeeded")
    wait_for(driver, lambda d: d.execute_script("return location.hash") == "#/jobs?status=succeeded"
             and [r.get_attribute("data-job-id") for r in d.find_elements(By.CSS_SELECTOR, "#jobs-body tr")] == [succeeded_id],
             what="only the succeeded job")


def _upload_a_file(driver: WebDriver, tmp_path: Path, shoot) -> None:
    path = tmp_path / "transfer.npz"
    np.savez(path, x=np.zeros((8, 64), dtype="float32"))
    driver.find_element(By.ID, "nav-files").click()
    wait_for(driver, lambda d: "No files yet" in text_of(d, "#files-body"), what="the empty files list")
    driver.find_element(By.ID, "upload-file").send_keys(str(path))
    Select(driver.find_element(By.ID, "upload-purpose")).select_by_value("transfer_set")
    driver.find_element(By.ID, "upload").click()
    wait_for(driver, lambda d: d.find_elements(By.ID, "upload-ok"), what="the upload")
    rows = driver.find_elements(By.CSS_SELECTOR, "#files-body tr[data-file-id]")
    assert [r.find_element(By.CSS_SELECTOR, ".filename").text for r in rows] == ["transfer.npz"]
    shoot("5-files")
