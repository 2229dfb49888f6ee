"""The web console in a real browser: Debian's Chromium, headless, driven by Playwright
(its own browser download cannot work here, so it is pointed at /usr/bin/chromium, which
`make setup` installs). Screenshots go to ``build/screenshots/``.

Signed in with an access key, an operator creates a static batch from a package page,
watches its counts change live (server-sent events, no reload) through the rollout,
filters its tasks, meets the API's own error for a rate the API refuses, opens a
device's history, and signs out.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from otaflow.api.client import ApiCallError, OpsClient
from otaflow.dev import system_packages
from tests.integration.conftest import REPO, Otaflow, free_port
from tests.integration.engine_support import T0
from tests.integration.rollout_support import MINUTE, create_package

pytestmark = pytest.mark.integration

SCREENSHOTS = Path(os.environ.get("OTAFLOW_SCREENSHOTS", REPO / "build" / "screenshots"))


def ensure_chromium() -> str:
    """Debian's chromium, which `make setup` installs (otaflow.dev.system_packages)."""
    found = system_packages.find("chromium")
    if found is None:
        pytest.fail("chromium is missing: `make setup` (otaflow devstack up) installs it")
    return found


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    path = ensure_chromium()
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=path, args=["--no-sandbox"])
        yield launched
        launched.close()


def shot(page: Page, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


def test_an_operator_runs_a_rollout_from_the_console(otaflow: Otaflow, browser: Browser) -> None:
    port = free_port()
    otaflow.env["OTAFLOW_CONSOLE_PORT"] = str(port)
    otaflow.env["OTAFLOW_METRICS_PORT"] = "0"
    otaflow.start_worker()
    otaflow.start("api", "-m", "otaflow.api_main")
    otaflow.start("console", "-m", "otaflow.web.console")
    pk = "pkConsole"
    devices = [f"c{i}" for i in range(4)]
    for dn in devices:
        otaflow.report(pk, dn, "VERSION", T0 + 1000, version="1.0")
    otaflow.flush()
    create_package(otaflow, pk)
    otaflow.tick(T0 + 2000)
    console = f"http://127.0.0.1:{port}"
    api = OpsClient(f"http://127.0.0.1:{otaflow.settings.api_port}", "testAK", "testSecret")

    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.set_default_timeout(60_000)
    _goto_when_up(page, console + "/")
    # Nothing without signing in; a wrong secret gets the API's refusal.
    expect(page).to_have_url(console + "/login")
    page.fill("#key_id", "testAK")
    page.fill("#secret", "wrong")
    page.click("#sign-in")
    expect(page.locator("#error")).to_contain_text("Signature")
    page.fill("#key_id", "testAK")
    page.fill("#secret", "testSecret")
    page.click("#sign-in")
    expect(page.locator("#packages")).to_contain_text(pk)
    shot(page, "01-packages")

    page.click("#packages a")
    expect(page.locator("#package")).to_contain_text(pk)
    # The API's rules and messages: a batch it refuses is refused here with its words.
    package_url = page.url
    page.select_option("#scope", "SPECIFIC")  # ... and no device names
    page.fill("#src_versions", "1.0")
    page.fill("#rate", "100")
    page.click("#create")
    fw = api.call("ListOTAFirmware", {"ProductKey": pk})["FirmwareInfo"]["SimpleFirmwareInfo"][0]
    with pytest.raises(ApiCallError) as refused:
        api.call(
            "CreateOTAStaticUpgradeJob",
            {
                "FirmwareId": fw["FirmwareId"],
                "ProductKey": pk,
                "TargetSelection": "SPECIFIC",
                "SrcVersion.1": "1.0",
                "MaximumPerMinute": "100",
            },
        )
    expect(page.locator("#error")).to_have_text(f"{refused.value.code}: {refused.value.message}")
    assert "/batches/" not in page.url
    assert api.call("ListOTAJobByFirmware", {"FirmwareId": fw["FirmwareId"]})["Total"] == 0

    page.goto(package_url)
    page.fill("#src_versions", "1.0")
    page.fill("#rate", "100")
    page.click("#create")
    expect(page.locator("#settings")).to_contain_text(pk)
    job_id = page.url.rsplit("/", 1)[-1]
    assert page.url == f"{console}/batches/{job_id}"

    # Live: the counts move without a reload.
    # (The API stamps the batch with the wall clock, behind these devices' event time,
    # so the pushes follow at once.)
    expect(page.locator("#count-Total")).to_have_text("4")
    otaflow.tick(T0 + 5 * MINUTE)
    expect(page.locator("#count-Notified")).to_have_text("4")
    url_before = page.url
    updates_before = int(page.evaluate("document.body.dataset.updates") or 0)
    assert page.get_attribute("#planned", "points")  # the plan drawn for 100/min, 4 devices
    shot(page, "02-batch-during-rollout")

    for dn in devices[:3]:
        otaflow.report(pk, dn, "VERSION", T0 + 6 * MINUTE, version="2.0")
    otaflow.report(pk, devices[3], "PROGRESS", T0 + 6 * MINUTE, step=-2, desc="http 500")
    otaflow.flush()
    expect(page.locator("#count-Succeeded")).to_have_text("3")
    expect(page.locator("#count-Failed")).to_have_text("1")
    expect(page.locator("#count-Notified")).to_have_text("0")
    assert page.url == url_before  # no reload: the events moved them
    assert int(page.evaluate("document.body.dataset.updates") or 0) > updates_before
    shot(page, "03-batch-finished")

    # Filters: status, source version, device name.
    page.goto(f"{console}/batches/{job_id}")
    page.select_option("#filter-status", "FAILED")
    page.click("#filter")
    rows = page.locator("#tasks tr")
    expect(rows).to_have_count(2)  # header + c3
    expect(page.locator("#tasks")).to_contain_text("c3")
    page.goto(f"{console}/batches/{job_id}?src=0.9")
    expect(page.locator("#tasks tr")).to_have_count(1)
    page.goto(f"{console}/batches/{job_id}?src=1.0&name=c1")
    expect(page.locator("#tasks tr")).to_have_count(2)
    shot(page, "04-tasks-filtered")

    # An edit the API refuses shows its error; one it takes is saved.
    page.fill("#edit-rate", "0")
    page.click("#edit")
    expect(page.locator("#error")).to_contain_text("iot.ota.InvalidConstantRate")
    page.fill("#edit-rate", "200")
    page.click("#edit")
    expect(page.locator("#notice")).to_have_text("batch updated")
    assert api.call("QueryOTAJob", {"JobId": job_id})["Data"]["MaximumPerMinute"] == 200

    page.click("#tasks a >> text=c1")
    expect(page.locator("#versions")).to_contain_text("2.0")
    expect(page.locator("#history")).to_contain_text(job_id)
    expect(page.locator("#history")).to_contain_text("SUCCEEDED")
    shot(page, "05-device-history")

    # A batch that needs confirmation, for the device that failed (the only one left on
    # 1.0): confirm its task, then cancel it.
    page.goto(package_url)
    page.fill("#src_versions", "1.0")
    page.fill("#rate", "100")
    page.check("#need_confirm")
    page.click("#create")
    expect(page.locator("#count-Confirm")).to_have_text("1")
    second = page.url.rsplit("/", 1)[-1]
    assert second != job_id
    page.goto(f"{console}/batches/{second}")
    page.click("#tasks button:has-text('Confirm')")
    expect(page.locator("#notice")).to_have_text("task confirmed")
    expect(page.locator("#count-Confirm")).to_have_text("0")
    page.goto(f"{console}/batches/{second}")
    page.check("#cancel-form input[name=CancelQueuedTask]")
    page.check("#cancel-form input[name=CancelNotifiedTask]")
    page.click("#cancel")
    expect(page.locator("#notice")).to_have_text("tasks canceled")
    expect(page.locator("#count-Canceled")).to_have_text("1")
    shot(page, "06-confirmed-then-canceled")

    page.click("text=Sign out")
    expect(page).to_have_url(console + "/login")
    page.goto(f"{console}/batches/{job_id}")
    expect(page).to_have_url(console + "/login")


def _goto_when_up(page: Page, url: str) -> None:
    import time

    deadline = time.monotonic() + 60
    while True:
        try:
            page.goto(url)
            return
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
