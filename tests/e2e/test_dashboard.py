"""The dashboard in a real headless Chromium: sign in, watch a job submitted through the API finish."""

from __future__ import annotations

import shutil
import sys

import pytest
import requests

from tests.factories import ROOT, start_stack, stop_stack

pytestmark = pytest.mark.e2e
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = ROOT / "test-artifacts"


@pytest.fixture(scope="module")
def ui_stack(tmp_path_factory):
    running = start_stack(tmp_path_factory.mktemp("stack"), sigint_ignored=True)
    yield running
    stop_stack(running)


@pytest.fixture
def page(ui_stack):
    from playwright.sync_api import sync_playwright

    if not shutil.which("chromium"):
        pytest.fail("Debian's chromium is missing: `make test` installs it (make system-deps)")
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            # Chromium's own network chatter is refused on this machine; keep it from trying.
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ],
        )
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        yield page
        browser.close()


def test_a_wrong_token_is_refused(ui_stack, page):
    page.goto(ui_stack["state"]["api"] + "/")
    page.fill("#token", "jp_not-a-real-token")
    page.click("#signin-button")
    page.wait_for_selector("#signin-error:has-text('refused')")
    assert page.is_hidden("#app")


def test_sign_in_and_watch_a_job_run_to_success(ui_stack, page):
    state = ui_stack["state"]
    page.goto(state["api"] + "/")
    page.fill("#token", state["admin_token"])
    page.click("#signin-button")
    page.wait_for_selector("#app:not(.hidden)")

    spec = {
        "name": "dashboard-demo",
        "backend": "local",
        "labels": {"team": "ui"},
        "command": [sys.executable, "-c", "import time\nfor i in range(4):\n print(i, flush=True); time.sleep(1)"],
    }
    job = requests.post(
        state["api"] + "/jobs", json=spec, timeout=10, headers={"Authorization": f"Bearer {state['admin_token']}"}
    ).json()
    row = f"tr[data-job-id='{job['job_id']}']"
    page.wait_for_selector(f"{row}[data-status='RUNNING']", timeout=20_000)
    page.wait_for_selector(f"{row}[data-status='SUCCEEDED']", timeout=30_000)
    page.click(row)
    page.wait_for_selector("#history tbody tr:has-text('SUCCEEDED')")
    history = page.inner_text("#history")
    for status in ("QUEUED", "LAUNCHING", "RUNNING", "SUCCEEDED"):
        assert status in history
    assert "local-admin" in page.inner_text("#by-owner")
    assert "local" in page.inner_text("#by-backend")
    assert page.query_selector("#timeline-chart svg rect") is not None
    page.select_option("#f-status", "FAILED")
    assert page.query_selector(row) is None  # the filter hides it
    page.select_option("#f-status", "")
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)
    assert (ARTIFACTS / "dashboard.png").stat().st_size > 10_000
