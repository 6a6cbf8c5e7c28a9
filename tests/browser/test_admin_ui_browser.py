"""The admins' page at ``/lesion-ai/ui/`` in a real browser (headless Chromium), on a real node.

A small study whose StudyDescription holds ``<script>alert(1)</script>`` is processed by the node (with the
fake processor); with the node's credentials the page shows the node's health, the study's job with its
details and links, and the rules: an edit with an error is refused naming the line and the field, the fixed
rules are saved (the previous version kept, with the user who replaced it) and tested on the study. The
description is shown as text and no alert opens. A change without the CSRF header is refused (403), over
plain HTTP with the credentials and through a form posted from a page of another origin. Screenshots go to
``test-artifacts/admin-ui/`` (or ``$LESION_AI_TEST_ARTIFACTS/admin-ui/``).

The Models tab, on a node with two registered models (one with shadow runs and its agreement report) and
30 labels: the models' rows and figures (n/a with the report's note where null), shadow started and a model
promoted from the page (the confirm names both models; dismissed, nothing changes), the history, the node's
error message when a promotion fails, and the labels a page at a time. Screenshots go to
``test-artifacts/admin-models/``.
"""

from __future__ import annotations

import io
import json
import threading
import time
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

import numpy as np
import pytest

from lesion_engine.model.model_card import CARD_FILE, WEIGHTS_FILE, model_identity
from orthanc_plugin.admin.routes import CSRF_HEADER, CSRF_VALUE
from orthanc_plugin.admin.ui import CONTENT_SECURITY_POLICY, UI_BASE
from orthanc_plugin.cli.dicomsend import dicom_files, send_files
from orthanc_plugin.intake.labels import LABELS_FILE, Label, LabelStore, SegmentText
from orthanc_plugin.models.shadow import Grid, ShadowStore, StudyEvidence, agreement_report
from tests.support.browser_env import ARTIFACTS_ROOT, BrowserPage, chromium_driver
from tests.support.node_env import OrthancFleet, OrthancServer, find_study, jobs, make_study, wait_for

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

    def answer_confirm(self, accept: bool, before: Callable[[], object] | None = None) -> str:
        """Wait for the page's confirm dialog, run ``before`` while it is open (the page's scripts wait),
        accept or dismiss it; returns its text."""
        from selenium.common.exceptions import NoAlertPresentException

        def dialog() -> Any:
            try:
                return self.driver.switch_to.alert
            except NoAlertPresentException:
                return None

        alert = self.wait(dialog, 10, "the confirm dialog")
        text = str(alert.text)
        if before is not None:
            before()
        if accept:
            alert.accept()
        else:
            alert.dismiss()
        return text

    def cells(self, css: str) -> list[str]:
        """The texts of the cells of the table row matching ``css``."""
        return list(
            self.driver.execute_script(
                "const r = document.querySelector(arguments[0]);"
                "return r ? Array.from(r.cells).map((c) => c.innerText.trim()) : [];",
                css,
            )
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
def headless_chromium(
    profile: Path, credentials: dict[str, str], artifacts: Path = ARTIFACTS
) -> Iterator[Browser]:
    """Debian's Chromium, logged in to the node (see :func:`tests.support.browser_env.chromium_driver`)."""
    capabilities = {"unhandledPromptBehavior": "ignore"}
    with chromium_driver(
        profile, credentials, artifacts, window="1440,900", capabilities=capabilities
    ) as driver:
        browser = Browser(driver, artifacts)
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
    knee_uid = make_study(
        tmp_path / "knee", study_description="MR KNEE", body_part="KNEE", series=("pd_tse_sag",)
    )
    report = send_files(
        dicom_files([tmp_path / "study", tmp_path / "ct", tmp_path / "knee"]),
        "127.0.0.1",
        node.dicom_port,
        "SCANNER",
        node.aet,
    )
    assert report.sent == 12 and not report.failed

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
        assert driver.execute_script("return document.querySelectorAll('script').length") == 2
        assert browser.no_alert()
        browser.screenshot("02-jobs")
        # The knee MR matched no rule: listed as ignored, with each rule's outcome.
        ignored = browser.wait_text("#ignored-table", knee_uid)
        assert "prostate-mr: not matched: none of its 1 series matches" in ignored, ignored
        assert "BodyPartExamined is 'KNEE'" in ignored and "ct-research: not matched" in ignored, ignored
        assert study_uid not in ignored and ct_uid not in ignored
        driver.execute_script("document.getElementById('ignored-table').scrollIntoView()")
        browser.screenshot("02b-ignored-studies")
        driver.execute_script("window.scrollTo(0, 0)")

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
        assert driver.execute_script("return document.querySelectorAll('script').length") == 2
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

        # Opened with the credentials in its address (fetch refuses such URLs): the page still works.
        user, password = (quote(credentials[k], safe="") for k in ("username", "password"))
        driver.get(f"http://{user}:{password}@127.0.0.1:{node.http_port}{UI_BASE}")
        browser.wait_text("#health-status", "OK")
        assert "cannot be reached" not in browser.text()
        browser.screenshot("07-credentials-in-the-address")

    console = (ARTIFACTS / "console.txt").read_text(encoding="utf-8")
    assert "Content Security Policy" not in console and "Refused to" not in console, console
    assert json.loads(node.fetch("/lesion-ai/health")[2])["status"] == "ok"


# -- the Models tab -----------------------------------------------------------------------------------------
MODELS_ARTIFACTS = ARTIFACTS_ROOT / "admin-models"
GRID = Grid((0.0, 0.0, 0.0), (1.0, 1.0, 3.0), (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0), (16, 16, 4))
BLOB = (slice(1, 3), slice(4, 8), slice(4, 8))
OTHER = (slice(1, 3), slice(10, 14), slice(10, 14))
Lesion = tuple[slice, ...] | None


def _zip(folder: Path) -> bytes:
    """An artifact's card and weights, zipped as ``lesion-ai models add`` uploads them."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name in (CARD_FILE, WEIGHTS_FILE):
            archive.write(folder / name, name)
    return buffer.getvalue()


def _evidence(uid: str, lesion: Lesion, probability: float) -> StudyEvidence:
    detection = np.zeros(GRID.size[::-1], dtype=np.float32)
    if lesion is not None:
        detection[lesion] = probability
    return StudyEvidence(uid, probability if lesion is not None else 0.0, detection, GRID)


def _shadow_runs(
    folder: Path, runs: list[tuple[str, Lesion, float, Lesion]], labelled: dict[str, Lesion]
) -> dict[str, Any]:
    """Shadow runs of the model in ``folder`` (study, its lesion and probability, the active model's lesion)
    and its agreement report, as a worker keeps them; ``labelled``: the radiologists' lesion of a study."""
    store = ShadowStore(folder)
    for uid, lesion, probability, active in runs:
        store.save(_evidence(uid, lesion, probability), _evidence(uid, active, 0.8), [], {"job": 0})

    def labels(uid: str, grid: Grid) -> Any:
        if uid not in labelled:
            return None
        out = np.zeros(grid.size[::-1], dtype=np.int16)
        lesion = labelled[uid]
        if lesion is not None:
            out[lesion] = 3
        return out

    return agreement_report(store, labels, model_identity(str(folder)))


def _record_labels(home: Path, count: int) -> list[Label]:
    """``count`` labels in the node's label store, oldest first (the node records a radiologist's SEG so;
    how it finds them is tested in test_node_labels); the newest has a segment named like a script."""
    store = LabelStore(home / LABELS_FILE)
    made = []
    try:
        for n in range(count):
            segments = [SegmentText(1, "ISUP 3", "peripheral zone", "MANUAL", 3, None)]
            if n % 2:
                segments.append(SegmentText(2, "PI-RADS 4", "", "MANUAL", None, 4))
            if n == count - 1:
                segments.append(SegmentText(3, SCRIPT, "", "MANUAL", None, None))
            label = Label(
                study=f"study-{n:02d}",
                study_instance_uid=f"1.2.826.0.1.3680043.8.498.{n + 1}",
                series=f"seg-{n:02d}",
                series_instance_uid=f"1.2.826.0.1.3680043.8.499.{n + 1}",
                instance=f"instance-{n:02d}",
                sop_instance_uid=f"1.2.826.0.1.3680043.8.500.{n + 1}",
                manufacturer="Reader workstation",
                series_description="lesions",
                segments=tuple(segments),
                referenced_series=("1.2.826.0.1.3680043.8.501.1",),
                recorded_at=time.time() - (count - n) * 3600,
            )
            assert store.add(label)
            made.append(label)
    finally:
        store.close()
    return made


def _shown(value: Any, key: str) -> str:
    """A figure as the page shows it."""
    if value is None:
        return "n/a"
    return str(value) if key == "studies" else f"{value:.2f}"


FIGURES = [
    ("with_active", "auroc"),
    ("with_active", "sensitivity_at_1_fp"),
    ("with_active", "same_patient_call"),
    ("with_labels", "studies"),
    ("with_labels", "auroc"),
    ("with_labels", "sensitivity_at_1_fp"),
]


def test_the_models_tab_in_a_browser(fleet: OrthancFleet, tmp_path: Path) -> None:
    from tests.support.model_helpers import write_tiny_artifact

    for old in MODELS_ARTIFACTS.glob("*.png"):
        old.unlink()
    node = fleet.node(stable_age=1).start()
    client = node.client()
    credentials = node.credentials or {}
    user = credentials["username"]

    def post(path: str, body: bytes = b"") -> tuple[int, Any]:
        headers = {CSRF_HEADER: CSRF_VALUE, "Content-Type": "application/zip"}
        status, _, answer = node.fetch(path, method="POST", body=body, headers=headers)
        return status, json.loads(answer)

    for name, seed in (("site-a", 1), ("site-b", 2)):
        status, answer = post(
            f"/lesion-ai/models/{name}", _zip(write_tiny_artifact(tmp_path / name, seed=seed))
        )
        assert status == 201, answer
    models_folder = node.home / "models"
    assert (models_folder / "site-a" / CARD_FILE).is_file()
    # site-a: four studies, figures throughout; site-b: one negative study, most figures undefined.
    _shadow_runs(
        models_folder / "site-a",
        [
            ("1.1", BLOB, 0.9, BLOB),
            ("1.2", None, 0.0, None),
            ("1.3", BLOB, 0.7, BLOB),
            ("1.4", OTHER, 0.5, None),
        ],
        {"1.1": BLOB, "1.2": None, "1.4": OTHER},
    )
    report_b = _shadow_runs(models_folder / "site-b", [("1.1", None, 0.0, None)], {})
    assert report_b["with_active"]["auroc"] is None and report_b["with_active"]["notes"]
    labels = _record_labels(node.home, 30)
    listing = client.get_json("/lesion-ai/models")
    by_name = {m["name"]: m for m in listing["models"]}
    assert set(by_name) == {"configured", "site-a", "site-b"} and listing["active"] == "configured"

    with headless_chromium(tmp_path / "chromium-profile", credentials, MODELS_ARTIFACTS) as browser:
        driver = browser.driver
        driver.get(f"{node.url}{UI_BASE}#models")
        browser.wait_text("#models-table", "site-b")
        assert "active: configured" in browser.text("#models-active")
        for name, model in by_name.items():
            cells = browser.cells(f'#models-table tr[data-model="{name}"]')
            assert cells[0].split() == [name, model["identity"]], cells
            assert cells[1] == model["status"], cells
            if name == "configured":
                assert cells[1] == "active" and cells[6:12] == ["n/a"] * 6
                continue
            created = datetime.fromisoformat(model["created"]).astimezone().date().isoformat()
            studies = "4" if name == "site-a" else "1"
            assert cells[1:6] == ["registered", "0.0.1", created, "none (random weights)", studies], cells
            agreement = model["agreement"]
            wanted = [_shown(agreement[group][key], key) for group, key in FIGURES]
            assert cells[6:12] == wanted, (name, cells)
        assert "n/a" not in browser.cells('#models-table tr[data-model="site-a"]')
        # Where a figure is null, its tooltip is the report's note.
        titles = driver.execute_script(
            "return Array.from(document.querySelectorAll('#models-table tr[data-model=\"site-b\"] td'))"
            ".map((c) => { const n = c.querySelector('.na'); return n ? n.title : null; });"
        )
        with_active_notes = "; ".join(report_b["with_active"]["notes"])
        with_labels_notes = "; ".join(report_b["with_labels"]["shadow"]["notes"])
        assert titles[6:12] == [with_active_notes, with_active_notes, None, None] + [with_labels_notes] * 2
        assert "AUROC needs studies with and without" in with_active_notes
        assert with_labels_notes == "no study to compare"
        assert driver.find_element("css selector", 'button[data-promote="configured"]').get_attribute(
            "disabled"
        )
        assert driver.find_element("css selector", 'button[data-shadow="configured"]').get_attribute(
            "disabled"
        )
        assert "lesion-ai models add" in browser.text("#models-hint")

        # Shadow runs of site-a started from the page.
        browser.click('button[data-shadow="site-a"]')
        browser.wait_text("#models-message", "Shadow runs of site-a start")
        wait_for(
            lambda: client.get_json("/lesion-ai/models/site-a")["status"] == "shadow", 20, "site-a in shadow"
        )
        browser.wait_text('#models-table tr[data-model="site-a"]', "Stop shadow")
        assert browser.cells('#models-table tr[data-model="site-a"]')[1] == "shadow"

        # Promotion asks first, naming the model and the one it replaces; dismissed, nothing changes.
        browser.click('button[data-promote="site-a"]')
        question = browser.answer_confirm(accept=False)
        assert "site-a" in question and "replacing configured" in question
        assert client.get_json("/lesion-ai/models")["active"] == "configured"
        browser.click('button[data-promote="site-b"]')
        question = browser.answer_confirm(accept=True)
        assert "Promote site-b" in question and "replacing configured" in question
        browser.wait_text("#models-message", "site-b is the active model now")
        after = client.get_json("/lesion-ai/models")
        assert after["active"] == "site-b"
        assert {m["name"]: m["status"] for m in after["models"]} == {
            "configured": "registered",
            "site-a": "shadow",
            "site-b": "active",
        }
        newest = after["history"][0]
        assert (newest["action"], newest["model"], newest["previous"], newest["user"]) == (
            "promote",
            "site-b",
            "configured",
            user,
        )
        browser.wait_text("#models-active", "active: site-b")
        assert browser.cells('#models-table tr[data-model="site-b"]')[1] == "active"
        assert browser.cells('#models-table tr[data-model="configured"]')[1] == "registered"

        def history_rows() -> list[list[str]] | None:
            rows: list[list[str]] = driver.execute_script(
                "return Array.from(document.querySelectorAll('#models-history tbody tr'))"
                ".map((r) => Array.from(r.cells).map((c) => c.innerText.trim()));"
            )
            return rows if rows and rows[0][2:] == ["promote", "site-b", "configured"] else None

        history = browser.wait(history_rows, 20, "the promotion in the history")
        assert history[0][1] == user and history[0][0]
        assert [row[2] for row in history] == [h["action"] for h in after["history"]]
        assert [row[3] for row in history] == [h["model"] for h in after["history"]]
        browser.wait_text("#labels-table", labels[-1].study_instance_uid)
        # It fits a 1440 px wide window (the models' table scrolls inside its card if it must).
        assert driver.execute_script("return document.documentElement.scrollWidth <= window.innerWidth")
        driver.set_window_size(1440, 1250)
        driver.execute_script(
            "window.scrollTo(0, 0); document.querySelector('#view-models .scroll').scrollLeft = 0"
        )
        browser.screenshot("07-models")
        driver.set_window_size(1440, 900)

        # A failed promotion shows the node's message: site-a disappears while the confirm is open.
        card = (models_folder / "site-a" / CARD_FILE).read_bytes()
        browser.click('button[data-promote="site-a"]')
        question = browser.answer_confirm(
            accept=True, before=lambda: (models_folder / "site-a" / CARD_FILE).unlink()
        )
        assert "replacing site-b" in question
        message = browser.wait_text("#models-message", "not promoted")
        assert "no model called 'site-a'" in message
        assert client.get_json("/lesion-ai/models")["active"] == "site-b"
        browser.screenshot("08-promotion-refused")
        (models_folder / "site-a" / CARD_FILE).write_bytes(card)

        # The labels, newest first, 25 a page; the segment named like a script is text.
        rows = driver.find_elements("css selector", "#labels-table tbody tr")
        assert len(rows) == 25
        newest_first = [label.study_instance_uid for label in reversed(labels)]
        shown = [row.get_attribute("data-label") for row in rows]
        listed = client.get_json("/lesion-ai/labels?limit=25")["labels"]
        assert shown == [str(label["id"]) for label in listed]
        assert [label["study_instance_uid"] for label in listed] == newest_first[:25]
        first = browser.cells("#labels-table tbody tr:first-child")
        assert first[:2] == [labels[-1].study_instance_uid, labels[-1].series_instance_uid]
        grades = driver.execute_script(
            "return Array.from(document.querySelectorAll('#labels-table tbody tr:first-child li'))"
            ".map((li) => Array.from(li.querySelectorAll('.grade')).map((g) => g.textContent));"
        )
        assert grades == [["ISUP 3"], ["PI-RADS 4"], ["no grade"]]
        assert "#1 ISUP 3" in first[2] and "#2 PI-RADS 4" in first[2] and f"#3 {SCRIPT}" in first[2]
        assert browser.text("#labels-info") == "labels 1–25 of 30"
        assert driver.find_element("id", "labels-prev").get_attribute("disabled")
        browser.click("#labels-next")
        browser.wait_text("#labels-info", "labels 26–30 of 30")
        older = [browser.cells(f"#labels-table tbody tr:nth-child({n})")[0] for n in range(1, 6)]
        assert older == newest_first[25:]
        assert driver.find_element("id", "labels-next").get_attribute("disabled")
        browser.click("#labels-prev")
        browser.wait_text("#labels-info", "labels 1–25 of 30")
        assert driver.execute_script("return document.querySelectorAll('script').length") == 2
        assert browser.no_alert()

    console = (MODELS_ARTIFACTS / "console.txt").read_text(encoding="utf-8")
    assert "Content Security Policy" not in console and "Refused to" not in console, console
