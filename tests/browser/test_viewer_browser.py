"""The OHIF viewer served by the node, over HTTP and in a real browser (headless Chromium).

Over HTTP: the viewer is behind Orthanc's authentication, answers with the right content types, cannot be
led out of its folder through Orthanc (``..``, encoded ``%2e%2e``, absolute paths), is off with
``Viewer: false``, and the DICOMweb BulkDataURIs that OHIF follows stay on the page's origin.

In the browser: the node processes the real fixture study with the real engine; OHIF opens it at
``/lesion-ai/viewer/viewer?StudyInstanceUIDs=...`` with the node's credentials, loads the SEG (its segments
listed in the segmentation panel) and the SR (every lesion's measurements listed in the measurements panel,
with their values, and the SR not marked incompatible). Screenshots and the browser's console go to
``test-artifacts/viewer/`` (or ``$LESION_AI_TEST_ARTIFACTS/viewer/``). On the same study, a radiologist's
verdicts are then given in OHIF and read back by the node (:mod:`tests.support.ohif_verdict_loop`).
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pydicom
import pytest
from pydicom.dataset import Dataset

from orthanc_plugin.admin.qido import QIDO_ROOT
from orthanc_plugin.admin.viewer import BASE_URL
from orthanc_plugin.cli.dicomsend import dicom_files, send_files
from tests.support.browser_env import ARTIFACTS_ROOT, BrowserPage, chromium_driver
from tests.support.node_env import OrthancFleet, OrthancServer, find_study, jobs, make_study, wait_for

pytestmark = [pytest.mark.orthanc, pytest.mark.slow]

ARTIFACTS = ARTIFACTS_ROOT / "viewer"
#: Tracking Identifiers by which OHIF maps an SR measurement group to a tool it can show and track.
TOOL_PREFIX = "Cornerstone3DTools@^0.1.0:"
T = TypeVar("T")


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[OrthancFleet]:
    servers = OrthancFleet(tmp_path)
    yield servers
    servers.close()


def _viewer_installed(node: OrthancServer) -> None:
    status, _, body = node.fetch(BASE_URL)
    if status == 503:
        pytest.fail(f"the node cannot serve the viewer: {body.decode()}")


# -- over HTTP --------------------------------------------------------------------------------------------
def test_viewer_over_http_behind_auth_typed_and_confined(fleet: OrthancFleet, tmp_path: Path) -> None:
    node = fleet.node(workers=0).start()
    off = fleet.node("off", workers=0, extra={"Viewer": False}).start()
    _viewer_installed(node)

    assert node.fetch(BASE_URL, auth=False)[0] == 401
    assert node.fetch(f"{BASE_URL}app-config.js", auth=False)[0] == 401

    status, headers, index = node.fetch(BASE_URL)
    assert (status, headers["content-type"]) == (200, "text/html; charset=utf-8")
    assert f'window.PUBLIC_URL="{BASE_URL}"'.encode() in index
    assert node.fetch(BASE_URL.rstrip("/"))[2] == index
    assert node.fetch(f"{BASE_URL}viewer?StudyInstanceUIDs=1.2.3")[2] == index  # a route of the app
    status, headers, config = node.fetch(f"{BASE_URL}app-config.js")
    assert (status, headers["content-type"]) == (200, "text/javascript; charset=utf-8")
    assert (
        b'"routerBasename": "/lesion-ai/viewer"' in config
        and b'"qidoRoot": "/lesion-ai/qido"' in config
        and b'"wadoRoot": "/dicom-web"' in config
    )
    # The BulkDataURIs that Orthanc writes from the Host header are read as relative to the page's origin.
    assert f'"startsWith": "http://127.0.0.1:{node.http_port}/dicom-web/"'.encode() in config

    assets = re.findall(rb'(?:src|href)="' + BASE_URL.encode() + rb'([^"?]+)"', index)
    bundle = next(a.decode() for a in assets if a.startswith(b"app.bundle.") and a.endswith(b".js"))
    status, headers, code = node.fetch(BASE_URL + bundle)
    assert (status, headers["content-type"]) == (200, "text/javascript; charset=utf-8")
    assert f'__webpack_require__.p = "{BASE_URL}";'.encode() in code
    assert "immutable" in headers["cache-control"]
    status, headers, css = node.fetch(f"{BASE_URL}app.bundle.css")
    assert (status, headers["content-type"]) == (200, "text/css; charset=utf-8")
    assert b"url(/" not in css.replace(f"url({BASE_URL}".encode(), b"")
    wasm = re.search(rb"[0-9a-f]{16}\.wasm", code)
    assert wasm, "no WebAssembly module named in the app bundle"
    status, headers, module = node.fetch(BASE_URL + wasm.group().decode())
    assert (status, headers["content-type"], module[:4]) == (200, "application/wasm", b"\0asm")
    assert node.fetch(f"{BASE_URL}no-such-file.js")[0] == 404

    # Whatever Orthanc does with them, these paths never reach a file outside the viewer's folder.
    secret = tmp_path / "node" / "credentials.json"
    for path in (
        f"{BASE_URL}../../etc/passwd",
        f"{BASE_URL}%2e%2e/%2e%2e/etc/passwd",
        f"{BASE_URL}..%2f..%2f..%2fetc%2fpasswd",
        f"{BASE_URL}%252e%252e/%252e%252e/etc/passwd",
        f"{BASE_URL}/etc/passwd",
        f"{BASE_URL}%2fetc%2fpasswd",
        f"{BASE_URL}..%2f..%2f..%2f..%2f..%2f..%2f..%2f..%2f..%2f..%2f{secret.relative_to('/')}",
        f"{BASE_URL}.%2e/.%2e/credentials.json",
    ):
        status, _, body = node.fetch(path)
        assert b"root:" not in body and b"password" not in body, path
        assert status != 200 or body == index, (path, status, body[:200])

    status, _, body = off.fetch(BASE_URL)
    assert status == 404 and b"turned off" in body and b"Viewer: true" in body
    assert off.fetch("/lesion-ai/health")[0] == 200

    # OHIF follows the BulkDataURIs of the DICOMweb metadata: they must stay on the page's origin.
    folder = tmp_path / "study"
    study_uid = make_study(folder, images=2)
    report = send_files(dicom_files([folder]), "127.0.0.1", node.dicom_port, "SCANNER", node.aet)
    assert report.sent == 4 and not report.failed
    status, _, metadata = node.fetch(f"/dicom-web/studies/{study_uid}/metadata")
    assert status == 200
    uris = re.findall(r'"BulkDataURI"\s*:\s*"([^"]+)"', metadata.decode())
    assert uris, "no BulkDataURI in the metadata"
    assert all(uri.startswith(f"{node.url}/dicom-web/") for uri in uris), uris[:3]
    # Behind a reverse proxy: Forwarded (unquoted values: DICOMweb 1.7 keeps quotes) names the public origin.
    forwarded = {"Forwarded": "host=viewer.example.org;proto=https"}
    _, _, behind_proxy = node.fetch(f"/dicom-web/studies/{study_uid}/metadata", headers=forwarded)
    assert b'"https://viewer.example.org/dicom-web/' in behind_proxy


# -- in the browser ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ToolGroup:
    """A measurement group of the SR that OHIF loads as a tracked measurement."""

    tool: str
    label: str
    concept: str
    value: float
    unit: str


def _code(item: Dataset, sequence: str = "ConceptNameCodeSequence") -> tuple[str, str]:
    code = getattr(item, sequence)[0]
    return str(code.CodeValue), str(code.CodeMeaning)


def sr_tool_groups(sr: Dataset) -> list[ToolGroup]:
    """The SR's measurement groups that name a Cornerstone3D tool, with their Comment (OHIF's label) and
    first NUM (the value OHIF shows)."""
    out = []
    for container in sr.ContentSequence:
        if container.ValueType != "CONTAINER" or _code(container)[0] != "126010":  # Imaging Measurements
            continue
        for group in container.get("ContentSequence", []):
            if group.ValueType != "CONTAINER" or _code(group)[0] != "125007":  # Measurement Group
                continue
            items = list(group.get("ContentSequence", []))
            texts = {_code(i)[0]: str(i.TextValue) for i in items if i.ValueType == "TEXT"}
            tool = texts.get("112039", "")
            if not tool.startswith(TOOL_PREFIX):
                continue
            num = next((i for i in items if i.ValueType == "NUM"), None)
            if num is None:
                raise AssertionError(f"SR measurement group {tool} has no NUM")
            value = num.MeasuredValueSequence[0]
            out.append(
                ToolGroup(
                    tool=tool.removeprefix(TOOL_PREFIX),
                    label=texts.get("121106", ""),
                    concept=_code(num)[1],
                    value=float(value.NumericValue),
                    unit=_code(value, "MeasurementUnitsCodeSequence")[0],
                )
            )
    return out


def _first_number(text: str) -> float | None:
    match = re.search(r"-?\d+(?:\.\d+)?", text)
    return float(match.group()) if match else None


class Browser(BrowserPage):
    """Headless Chromium driven by Selenium, with screenshots into ``artifacts``."""

    def click(self, css: str) -> None:
        element = self.driver.find_element("css selector", css)
        self.driver.execute_script("arguments[0].click()", element)

    def dismiss(self, label: str) -> None:
        """Click the button labelled ``label`` if one is shown (OHIF's tour, its investigational-use note)."""
        self.driver.execute_script(
            "for (const b of document.querySelectorAll('button')) {"
            "  if (b.innerText.trim() === arguments[0]) { b.click(); }"
            "}",
            label,
        )

    def open_series(self, description: str) -> None:
        """Double-click the study browser's thumbnail of a series (OHIF's way to show it)."""
        found = self.driver.execute_script(
            "for (const t of document.querySelectorAll('[data-cy^=\"study-browser-thumbnail\"]')) {"
            "  if (t.innerText.includes(arguments[0])) {"
            "    t.dispatchEvent(new MouseEvent('dblclick', {bubbles: true})); return true;"
            "  }"
            "}"
            "return false;",
            description,
        )
        assert found, f"no thumbnail of the series {description!r}"

    def measurement_rows(self) -> list[dict[str, Any]]:
        rows = self.driver.execute_script(
            "return Array.from(document.querySelectorAll('[data-cy^=\"measurement-table-row-\"]')).map(r => ({"
            "  title: (r.querySelector('[data-cy=\"data-row-title\"]') || {}).innerText || '',"
            "  lines: Array.from(r.querySelectorAll('[data-cy=\"data-row-detail-line\"]')).map(l => l.innerText)"
            "}));"
        )
        return list(rows)

    def viewport_image(self) -> int | None:
        """The image number the viewport shows (its overlay "I:9 (9/19)"), or None."""
        found = re.findall(r"\bI:\s*(\d+)\s*\((\d+)/(\d+)\)", self.text())
        return int(found[0][0]) if found else None

    def jump_through_measurements(self) -> list[tuple[str, int, int | None]]:
        """Click each measurement row; (row title, the row's image "I: n", the image the viewport then shows).

        OHIF 3.13's ``DataRow`` carries its ``onClick`` (``onSelect``: the command ``jumpToMeasurement``, which
        sets the active viewport's view reference to the measurement's ``referencedImageId``) on the row's
        header, ``[data-cy="data-row"]`` (number, title, buttons), not on the details below it. The click is a
        DOM ``click()`` on that header: the WebDriver's native mouse input (ActionChains) does not reach this
        headless page at all (not one pointer or mouse event arrives at its document, so nothing is selected
        either), whereas a person's click on the header runs the same handler.
        """
        out: list[tuple[str, int, int | None]] = []
        rows = self.driver.find_elements("css selector", '[data-cy^="measurement-table-row-"]')
        for row in rows:
            self.driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", row)
            titles = row.find_elements("css selector", '[data-cy="data-row-title"]')
            title = titles[0].text if titles else ""
            wanted = re.findall(r"\bI:\s*(\d+)", row.text)
            headers = row.find_elements("css selector", '[data-cy="data-row"]')
            if not wanted or not headers:
                out.append((title, -1, None))
                continue
            self.driver.execute_script("arguments[0].click()", headers[0])
            target = int(wanted[-1])

            def shows(target: int = target) -> bool | None:
                return self.viewport_image() == target or None

            with contextlib.suppress(AssertionError):
                self.wait(shows, 10, f"image {target}")
            out.append((title, target, self.viewport_image()))
        return out

    def badge_tooltips(self) -> list[str]:
        """The tooltips of the viewports' status badges, each with the badge's text (OHIF says there
        whether an SR can be loaded; the badge of an SR it cannot load shows an alert icon and "SR")."""
        texts = []
        for badge in self.driver.find_elements("css selector", '[data-cy^="ModalityLoadBadge"]'):
            # Radix opens a tooltip on its trigger's pointermove (or focus); a synthesized mouse move of
            # the headless browser does not reach it under the viewport's canvas.
            self.driver.execute_script(
                "const t = arguments[0].closest('[data-state]') || arguments[0];"
                "t.dispatchEvent(new PointerEvent('pointermove', {bubbles: true, pointerType: 'mouse'}));"
                "t.dispatchEvent(new FocusEvent('focusin', {bubbles: true}));",
                badge,
            )
            tooltip = ""
            deadline = time.monotonic() + 3.0
            while not tooltip and time.monotonic() < deadline:
                time.sleep(0.2)
                tooltip = str(
                    self.driver.execute_script(
                        "return Array.from(document.querySelectorAll('[data-radix-popper-content-wrapper]'))"
                        ".map(t => t.innerText).join(' ');"
                    )
                ).strip()
            texts.append(f"{badge.text.strip()}: {tooltip or '(no tooltip)'}")
        return texts

    def requests(self) -> tuple[list[str], list[str]]:
        """What the page asked over HTTP so far: the URLs requested, and the requests that failed or were
        answered 400 and above (the browser's own pages, ``chrome://``, left out)."""
        urls: dict[str, str] = {}
        failed = []
        for entry in self.driver.get_log("performance"):
            message = json.loads(entry["message"])["message"]
            params = message.get("params", {})
            if message["method"] == "Network.requestWillBeSent":
                urls[params["requestId"]] = params["request"]["url"]
            elif message["method"] == "Network.responseReceived":
                response = params["response"]
                if response["status"] >= 400:
                    failed.append(f"{response['status']} {response['url']}")
            elif message["method"] == "Network.loadingFailed" and not params.get("canceled"):
                url = urls.get(params["requestId"], "")
                if url.startswith("http"):
                    failed.append(f"{params.get('errorText')} {url}")
        return [u for u in urls.values() if u.startswith("http")], failed


@contextmanager
def headless_chromium(profile: Path, credentials: dict[str, str]) -> Iterator[Browser]:
    """Debian's Chromium, logged in to the node (see :func:`tests.support.browser_env.chromium_driver`), with WebGL
    in software (OHIF renders with it) and the network log kept for :meth:`Browser.requests`."""
    with chromium_driver(
        profile,
        credentials,
        ARTIFACTS,
        arguments=("--enable-unsafe-swiftshader",),
        logs=("browser", "performance"),
    ) as driver:
        browser = Browser(driver, ARTIFACTS)
        try:
            yield browser
        finally:
            browser.save_console()


def _result(node: OrthancServer, study: str, modality: str) -> Dataset:
    client = node.client()
    found = [
        s for s in client.get_json(f"/studies/{study}/series") if s["MainDicomTags"]["Modality"] == modality
    ]
    if len(found) != 1:
        raise AssertionError(
            f"the study holds {len(found)} {modality} series after processing, expected 1 (no SEG: the engine "
            "found no lesion in the fixture study)"
        )
    [series] = found
    [instance] = series["Instances"]
    return pydicom.dcmread(io.BytesIO(client.get_bytes(f"/instances/{instance}/file")))


@pytest.mark.fixture
def test_ohif_shows_the_lesions_of_the_seg_and_the_measurements_of_the_sr(
    fleet: OrthancFleet, prostatex: Path, tmp_path: Path
) -> None:
    for old in ARTIFACTS.glob("0*.png"):
        old.unlink()
    # The real engine and result writers; without the anatomical gate's filtering, which removes every lesion
    # the phantom-trained default model finds on this study (they lie outside the gland), leaving nothing to
    # show; the gland model still runs, so the SR holds the prostate volume group as well.
    node = fleet.node(processor="tests.support.node_fakes:ungated_engine", extra={"Device": "cpu"}).start()
    _viewer_installed(node)
    client = node.client()
    report = send_files(dicom_files([prostatex / "dicom"]), "127.0.0.1", node.dicom_port, "SCANNER", node.aet)
    assert report.sent > 0 and not report.failed

    def processed() -> bool:
        found = jobs(client)
        if any(j["state"] == "failed" for j in found):
            raise AssertionError(f"the job failed: {found}")
        return bool(found) and all(j["state"] == "done" for j in found)

    wait_for(processed, 240, "the node to process the fixture study")
    study_uid = str(
        pydicom.dcmread(dicom_files([prostatex / "dicom"])[0], stop_before_pixels=True).StudyInstanceUID
    )
    study = find_study(client, study_uid)
    assert study is not None
    seg, sr = _result(node, study, "SEG"), _result(node, study, "SR")
    segments = [str(s.SegmentLabel) for s in seg.SegmentSequence]
    assert segments, "the fixture study should give at least one lesion"
    groups = sr_tool_groups(sr)
    prostate = [
        group
        for container in sr.ContentSequence
        if _code(container)[0] == "126010"
        for group in container.ContentSequence
        if any(i.ValueType == "TEXT" and str(i.TextValue) == "Prostate gland" for i in group.ContentSequence)
    ]
    assert len(prostate) == 1, "the SR should hold the prostate volume group"

    check_ohif_shows_the_results(node, study_uid, seg, sr, tmp_path, groups, segments)
    # Then the radiologist's verdicts, given in OHIF and read by the node, to the admin page (imported here:
    # that module uses this one's Browser).
    from tests.support.ohif_verdict_loop import check_the_verdict_loop

    check_the_verdict_loop(node, study, study_uid, tmp_path)


def check_ohif_shows_the_results(
    node: OrthancServer,
    study_uid: str,
    seg: Dataset,
    sr: Dataset,
    tmp_path: Path,
    groups: list[ToolGroup],
    segments: list[str],
    prefix: str = "",
) -> None:
    """Open the study in OHIF served by ``node``: the SEG's segments are listed, the SR's measurements load
    as tracked measurements with their values, clicking one opens its image, and everything comes from the
    node (screenshots named ``prefix`` + step)."""
    description = str(seg.get("StudyDescription", "") or "")
    assert description, "the SEG should carry the study's description"
    with headless_chromium(tmp_path / "chromium-profile", node.credentials or {}) as browser:
        # The study list: its description shows (OHIF asks for it with a comma-separated includefield,
        # which the node's QIDO route splits for Orthanc's DICOMweb plugin).
        browser.driver.get(f"{node.url}{BASE_URL}")
        browser.wait(lambda: description in browser.text() or None, 60, "the study list with its description")
        browser.screenshot(prefix + "00-study-list")
        listed = browser.text()
        browser.driver.get(f"{node.url}{BASE_URL}viewer?StudyInstanceUIDs={study_uid}")
        descriptions = [str(seg.SeriesDescription), str(sr.SeriesDescription)]
        browser.wait(lambda: all(d in browser.text() for d in descriptions), 90, "the study browser")
        time.sleep(1.0)
        browser.dismiss("Skip all")
        browser.dismiss("Confirm and hide")
        browser.screenshot(prefix + "01-study")

        browser.open_series(str(seg.SeriesDescription))
        browser.click('[data-cy="panelSegmentation-btn"]')
        browser.wait(lambda: all(s in browser.text() for s in segments), 60, f"the segments {segments}")
        time.sleep(1.0)
        browser.screenshot(prefix + "02-segmentation")

        browser.open_series(str(sr.SeriesDescription))
        time.sleep(2.0)
        browser.click('[data-cy="trackedMeasurements-btn"]')
        with contextlib.suppress(AssertionError):  # what the page shows is checked below
            browser.wait(
                lambda: len(browser.measurement_rows()) >= max(len(groups), 1), 45, "the SR's measurements"
            )
        time.sleep(1.5)
        browser.screenshot(prefix + "03-measurements")
        rows = browser.measurement_rows()
        page = browser.text()
        tooltips = browser.badge_tooltips()
        requested, failed = browser.requests()
        refused = [line for line in browser.console() if "Content Security Policy" in line]
        jumps = browser.jump_through_measurements()
        browser.screenshot(prefix + "04-jumped")

    panel = json.dumps(rows, indent=1, ensure_ascii=False)
    assert not [t for t in tooltips if "not compatible" in t], f"OHIF marks the SR incompatible: {tooltips}"
    assert "not compatible" not in page
    assert len(groups) == 2 * len(segments), (
        f"the SR holds {len(groups)} measurement group(s) that OHIF loads as measurements (Tracking "
        f"Identifier {TOOL_PREFIX}...), expected two per lesion ({len(segments)} lesions); the page's "
        f"measurements: {panel}"
    )
    assert f"Measurements ({len(groups)})" in page, page[-2000:]
    by_title = {row["title"]: row for row in rows}
    for group in groups:
        row = by_title.get(group.label)
        assert row is not None, f"measurement {group.label!r} ({group.tool}) not listed; listed: {panel}"
        shown = _first_number(row["lines"][0]) if row["lines"] else None
        assert shown is not None and abs(shown - group.value) <= max(0.05 * abs(group.value), 0.1), (
            f"{group.label!r}: {group.concept} {group.value} {group.unit} in the SR, the panel shows {row['lines']}"
        )
    # Clicking a measurement jumps to its image.
    assert len(jumps) == len(groups), jumps
    assert all(target == shown for _, target, shown in jumps), f"(row, its image, image shown): {jumps}"
    assert len({target for _, target, _ in jumps}) > 1, jumps  # the measurements lie on different slices
    assert not failed, f"requests that failed: {failed}"
    assert not refused, f"the viewer's Content-Security-Policy refused what OHIF needs: {refused}"
    # Everything (the app, its workers' code, DICOMweb, bulk data) comes from the node, nothing from elsewhere.
    elsewhere = sorted({u for u in requested if not u.startswith(node.url + "/")})
    assert not elsewhere, f"the viewer fetched from elsewhere than the node: {elsewhere}"
    assert any(u.startswith(f"{node.url}/dicom-web/") and "/frames/" in u for u in requested)
    assert "No Description" not in listed
    assert any(u.startswith(f"{node.url}{QIDO_ROOT}/studies?") for u in requested)
    searches = [u for u in requested if "includefield" in u]
    assert b"Unknown DICOM tag" not in node.log.read_bytes(), (
        f"Orthanc's DICOMweb could not read one of {searches}"
    )


def test_a_negative_study_shows_its_summary_in_ohif(
    fleet: OrthancFleet, prostatex: Path, tmp_path: Path
) -> None:
    """The node's defaults on the fixture (the packaged model with the anatomical gate) find no lesion: no
    SEG, and an SR that OHIF shows as nothing. The result summary image is listed in OHIF's study browser
    with the verdict in its description and opens as an image that says it."""
    node = fleet.node(processor=None, extra={"Device": "cpu"}).start()
    _viewer_installed(node)
    client = node.client()
    report = send_files(dicom_files([prostatex / "dicom"]), "127.0.0.1", node.dicom_port, "SCANNER", node.aet)
    assert report.sent > 0 and not report.failed
    wait_for(lambda: [j for j in jobs(client) if j["state"] == "done"] or None, 240, "the fixture processed")
    study_uid = str(
        pydicom.dcmread(dicom_files([prostatex / "dicom"])[0], stop_before_pixels=True).StudyInstanceUID
    )
    study = find_study(client, study_uid)
    assert study is not None
    modalities = {s["MainDicomTags"]["Modality"] for s in client.get_json(f"/studies/{study}/series")}
    assert "SEG" not in modalities, (
        "the defaults found a lesion in the fixture: this test needs a negative study"
    )
    summary = _result(node, study, "OT")
    assert summary.SeriesDescription == "AI summary: no lesion found (research)"
    assert "Prostate volume: " in summary.ImageComments and "not measured" not in summary.ImageComments
    with headless_chromium(tmp_path / "chromium-profile", node.credentials or {}) as browser:
        browser.driver.get(f"{node.url}{BASE_URL}viewer?StudyInstanceUIDs={study_uid}")
        browser.wait(
            lambda: "no lesion found" in browser.text() or None, 90, "the summary in the study browser"
        )
        time.sleep(1.0)
        browser.dismiss("Skip all")
        browser.dismiss("Confirm and hide")
        browser.open_series(str(summary.SeriesDescription))
        time.sleep(3.0)
        browser.screenshot("negative-01-summary")
        requested, failed = browser.requests()
    assert not failed, f"requests that failed: {failed}"
    summary_uid = str(summary.SeriesInstanceUID)
    assert any(summary_uid in u and "/frames/" in u for u in requested), "OHIF did not load the summary image"
