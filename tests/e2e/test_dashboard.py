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
        # Long enough to be seen RUNNING by a refresh (one every 10 s).
        "command": [sys.executable, "-c", "import time\nfor i in range(14):\n print(i, flush=True); time.sleep(1)"],
    }
    job = requests.post(
        state["api"] + "/jobs", json=spec, timeout=10, headers={"Authorization": f"Bearer {state['admin_token']}"}
    ).json()
    row = f"tr[data-job-id='{job['job_id']}']"
    page.wait_for_selector(f"{row}[data-status='RUNNING']", timeout=30_000)
    page.wait_for_selector(f"{row}[data-status='SUCCEEDED']", timeout=45_000)
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
    script = "import time\nfor i in range(24):\n    print(f'tick {i}', flush=True)\n    time.sleep(1)\n"
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
    assert "tick 23" not in page.inner_text("#log")  # it is still running: the pane shows what there is so far
    page.wait_for_selector("#log:has-text('tick 23')", timeout=40_000)  # ...and follows it
    assert page.inner_text("#log").count("tick 3\n") == 1  # each chunk once: the offset went back unchanged


# --- acting from the dashboard: follow, cancel, resubmit; the layout at 800 px; the polling ---------------
STEPS = ROOT / "build" / "test-artifacts" / "dashboard"
TICKS = "import time\nfor i in range(600):\n    print(f'tick {i}', flush=True)\n    time.sleep(1)\n"


def _shot(page, name):
    STEPS.mkdir(parents=True, exist_ok=True)
    path = STEPS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    assert path.stat().st_size > 10_000
    return path


def _api(state, method, path, **kw):
    headers = {"Authorization": f"Bearer {state['admin_token']}"}
    response = requests.request(method, state["api"] + path, headers=headers, timeout=10, **kw)
    assert response.ok, response.text
    return response.json()


def test_sign_in_follow_a_log_cancel_the_job_and_resubmit_it(ui_stack, page):
    state = ui_stack["state"]
    _sign_in(page, state)
    assert page.inner_text("#who-user") == "local-admin"  # the signed-in user, from GET /whoami
    assert "(admin)" in page.inner_text("#who")
    _shot(page, "1-signed-in")
    spec = {"name": "dashboard-act", "backend": "local", "command": [sys.executable, "-c", TICKS]}
    job = _api(state, "POST", "/jobs", json=spec)
    row = f"tr[data-job-id='{job['job_id']}']"
    page.wait_for_selector(f"{row}[data-status='RUNNING']", timeout=30_000)
    page.click(row)

    # Follow: the pane grows while the job runs, each chunk once.
    page.wait_for_selector("#log:has-text('tick 1')", timeout=20_000)
    page.wait_for_selector("#log:has-text('tick 4')", timeout=20_000)
    assert page.inner_text("#log").count("tick 2\n") == 1
    assert page.is_enabled("#cancel")
    _shot(page, "2-following-the-log")

    # Cancel asks for a second click, then calls POST /jobs/{id}/cancel with the user's token.
    page.click("#cancel")
    assert page.inner_text("#cancel") == "Confirm cancel"
    assert _api(state, "GET", f"/jobs/{job['job_id']}")["status"] == "RUNNING"  # one click did nothing
    page.click("#cancel")
    page.wait_for_selector("#action-note:has-text('cancel requested')", timeout=10_000)
    page.wait_for_selector(f"{row}[data-status='CANCELLED']", timeout=30_000)
    page.wait_for_selector("#detail[data-status='CANCELLED']", timeout=10_000)
    assert _api(state, "GET", f"/jobs/{job['job_id']}")["status"] == "CANCELLED"
    assert page.is_disabled("#cancel")  # nothing left to cancel
    page.wait_for_selector("#history tbody tr:has-text('CANCELLED')", timeout=20_000)
    _shot(page, "3-cancelled")

    # Resubmit posts the same spec as a new job and selects it.
    page.click("#resubmit")
    page.wait_for_selector("#action-note:has-text('resubmitted')", timeout=10_000)
    assert page.get_attribute("#detail", "data-resubmitted-from") == job["job_id"]
    resubmitted = page.inner_text("#detail-id")
    assert resubmitted != job["job_id"]
    again = _api(state, "GET", f"/jobs/{resubmitted}")
    assert again["spec"]["command"] == spec["command"] and again["name"] == "dashboard-act"
    page.wait_for_selector(f"tr[data-job-id='{resubmitted}'][data-status='RUNNING']", timeout=30_000)
    page.wait_for_selector("#log:has-text('tick 1')", timeout=20_000)  # the new job's log, followed
    _shot(page, "4-resubmitted")
    _api(state, "POST", f"/jobs/{resubmitted}/cancel")

    # Every request the page made carried the token (none was refused), and refreshes never overlapped.
    stats = page.evaluate("window.jobplaneStats")
    assert stats["maxRefreshesAtOnce"] == 1
    assert all(r["status"] != 401 for r in stats["requests"])


def test_a_failed_jobs_reason_and_last_lines_and_the_layout_at_800_px(ui_stack, page):
    state = ui_stack["state"]
    page.set_viewport_size({"width": 800, "height": 1000})
    _sign_in(page, state)
    long_name = "a-job-with-a-name-long-enough-to-need-cutting-" + "x" * 12
    script = "print('loading data', flush=True)\nraise SystemExit('disk full at step 7')\n"
    failing = _api(
        state, "POST", "/jobs", json={"name": long_name, "backend": "local", "command": [sys.executable, "-c", script]}
    )
    row = f"tr[data-job-id='{failing['job_id']}']"
    page.wait_for_selector(f"{row}[data-status='FAILED']", timeout=40_000)
    page.click(row)
    page.wait_for_selector("#failure:not(.hidden) #last-lines:has-text('disk full at step 7')", timeout=20_000)
    reason = page.inner_text("#failure-reason")
    assert reason.startswith("user_error") and failing["job_id"] not in reason
    assert _api(state, "GET", f"/jobs/{failing['job_id']}")["failure_reason"] in reason
    # No horizontal overflow at 800 px: not the page, not the job table inside its card.
    widths = page.evaluate(
        "() => ({page: document.documentElement.scrollWidth, view: window.innerWidth,"
        " table: document.getElementById('jobs').scrollWidth, wrap: document.getElementById('jobs-wrap').clientWidth})"
    )
    assert widths["page"] <= widths["view"] == 800, widths
    assert widths["table"] <= widths["wrap"], widths
    assert page.is_visible(f"{row} td.cost") and page.is_hidden(f"{row} td.wide")  # created: hidden below 1,100 px
    _shot(page, "5-failed-at-800px")


def _refreshes(page) -> int:
    return page.evaluate("() => window.jobplaneStats.refreshes")


def _wait_refreshes(page, more_than, timeout_s):
    # Polled from here: the page's CSP refuses the eval that page.wait_for_function would need.
    from tests.factories import wait_for

    return wait_for(lambda: _refreshes(page) > more_than, timeout=timeout_s, interval=0.5, what="a refresh")


def test_refreshes_read_only_what_changed_and_pause_while_the_tab_is_hidden(ui_stack, page):
    state = ui_stack["state"]
    _sign_in(page, state)
    _wait_refreshes(page, 1, 30)
    lists = [r["path"] for r in page.evaluate("window.jobplaneStats.requests") if r["path"].startswith("/jobs?")]
    assert "updated_since" not in lists[0]  # the first read pages through the newest jobs...
    assert all("updated_since=" in p for p in lists[1:]) and len(lists) >= 2  # ...later ones ask for changes
    # Hidden: no refresh starts (the browser says so through visibilitychange).
    page.evaluate(
        "() => { Object.defineProperty(document, 'hidden', {value: true, configurable: true});"
        " Object.defineProperty(document, 'visibilityState', {value: 'hidden', configurable: true});"
        " document.dispatchEvent(new Event('visibilitychange')); }"
    )
    page.wait_for_selector("#updated:has-text('paused')")
    before = _refreshes(page)
    page.wait_for_timeout(12_000)  # more than a refresh period
    assert _refreshes(page) == before
    page.evaluate(
        "() => { Object.defineProperty(document, 'hidden', {value: false, configurable: true});"
        " Object.defineProperty(document, 'visibilityState', {value: 'visible', configurable: true});"
        " document.dispatchEvent(new Event('visibilitychange')); }"
    )
    _wait_refreshes(page, before, 15)
    stats = page.evaluate("window.jobplaneStats")
    assert stats["maxRefreshesAtOnce"] == 1


def test_costs_show_their_prices_date_and_endpoints_are_listed(ui_stack, page):
    # The job's `cost` object ({usd, prices_of, reason}) and endpoints are laid over the stack's real answers
    # (its local jobs have no catalog price and it serves no endpoint here): the page's rendering of them.
    state = ui_stack["state"]
    job = _api(state, "POST", "/jobs", json={"name": "dashboard-priced", "backend": "local", "command": ["true"]})
    endpoint = {
        "endpoint_id": "e" * 32,
        "name": "resnet-serve",
        "owner": "local-admin",
        "status": "IN_SERVICE",
        "backend": "sagemaker",
        "created_at": "2026-11-30T10:00:00.000000Z",
        "min_replicas": 1,
        "max_replicas": 2,
        "url": "https://runtime.sagemaker.us-east-1.amazonaws.com/endpoints/jp-x/invocations",
        "cost_per_hour_usd": 1.408,
        "cost_estimate_usd": 12.5,
        "cost": {"usd": 12.5, "prices_of": "2026-11-15", "reason": ""},
    }

    def priced(route):
        response = route.fetch()
        body = response.json()
        for j in body["jobs"]:
            if j["job_id"] == job["job_id"]:
                j["cost"] = {"usd": 3.21, "prices_of": "2026-11-15", "reason": ""}
        route.fulfill(response=response, json=body)

    def endpoints(route):
        response = route.fetch()
        route.fulfill(response=response, json={"endpoints": [endpoint]})

    page.route("**/jobs?*", priced)
    page.route("**/endpoints", endpoints)
    _sign_in(page, state)
    row = f"tr[data-job-id='{job['job_id']}']"
    page.wait_for_selector(f"{row} td.cost[data-prices-of='2026-11-15']", timeout=30_000)
    assert page.inner_text(f"{row} td.cost").split() == ["3.21", "prices", "of", "2026-11-15"]
    page.click(row)
    assert "cost $3.21 (prices of 2026-11-15)" in page.inner_text("#detail-summary")
    ep = "#endpoints tr[data-endpoint-id='" + "e" * 32 + "']"
    page.wait_for_selector(ep)
    cells = page.inner_text(ep)
    assert "resnet-serve" in cells and "IN_SERVICE" in cells and "1.408" in cells and "12.50" in cells
    assert page.get_attribute(f"{ep} td.cost", "data-prices-of") == "2026-11-15"
    assert page.is_hidden("#endpoints-note:has-text('no endpoints')")
    _shot(page, "6-costs-and-endpoints")
