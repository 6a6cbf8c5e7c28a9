"""The admins' page at ``/lesion-ai/ui/`` in a real browser (headless Chromium), on a real node.

A small study whose StudyDescription holds ``<script>alert(1)</script>`` is processed by the node (with the
fake processor); with the node's credentials the page shows the node's health, the study's job with its
details and links, and the rules: an edit with an error is refused naming the line and the field, the fixed
rules are saved (the previous version kept, with the user who replaced it) and tested on the study. The
description is shown as text and no alert opens. A change without the CSRF header is refused (403), over
plain HTTP with the credentials and through a form posted from a page of another origin. Screenshots go to
``test-artifacts/admin-ui/`` (or ``$LESION_AI_TEST_ARTIFACTS/admin-ui/``).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar

import pytest

from orthanc_plugin.dicomsend import dicom_files, send_files
from orthanc_plugin.ui import CONTENT_SECURITY_POLICY, UI_BASE
from tests.browser_env import ARTIFACTS_ROOT, BrowserPage, chromium_driver
from tests.node_env import OrthancFleet, OrthancServer, find_study, jobs, make_study, wait_for

pytestmark = [pytest.mark.orthanc, pytest.mark.slow]

ARTIFACTS = ARTIFACTS_ROOT / "admin-ui"
SCRIPT = "<script>alert(1)</script>"
T = TypeVar("T")

RULES = """\
version: 1
rules:
  - name: prostate-mr
    description: Biparametric prostate MR -> lesion SEG + SR
    outputs: [seg, sr]
    match:
      series: {Modality: [MR], BodyPartExamined: '(?i)prostate'}
  - name: ct-research
    description: every CT, for a research project (the fake processor fails them)
    priority: -1
    outputs: [sr]
    match:
      series: {Modality: [CT]}
"""
BAD_RULES = """\
version: 1
rules:
  - name: prostate-any
    priorty: 5
    outputs: [seg, sr]
    match:
      series: {Modality: [MR], BodyPartExamined: '(?i)prostate'}
"""


class Browser(BrowserPage):
    """Headless Chromium driven by Selenium; screenshots into :data:`ARTIFACTS`."""

    def wait_text(self, css: str, wanted: str, timeout_s: float = 20) -> str:
        def found() -> str | None:
            text = self.text(css)
            return text if wanted in text else None

        return self.wait(found, timeout_s, f"{wanted!r} in {css}")

    def click(self, css: str) -> None:
        """Click the element; again if the page replaced it meanwhile (tables are refreshed every 5 s)."""
        from selenium.common.exceptions import StaleElementReferenceException

        for attempt in range(3):
            try:
                self.driver.find_element("css selector", css).click()
                return
            except StaleElementReferenceException:
                if attempt == 2:
                    raise

    def set_editor(self, text: str) -> None:
        """Replace the rules editor's text as typing would (the page hears an input event)."""
        self.driver.execute_script(
            "const a = document.getElementById('rules-text'); a.value = arguments[0];"
            "a.dispatchEvent(new Event('input', {bubbles: true}));",
            text,
        )

    def no_alert(self) -> bool:
        from selenium.common.exceptions import NoAlertPresentException

        try:
            alert = self.driver.switch_to.alert
        except NoAlertPresentException:
            return True
        text = alert.text
        alert.dismiss()
        raise AssertionError(f"an alert opened: {text!r}")


@contextmanager
def headless_chromium(profile: Path, credentials: dict[str, str]) -> Iterator[Browser]:
    """Debian's Chromium, logged in to the node (see :func:`tests.browser_env.chromium_driver`)."""
    capabilities = {"unhandledPromptBehavior": "ignore"}
    with chromium_driver(
        profile, credentials, ARTIFACTS, window="1440,900", capabilities=capabilities
    ) as driver:
        browser = Browser(driver, ARTIFACTS)
        try:
            yield browser
        finally:
            browser.save_console()


@contextmanager
def other_site(node: OrthancServer, study: str) -> Iterator[str]:
    """A web page on another origin whose form posts to the node (a cross-site request forgery)."""
    page = (
        "<!doctype html><title>another site</title>"
        f'<form id="f" method="POST" action="{node.url}/lesion-ai/studies/{study}/process" '
        'enctype="text/plain"><input name="x" value="1"><button id="go">win a prize</button></form>'
    ).encode()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(page)))
            self.end_headers()
            self.wfile.write(page)

        def log_message(self, format: str, *args: Any) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[OrthancFleet]:
    servers = OrthancFleet(tmp_path)
    yield servers
    servers.close()


def test_the_admin_page_in_a_browser(fleet: OrthancFleet, tmp_path: Path) -> None:
    for old in ARTIFACTS.glob("*.png"):
        old.unlink()
    node = fleet.node(stable_age=1, rules=RULES).start()
    client = node.client()
    credentials = node.credentials or {}
    assert credentials, "the node must run with authentication"

    # Behind authentication, with its security headers.
    assert node.fetch(UI_BASE, auth=False)[0] == 401
    status, headers, _ = node.fetch(UI_BASE)
    assert status == 200 and headers["content-security-policy"] == CONTENT_SECURITY_POLICY
    assert (headers["x-content-type-options"], headers["referrer-policy"]) == ("nosniff", "no-referrer")
    assert node.fetch(f"{UI_BASE}..%2f..%2fhealth")[0] in (400, 404)

    study_uid = make_study(tmp_path / "study", study_description=SCRIPT)
    ct_uid = make_study(
        tmp_path / "ct", modality="CT", study_description="CT THORAX", body_part="CHEST", series=("thorax",)
    )
    report = send_files(
        dicom_files([tmp_path / "study", tmp_path / "ct"]), "127.0.0.1", node.dicom_port, "SCANNER", node.aet
    )
    assert report.sent == 9 and not report.failed

    def finished() -> list[dict[str, Any]] | None:
        found = jobs(client)
        return found if len(found) == 2 and all(j["state"] in ("done", "failed") for j in found) else None

    found = {j["study_uid"]: j for j in wait_for(finished, 60, "the studies' jobs to end")}
    job, failed = found[study_uid], found[ct_uid]
    assert (job["state"], failed["state"]) == ("done", "failed")
    study = find_study(client, study_uid)
    assert study is not None and job["study"] == study

    # A change without the CSRF header is refused over plain HTTP, credentials or not.
    status, _, body = node.fetch(f"/lesion-ai/studies/{study}/process", method="POST", body=b"{}")
    assert status == 403 and b"X-Lesion-AI-Request: 1" in body
    status, _, _ = node.fetch("/lesion-ai/rules", method="PUT", body=BAD_RULES.encode())
    assert status == 403

    from selenium.webdriver.support.ui import Select

    with headless_chromium(tmp_path / "chromium-profile", credentials) as browser:
        driver = browser.driver
        driver.get(f"{node.url}{UI_BASE}")
        browser.wait_text("#health-status", "OK")
        browser.wait(lambda: "1 failed" in browser.text("#summary-text"), 20, "the queue counts")
        assert "1 done" in browser.text("#summary-text")
        browser.wait_text("#health-recent", study_uid)
        health = browser.text("#view-health").lower()
        for wanted in (
            "status",
            "model",
            "queue",
            "workers",
            "last events",
            "prostate-mr",
            "model card (json)",
        ):
            assert wanted in health, wanted
        assert "yes" in browser.text("#health-workers")  # the worker is alive
        browser.screenshot("01-health")

        # The job, its details, the links to its study; the description is text.
        browser.click("#tab-jobs")
        browser.wait_text("#jobs-table", study_uid)
        browser.click(f'#jobs-table tr[data-job="{job["id"]}"]')
        detail = browser.wait_text("#job-detail", "Input series (2)")
        for wanted in (f"Job #{job['id']}", "done", SCRIPT, study, "seg, sr"):
            assert wanted in detail, wanted
        links = {
            a.text: a.get_attribute("href")
            for a in driver.find_elements("css selector", "#job-detail .links a")
        }
        assert (
            links["Open in the viewer"] == f"{node.url}/lesion-ai/viewer/viewer?StudyInstanceUIDs={study_uid}"
        )
        assert links["Open in Orthanc Explorer"] == f"{node.url}/app/explorer.html#study?uuid={study}"
        assert driver.execute_script("return document.querySelectorAll('script').length") == 1
        assert browser.no_alert()
        browser.screenshot("02-jobs")

        # The failed job, found by its state, retried from the page.
        Select(driver.find_element("id", "filter-state")).select_by_value("failed")
        browser.click("#filter-apply")
        browser.wait(lambda: study_uid not in browser.text("#jobs-table"), 20, "the failed jobs only")
        browser.click(f'#jobs-table tr[data-job="{failed["id"]}"]')
        browser.wait_text("#job-detail", "not an MR study")
        browser.screenshot("03-failed-job")
        browser.click("#job-retry")
        browser.wait_text("#job-detail", "queued again")

        def failed_again() -> bool:
            now = client.get_json(f"/lesion-ai/jobs/{failed['id']}")
            return bool(now["state"] == "failed" and now["updated_at"] > failed["updated_at"])

        wait_for(failed_again, 30, "the retried job to run again")
        log = node.log.read_text(errors="replace")
        assert f"job {failed['id']} queued again: retry requested by {credentials['username']}" in log
        browser.click("#filter-clear")
        browser.wait_text("#jobs-table", study_uid)
        browser.wait_text("#job-detail", "failed")
        browser.screenshot("03-jobs-after-retry")

        # The rules: an error names its line and field; fixed, saved and tested on the study.
        browser.click("#tab-rules")
        browser.wait(
            lambda: "prostate-mr" in driver.find_element("id", "rules-text").get_attribute("value"),
            20,
            "the rules",
        )
        browser.set_editor(BAD_RULES)
        browser.click("#rules-validate")
        message = browser.wait_text("#rules-message", "line 4")
        assert "field rules[0].priorty" in message and "unknown field" in message
        assert browser.text("#rules-gutter .bad") == "4"
        browser.click("#rules-save")
        browser.wait_text("#rules-message", "Not saved")
        browser.screenshot("04-rules-error")
        assert client.get_json("/lesion-ai/rules")["rules"][0]["name"] == "prostate-mr"

        browser.set_editor(BAD_RULES.replace("priorty", "priority"))
        browser.click("#rules-validate")
        browser.wait_text("#rules-message", "Valid: 1 rule(s): prostate-any")
        browser.click("#rules-save")
        browser.wait_text("#rules-message", "Saved and applied")
        assert client.get_json("/lesion-ai/rules")["text"] == BAD_RULES.replace("priorty", "priority")
        history = browser.wait_text("#history-table", "Restore")
        assert credentials["username"] in history  # who replaced the previous rules
        stored = client.get_json("/lesion-ai/rules/history")["versions"]
        assert len(stored) == 1 and "prostate-mr" in stored[0]["text"]
        assert stored[0]["replaced_by"] == credentials["username"]

        browser.wait(
            lambda: study in driver.find_element("id", "test-study").get_attribute("innerHTML"),
            20,
            "the study list",
        )
        Select(driver.find_element("id", "test-study")).select_by_value(study)
        assert SCRIPT in Select(driver.find_element("id", "test-study")).first_selected_option.text
        browser.click("#test-run")
        result = browser.wait_text("#test-result", "Rule prostate-any matches")
        for wanted in ("t2_tse_tra", "ep2d_diff_tra_ADC", "T2W", "ADC", "candidate for"):
            assert wanted in result, wanted
        assert driver.execute_script("return document.querySelectorAll('script').length") == 1
        assert browser.no_alert()
        browser.screenshot("05-rules-saved-and-tested")

        # A form of another site posting to the node: refused, nothing queued again.
        before = client.get_json(f"/lesion-ai/jobs/{job['id']}")
        with other_site(node, study) as url:
            driver.get(url)
            browser.click("#go")
            browser.wait(lambda: "X-Lesion-AI-Request" in browser.text(), 20, "the node's refusal")
            browser.screenshot("06-cross-site-form-refused")
        after = client.get_json(f"/lesion-ai/jobs/{job['id']}")
        assert (
            (after["state"], after["updated_at"])
            == (before["state"], before["updated_at"])
            == ("done", before["updated_at"])
        )
        assert len(jobs(client)) == 2
        assert browser.no_alert()

    console = (ARTIFACTS / "console.txt").read_text(encoding="utf-8")
    assert "Content Security Policy" not in console and "Refused to" not in console, console
    assert json.loads(node.fetch("/lesion-ai/health")[2])["status"] == "ok"
