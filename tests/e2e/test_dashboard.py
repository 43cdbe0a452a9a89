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


def _sign_in(page, state):
    page.goto(state["api"] + "/")
    page.fill("#token", state["admin_token"])
    page.click("#signin-button")
    page.wait_for_selector("#app:not(.hidden)")


def test_the_example_jobs_metrics_log_and_a_failures_last_lines_show_in_the_detail(ui_stack, page):
    state = ui_stack["state"]
    _sign_in(page, state)
    headers = {"Authorization": f"Bearer {state['admin_token']}"}
    example = requests.post(
        state["api"] + "/jobs",
        data=(ROOT / "examples" / "train-local.yaml").read_bytes(),
        headers={**headers, "Content-Type": "application/x-yaml"},
        timeout=10,
    ).json()
    script = (
        "import json, sys\n"
        "for step in range(1, 4):\n"
        "    print('JOBPLANE_METRICS ' + json.dumps({'loss': 1 / step}), flush=True)\n"
        "print('about to fail <here> & now', flush=True)\n"
        "raise ValueError('boom at step 3')\n"
    )
    failing = requests.post(
        state["api"] + "/jobs",
        json={"name": "dashboard-fails", "backend": "local", "command": [sys.executable, "-c", script]},
        headers=headers,
        timeout=10,
    ).json()

    row = f"tr[data-job-id='{example['job_id']}']"
    page.wait_for_selector(f"{row}[data-status='SUCCEEDED']", timeout=60_000)
    page.click(row)
    # A chart per key, 15 points each (one JOBPLANE_METRICS line per epoch), the latest value beside it.
    page.wait_for_selector("#metrics figure[data-key='val_accuracy'] svg[data-points='15']", timeout=20_000)
    for key in ("epoch", "train_loss", "train_accuracy", "val_loss"):
        assert page.query_selector(f"#metrics figure[data-key='{key}'] svg polyline") is not None
    assert page.inner_text("#metrics figure[data-key='epoch'] .latest") == "15"
    latest = float(page.inner_text("#metrics figure[data-key='val_accuracy'] .latest"))
    job = requests.get(f"{state['api']}/jobs/{example['job_id']}", headers=headers, timeout=10).json()
    assert latest == pytest.approx(job["metrics"]["val_accuracy"])
    page.wait_for_selector("#log:has-text('model written')", timeout=20_000)
    assert "JOBPLANE_METRICS" in page.inner_text("#log")
    assert page.is_hidden("#failure")  # a success has no last lines

    failed = f"tr[data-job-id='{failing['job_id']}']"
    page.wait_for_selector(f"{failed}[data-status='FAILED']", timeout=60_000)
    page.click(failed)
    page.wait_for_selector("#failure:not(.hidden) #last-lines:has-text('ValueError: boom at step 3')", timeout=20_000)
    last = page.inner_text("#last-lines")
    assert "about to fail <here> & now" in last  # text, never markup
    assert page.query_selector("#last-lines here") is None
    page.wait_for_selector("#metrics figure[data-key='loss'] svg[data-points='3']", timeout=20_000)
    assert "FAILED" in page.inner_text("#detail-summary")
    page.wait_for_selector("#log:has-text('Traceback')", timeout=20_000)
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "dashboard-metrics.png"), full_page=True)


def test_the_log_pane_follows_a_running_job(ui_stack, page):
    state = ui_stack["state"]
    _sign_in(page, state)
    script = "import time\nfor i in range(8):\n    print(f'tick {i}', flush=True)\n    time.sleep(0.5)\n"
    job = requests.post(
        state["api"] + "/jobs",
        json={"name": "dashboard-follow", "backend": "local", "command": [sys.executable, "-c", script]},
        headers={"Authorization": f"Bearer {state['admin_token']}"},
        timeout=10,
    ).json()
    row = f"tr[data-job-id='{job['job_id']}']"
    page.wait_for_selector(f"{row}[data-status='RUNNING']", timeout=20_000)
    page.click(row)
    page.wait_for_selector("#log:has-text('tick 1')", timeout=20_000)
    assert "tick 7" not in page.inner_text("#log")  # it is still running: the pane shows what there is so far
    page.wait_for_selector("#log:has-text('tick 7')", timeout=30_000)  # ...and follows it
    assert page.inner_text("#log").count("tick 3") == 1  # each chunk once: the offset went back unchanged
