"""What a radiologist does in OHIF 3.13 to give a verdict on the AI's measurements, driven in the real viewer.

The node serves OHIF at ``/lesion-ai/viewer/``; a headless Chromium driven by Selenium (the ``Browser`` of
``tests/browser/test_viewer_browser.py``, passed in as an :class:`OhifPage`) opens a processed study, loads the node's
SR as tracked measurements, deletes one of the AI's measurements, draws a new Length on a T2W slice that holds
none of the AI's measurements, and stores the result with the measurement panel's "Create SR": OHIF writes a
TID 1500 SR (Enhanced SR, by dcmjs) and sends it with STOW-RS to the node's DICOMweb (``/dicom-web``), where
Orthanc stores it in the study. :func:`give_verdicts` does it all and reads the new SR back from Orthanc.

How the page is driven, and why:

* **Clicks are DOM clicks** (``element.click()`` from ``execute_script``). The WebDriver's native mouse input
  (ActionChains) does not reach this headless page at all (see ``Browser.jump_through_measurements``).
* **Radix menus and selects open on ``pointerdown``**, not on ``click``: the row's actions menu
  (``[data-cy="actionsMenuTrigger"]``) and the report dialog's "Series" select (``button[role=combobox]``)
  get a synthetic ``PointerEvent('pointerdown', {button: 0, pointerType: 'mouse'})``; their items
  (``[role=menuitem]``, ``[role=option]``) are then chosen with a DOM ``click()`` (Radix selects an item on
  ``click`` unless a mouse ``pointerdown`` on the item came first).
* **Scrolling through the stack is a synthetic ``WheelEvent``** on the viewport's canvas
  (``.cornerstone-canvas``): cornerstone3D's StackScroll tool, bound to the wheel, moves one image per event.
  The wheel direction that moves forwards is found by trying (OHIF's default bindings may invert it).
* **Drawing is synthetic ``MouseEvent``s**, as cornerstone3D's tools listen: ``mousedown`` (``buttons: 1``,
  ``clientX``/``clientY`` inside the canvas) on the viewport element, then ``mousemove`` events and a
  ``mouseup`` on the ``document`` (cornerstone3D's mouse-down listener adds its move and up listeners to the
  document). Activating the Length tool is a DOM click on the toolbar's ``[data-cy="Length-btn"]``. These
  events reach the tool the same way a person's do: the Length tool creates its annotation, OHIF's
  measurement service adds it to the tracked measurements and the panel lists it. Nothing is added through
  OHIF's services (``window.services`` is only *read*, for the SOP Instance UID of the image shown).
* **Text input goes through React's value setter**: the report name is set with the ``HTMLInputElement``
  value setter and an ``input`` event (React ignores a plain ``value =`` assignment).

OHIF's report dialog ("Create Report") offers to store the new SR as a new version of the SR the
measurements were loaded from (its "Series" select defaults to the node's SR series, OHIF's
predecessor-instance logic); :func:`create_sr` chooses "Create new series", so the node's own SR series is
left alone. OHIF numbers the new series one above the highest SR series number of the study (9903 after the
node's 9902): the node's own results are told apart by their Manufacturer ("Lesion AI"; OHIF writes
"Unspecified"), not by the number.
"""

from __future__ import annotations

import functools
import io
import re
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

import pydicom
from pydicom.dataset import Dataset

from orthanc_plugin.admin.viewer import BASE_URL

T = TypeVar("T")

#: Manufacturer of every object the node writes (tests/support/node_fakes.py, lesion_engine's writers).
NODE_MANUFACTURER = "Lesion AI"
#: The SOP classes OHIF may write for a TID 1500 report (dcmjs writes Enhanced SR), and the node's.
SR_CLASSES = frozenset(
    {
        "1.2.840.10008.5.1.4.1.1.88.11",  # Basic Text SR
        "1.2.840.10008.5.1.4.1.1.88.22",  # Enhanced SR
        "1.2.840.10008.5.1.4.1.1.88.33",  # Comprehensive SR
        "1.2.840.10008.5.1.4.1.1.88.34",  # Comprehensive 3D SR
    }
)
ROWS = '[data-cy^="measurement-table-row-"]'
PANEL = '[data-cy="trackedMeasurements-panel"]'
SAVED = "Measurements saved successfully"


class OhifPage(Protocol):
    """What these actions need of ``tests.browser.test_viewer_browser.Browser`` (given as a Protocol: no import
    cycle between the test module and this one)."""

    driver: Any
    artifacts: Path

    def text(self, css: str = "body") -> str: ...

    def screenshot(self, name: str) -> Path: ...

    def wait(self, predicate: Callable[[], T | None], timeout_s: float, what: str) -> T: ...

    def click(self, css: str) -> None: ...

    def dismiss(self, label: str) -> None: ...

    def open_series(self, description: str) -> None: ...

    def measurement_rows(self) -> list[dict[str, Any]]: ...

    def viewport_image(self) -> int | None: ...


class OrthancNode(Protocol):
    """What :func:`give_verdicts` needs of ``tests.support.node_env.OrthancServer``."""

    @property
    def url(self) -> str: ...

    def client(self) -> Any: ...


@dataclass(frozen=True)
class Verdicts:
    """What :func:`give_verdicts` did, and the SR that OHIF stored.

    Attributes
    ----------
    deleted : str
        Title (the SR's Comment, OHIF's label) of the AI measurement that was deleted.
    kept : list of str
        Titles of the AI measurements left in the panel.
    length_image : int
        Image number ("I: n" of OHIF's overlay and of the panel's row) of the slice the new Length is on.
    length_image_uid : str
        SOP Instance UID of that image, as OHIF's measurement service holds it for the new Length.
    length_text : str
        The new Length's value as the panel shows it (e.g. ``"31.3 mm"``).
    ai_images : list of int
        Image numbers of the AI's measurements (the new Length's slice is none of them).
    report_name : str
        The SeriesDescription given to the new SR in the report dialog.
    sr_file : bytes
        The new SR's file as Orthanc stores it (``/instances/{id}/file``).
    sr : Dataset
        The same, parsed.
    screenshots : list of Path
        Screenshots taken on the way.
    """

    deleted: str
    kept: list[str]
    length_image: int
    length_image_uid: str
    length_text: str
    ai_images: list[int]
    report_name: str
    sr_file: bytes
    sr: Dataset
    screenshots: list[Path] = field(default_factory=list)


@dataclass(frozen=True)
class StoredSr:
    """An SR instance of the study that the node did not write (Orthanc's IDs and its file)."""

    instance_id: str
    series_id: str
    sop_instance_uid: str
    series_description: str
    file: bytes


# -- reading the page -------------------------------------------------------------------------------------
def row_image(row: dict[str, Any]) -> int | None:
    """The image number ("S: 10 I: 18" -> 18) of a row of ``Browser.measurement_rows()``, or None."""
    found = re.findall(r"\bI:\s*(\d+)", " ".join(row.get("lines") or []))
    return int(found[-1]) if found else None


def viewport_position(page: OhifPage) -> tuple[int, int, int] | None:
    """The image number, the position in the stack (1-based) and the stack's size that the viewport's
    overlay shows ("I:9 (9/19)" -> (9, 9, 19)), or None."""
    found = re.findall(r"\bI:\s*(\d+)\s*\((\d+)/(\d+)\)", page.text())
    return (int(found[0][0]), int(found[0][1]), int(found[0][2])) if found else None


def notifications(page: OhifPage) -> str:
    """The text of OHIF's notifications (toasts) on screen."""
    return str(
        page.driver.execute_script(
            "return Array.from(document.querySelectorAll('[data-sonner-toast], [role=status], "
            "[role=alert], li[data-type]')).map(t => t.innerText).join('\\n');"
        )
    )


def _rows_js_find(title_arg: int = 0) -> str:
    """JavaScript (a statement) that sets ``row`` to the panel's row titled ``arguments[title_arg]``."""
    return (
        f"const row = Array.from(document.querySelectorAll('{ROWS}')).find(r => "
        "((r.querySelector('[data-cy=\"data-row-title\"]') || {}).innerText || '').trim() === "
        f"arguments[{title_arg}]);"
    )


# -- actions ----------------------------------------------------------------------------------------------
def open_study(
    page: OhifPage, url: str, study_uid: str, wait_for: Sequence[str], timeout_s: float = 90
) -> None:
    """Open ``study_uid`` in the viewer served at ``url`` and wait until the study browser lists every
    series description of ``wait_for``; close OHIF's tour and its investigational-use note."""
    page.driver.get(f"{url}{BASE_URL}viewer?StudyInstanceUIDs={study_uid}")
    page.wait(lambda: all(d in page.text() for d in wait_for) or None, timeout_s, "the study browser")
    time.sleep(1.0)  # the tour and the note show a moment after the study browser
    page.dismiss("Skip all")
    page.dismiss("Confirm and hide")


def accept_tracking_prompt(page: OhifPage) -> bool:
    """Answer yes when OHIF asks whether to track the measurements of a series or to load an SR's
    measurements (the node's ``app-config.js`` turns these prompts off, so usually there is none).

    Returns
    -------
    bool
        Whether a prompt was answered.
    """
    return bool(
        page.driver.execute_script(
            "const words = /track|measurements|report/i;"
            "for (const box of document.querySelectorAll('[role=dialog], [data-cy=viewport-notification]')) {"
            "  if (!words.test(box.innerText)) continue;"
            "  for (const b of box.querySelectorAll('button')) {"
            "    if (/^(yes|track|load|add|confirm)\\b/i.test(b.innerText.trim())) { b.click(); return true; }"
            "  }"
            "}"
            "return false;"
        )
    )


def load_sr(page: OhifPage, description: str, count: int, timeout_s: float = 45) -> list[dict[str, Any]]:
    """Double-click the thumbnail of the SR series ``description`` (OHIF loads its measurement groups as
    tracked measurements), open the tracked measurements panel and wait until it lists ``count`` rows.

    Returns
    -------
    list of dict
        The panel's rows (``Browser.measurement_rows()``).
    """
    page.open_series(description)
    time.sleep(1.0)
    accept_tracking_prompt(page)
    page.click('[data-cy="trackedMeasurements-btn"]')

    def listed() -> list[dict[str, Any]] | None:
        accept_tracking_prompt(page)
        rows = page.measurement_rows()
        return rows if len(rows) >= count else None

    page.wait(listed, timeout_s, f"{count} measurements of the SR {description!r} in the panel")
    time.sleep(0.5)
    return page.measurement_rows()


#: Mean grey level of the viewport canvas above which it shows an image (a T2W slice: 60 or more; a canvas
#: with no image, only annotations on black: 1 or 2).
IMAGE_SHOWN_MEAN = 20.0


def canvas_mean(page: OhifPage) -> float:
    """Mean grey level (0..255) of the active viewport's canvas, from a screenshot of it."""
    from PIL import Image, ImageStat

    canvas = page.driver.find_element("css selector", ".cornerstone-canvas")
    with Image.open(io.BytesIO(canvas.screenshot_as_png)) as shot:
        return float(ImageStat.Stat(shot.convert("L")).mean[0])


def image_shown(page: OhifPage, timeout_s: float) -> bool:
    """Whether the viewport shows an image within ``timeout_s``.

    Under heavy CPU load OHIF 3.13 can set a viewport up before its canvas has its size: the slice stays
    black, every measurement is drawn at one point and a new one measures metres. What a radiologist does
    then, reloading the page, is what :func:`give_verdicts` does.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        if canvas_mean(page) > IMAGE_SHOWN_MEAN:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.5)


def delete_measurement(page: OhifPage, title: str, timeout_s: float = 10) -> None:
    """Delete the measurement titled ``title`` with its row's actions menu ("..." -> "Delete").

    The menu is a Radix ``DropdownMenu``: its trigger (``[data-cy="actionsMenuTrigger"]``, shown on hover)
    opens on a mouse ``pointerdown``, and its item "Delete" (``[role=menuitem]``) runs on ``click``.

    Raises
    ------
    AssertionError
        No such row, no "Delete" item, or the row is still listed after ``timeout_s``.
    """
    before = [r["title"] for r in page.measurement_rows()]
    assert title in before, f"no measurement {title!r} in the panel: {before}"
    opened = page.driver.execute_script(
        _rows_js_find() + "if (!row) return false;"
        "const trigger = row.querySelector('[data-cy=\"actionsMenuTrigger\"]');"
        "if (!trigger) return false;"
        "trigger.scrollIntoView({block: 'center'});"
        "trigger.dispatchEvent(new PointerEvent('pointerdown', {bubbles: true, cancelable: true, button: 0,"
        "  buttons: 1, pointerType: 'mouse'}));"
        "return true;",
        title,
    )
    assert opened, f"no actions menu on the row {title!r}"

    def delete_item() -> bool | None:
        return (
            bool(
                page.driver.execute_script(
                    "const item = Array.from(document.querySelectorAll('[role=menuitem]'))"
                    "  .find(m => m.innerText.trim() === 'Delete');"
                    "if (!item) return false; item.click(); return true;"
                )
            )
            or None
        )

    page.wait(delete_item, 5, f"the item 'Delete' of the actions menu of {title!r}")
    page.wait(
        lambda: before.count(title) > [r["title"] for r in page.measurement_rows()].count(title) or None,
        timeout_s,
        f"the measurement {title!r} deleted",
    )


def _wheel(page: OhifPage, delta: int) -> None:
    page.driver.execute_script(
        "const c = document.querySelector('.cornerstone-canvas'); const b = c.getBoundingClientRect();"
        "c.dispatchEvent(new WheelEvent('wheel', {bubbles: true, cancelable: true, deltaY: arguments[0],"
        "  deltaMode: 0, clientX: b.x + b.width / 2, clientY: b.y + b.height / 2}));",
        delta,
    )


def _moved_from(page: OhifPage, index: int) -> tuple[int, int, int] | None:
    position = viewport_position(page)
    return position if position is not None and position[1] != index else None


def scroll_to_image(page: OhifPage, image: int) -> None:
    """Scroll the active viewport's stack to the image numbered ``image`` ("I: n") with wheel events on
    its canvas (cornerstone3D's StackScroll tool, one image per event).

    Which sign of ``deltaY`` raises the image number is learnt on the way (OHIF may invert the wheel, and
    image numbers may run against the stack's order).

    Raises
    ------
    AssertionError
        The stack holds no such image (not reached after twice the stack's size in steps, or the
        viewport stopped moving at an end of the stack).
    """
    position = page.wait(lambda: viewport_position(page), 10, "the viewport's image number")
    up = -100  # the deltaY that raises the image number (OHIF 3.13 on this page: -100)
    for _ in range(2 * position[2] + 2):
        number, index = position[0], position[1]
        if number == image:
            return
        step = up if image > number else -up
        _wheel(page, step)
        position = page.wait(
            functools.partial(_moved_from, page, index), 3, f"the viewport to move from image {number}"
        )
        if (position[0] > number) != (image > number):  # this sign goes the other way
            up = -up
    raise AssertionError(f"image {image} not reached; the viewport shows {position}")


def current_image_uid(page: OhifPage) -> str:
    """The SOP Instance UID of the image the active viewport shows (read from OHIF's services)."""
    image_id = str(
        page.driver.execute_script(
            "const s = window.services; const id = s.viewportGridService.getState().activeViewportId;"
            "return s.cornerstoneViewportService.getCornerstoneViewport(id).getCurrentImageId();"
        )
    )
    found = re.search(r"/instances/([0-9.]+)/frames/", image_id)
    assert found, f"cannot read the SOP Instance UID from the image ID {image_id!r}"
    return found.group(1)


_DRAG = """
const canvas = document.querySelector('.cornerstone-canvas');
const element = canvas.closest('.viewport-element') || canvas;
const box = canvas.getBoundingClientRect();
const [x0, y0, x1, y1] = arguments[0];
const steps = arguments[1];
const done = arguments[arguments.length - 1];
const at = (fx, fy, buttons) => {
  const x = box.x + fx * box.width, y = box.y + fy * box.height;
  return {bubbles: true, cancelable: true, view: window, button: 0, buttons, clientX: x, clientY: y,
          screenX: x, screenY: y, pageX: x, pageY: y};
};
const sleep = ms => new Promise(r => setTimeout(r, ms));
(async () => {
  element.dispatchEvent(new MouseEvent('mousedown', at(x0, y0, 1)));
  await sleep(50);
  for (let i = 1; i <= steps; i++) {
    const t = i / steps;
    document.dispatchEvent(new MouseEvent('mousemove', at(x0 + t * (x1 - x0), y0 + t * (y1 - y0), 1)));
    await sleep(20);
  }
  document.dispatchEvent(new MouseEvent('mouseup', at(x1, y1, 0)));
  done(true);
})();
"""


def draw_length(
    page: OhifPage,
    image: int,
    start: tuple[float, float] = (0.45, 0.42),
    end: tuple[float, float] = (0.55, 0.52),
    timeout_s: float = 10,
) -> dict[str, Any]:
    """Draw a Length on the image numbered ``image`` of the active viewport's stack.

    Scrolls there (:func:`scroll_to_image`), activates the Length tool (toolbar ``[data-cy="Length-btn"]``)
    and drags from ``start`` to ``end`` with synthetic mouse events (``mousedown`` on the viewport element,
    ``mousemove`` and ``mouseup`` on the document, ``buttons: 1``, ``clientX``/``clientY``): the Length tool
    makes its annotation and OHIF lists it as a tracked measurement (titled "(empty)": no label).

    Parameters
    ----------
    page : OhifPage
        The browser, with a series shown and the tracked measurements panel open.
    image : int
        Image number ("I: n") of the slice.
    start, end : tuple of float
        The ends of the line, as fractions (x, y) of the viewport canvas's width and height.
    timeout_s : float
        How long to wait for the new row.

    Returns
    -------
    dict
        The new row of the panel (``title``, ``lines``).
    """
    scroll_to_image(page, image)
    before = page.measurement_rows()
    page.click('[data-cy="Length-btn"]')
    time.sleep(0.3)
    page.driver.execute_async_script(_DRAG, [*start, *end], 10)
    accept_tracking_prompt(page)

    def added() -> dict[str, Any] | None:
        # The new row: a (title, image) listed once more than before (the other rows' values may change
        # their formatting meanwhile, so rows are not compared whole).
        rows = page.measurement_rows()
        old = Counter((r["title"], row_image(r)) for r in before)
        now = Counter((r["title"], row_image(r)) for r in rows)
        grown = [key for key in now if now[key] > old[key] and key[1] == image]
        if len(rows) != len(before) + 1 or not grown:
            return None
        found: dict[str, Any] = next(r for r in reversed(rows) if (r["title"], row_image(r)) == grown[0])
        return found

    row = page.wait(added, timeout_s, f"a new Length on image {image} in the panel")
    # The panel lists the annotation as soon as the tool makes it (at the mousedown) and updates its value
    # a moment later: wait until it holds still.
    last: list[dict[str, Any]] = [row]

    def settled() -> dict[str, Any] | None:
        time.sleep(0.4)
        now = next(
            (r for r in page.measurement_rows() if r["title"] == row["title"] and row_image(r) == image), None
        )
        done = now if now is not None and now == last[0] else None
        last[0] = now or last[0]
        return done

    return page.wait(settled, timeout_s, f"the new Length's value on image {image} to settle")


def _set_input(page: OhifPage, css: str, value: str) -> None:
    page.driver.execute_script(
        "const i = document.querySelector(arguments[0]); i.focus();"
        "Object.getOwnPropertyDescriptor(HTMLInputElement.prototype, 'value').set.call(i, arguments[1]);"
        "i.dispatchEvent(new Event('input', {bubbles: true}));",
        css,
        value,
    )


def create_sr(page: OhifPage, report_name: str = "Radiologist verdicts", timeout_s: float = 30) -> None:
    """Store the tracked measurements as a new SR: the panel's "Create SR", then OHIF's "Create Report"
    dialog: Series "Create new series", the report name, "Save"; wait until OHIF says
    "Measurements saved successfully" (its STOW-RS to the node's DICOMweb answered).

    Parameters
    ----------
    page : OhifPage
        The browser, with the tracked measurements panel open.
    report_name : str
        The new SR's SeriesDescription.
    timeout_s : float
        How long to wait for the save.
    """
    clicked = page.driver.execute_script(
        f"const b = Array.from(document.querySelectorAll('{PANEL} button'))"
        "  .find(b => b.innerText.trim() === 'Create SR');"
        "if (!b) return false; b.click(); return true;"
    )
    assert clicked, "no button 'Create SR' in the tracked measurements panel"
    dialog = "[role=dialog]"
    page.wait(
        lambda: (
            page.driver.execute_script(
                "return !!document.querySelector(arguments[0] + ' [data-cy=input-dialog-save-button]');",
                dialog,
            )
            or None
        ),
        10,
        "the dialog 'Create Report'",
    )
    series = f"{dialog} button[role=combobox]"
    if page.text(series).strip() != "Create new series":
        page.driver.execute_script(
            "document.querySelector(arguments[0]).dispatchEvent(new PointerEvent('pointerdown',"
            "  {bubbles: true, cancelable: true, button: 0, buttons: 1, pointerType: 'mouse'}));",
            series,
        )

        def choose_new_series() -> bool | None:
            return (
                bool(
                    page.driver.execute_script(
                        "const o = Array.from(document.querySelectorAll('[role=option]'))"
                        "  .find(o => o.innerText.trim() === 'Create new series');"
                        "if (!o) return false; o.click(); return true;"
                    )
                )
                or None
            )

        page.wait(choose_new_series, 5, "the option 'Create new series'")
        page.wait(
            lambda: page.text(series).strip() == "Create new series" or None, 5, "'Create new series' chosen"
        )
    name = f"{dialog} [data-cy=dialog-input]"
    page.wait(
        lambda: (
            page.driver.execute_script("return !document.querySelector(arguments[0]).disabled;", name) or None
        ),
        5,
        "the report name enabled",
    )
    _set_input(page, name, report_name)
    page.wait(
        lambda: (
            page.driver.execute_script("return document.querySelector(arguments[0]).value;", name)
            == report_name
            or None
        ),
        5,
        "the report name typed",
    )
    page.click(f"{dialog} [data-cy=input-dialog-save-button] button")
    page.wait(lambda: SAVED in page.text() or SAVED in notifications(page) or None, timeout_s, f"'{SAVED}'")


# -- the node's side --------------------------------------------------------------------------------------
def foreign_srs(node: OrthancNode, study_uid: str) -> list[StoredSr]:
    """The SR instances of the study that the node did not write (Manufacturer other than
    :data:`NODE_MANUFACTURER`), with their files as Orthanc stores them, oldest series first."""
    client = node.client()
    found = client.post_json("/tools/find", {"Level": "Study", "Query": {"StudyInstanceUID": study_uid}})
    out: list[StoredSr] = []
    for study in found:
        for series in client.get_json(f"/studies/{study}/series"):
            tags = series["MainDicomTags"]
            if tags.get("Modality") != "SR" or tags.get("Manufacturer") == NODE_MANUFACTURER:
                continue
            for instance in series["Instances"]:
                raw = client.get_bytes(f"/instances/{instance}/file")
                ds = pydicom.dcmread(io.BytesIO(raw), stop_before_pixels=True)
                if str(ds.SOPClassUID) not in SR_CLASSES:
                    continue
                out.append(
                    StoredSr(
                        instance,
                        series["ID"],
                        str(ds.SOPInstanceUID),
                        str(tags.get("SeriesDescription", "")),
                        raw,
                    )
                )
    return out


def store_report(
    page: OhifPage, node: OrthancNode, study_uid: str, report_name: str, timeout_s: float = 30
) -> StoredSr:
    """:func:`create_sr`, then wait until Orthanc holds exactly one SR more in the study that the node did
    not write, and return it.

    Raises
    ------
    AssertionError
        No new SR within ``timeout_s``, or more than one.
    """
    before = {sr.sop_instance_uid for sr in foreign_srs(node, study_uid)}
    create_sr(page, report_name, timeout_s)
    deadline = time.monotonic() + timeout_s
    while True:
        new = [sr for sr in foreign_srs(node, study_uid) if sr.sop_instance_uid not in before]
        if new or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    assert new, f"OHIF said '{SAVED}' but no new SR is in the study after {timeout_s:.0f} s"
    assert len(new) == 1, (
        f"OHIF stored {len(new)} new SRs: {[(s.series_description, s.sop_instance_uid) for s in new]}"
    )
    return new[0]


def give_verdicts(
    page: OhifPage,
    node: OrthancNode,
    study_uid: str,
    sr_description: str,
    count: int,
    *,
    delete: str | None = None,
    image: int | None = None,
    report_name: str = "Radiologist verdicts",
    open_first: bool = True,
    prefix: str = "verdict-",
    timeout_s: float = 30,
) -> Verdicts:
    """Open the study, load the node's SR, delete one AI measurement, draw one Length on a slice with none
    of the AI's measurements, store the result as a new SR ("Create SR"), and read that SR back from Orthanc.

    Parameters
    ----------
    page : OhifPage
        The browser (``tests.browser.test_viewer_browser.Browser``), logged in to ``node``.
    node : OrthancNode
        The node (``tests.support.node_env.OrthancServer``) whose viewer and DICOMweb are used.
    study_uid : str
        The processed study.
    sr_description : str
        SeriesDescription of the node's SR (its thumbnail is double-clicked to load it).
    count : int
        How many measurements OHIF loads from it (two per lesion: outline and long axis).
    delete : str, optional
        Title of the AI measurement to delete; by default the first "long axis" (else the last row).
    image : int, optional
        Image number for the new Length; by default the one nearest the middle of the stack with no AI
        measurement.
    report_name : str
        SeriesDescription of the new SR.
    open_first : bool
        Open the study and load the SR first (False: they are shown already).
    prefix : str
        Prefix of the screenshots' names.
    timeout_s : float
        How long to wait for the new SR in Orthanc.

    Returns
    -------
    Verdicts
        What was deleted and drawn, and the new SR.
    """
    shots: list[Path] = []
    if open_first:
        open_study(page, node.url, study_uid, [sr_description])
        rows = load_sr(page, sr_description, count)
        if not image_shown(page, 15):
            shots.append(page.screenshot(prefix + "00-no-image-reloaded"))
            open_study(page, node.url, study_uid, [sr_description])
            rows = load_sr(page, sr_description, count)
    else:
        rows = page.measurement_rows()
    assert image_shown(page, 15), f"the viewport shows no image (mean grey {canvas_mean(page):.1f})"
    shots.append(page.screenshot(prefix + "01-loaded"))
    assert len(rows) == count, f"{len(rows)} measurements listed, expected {count}: {rows}"
    titles = [r["title"] for r in rows]
    if delete is None:
        delete = next((t for t in titles if "long axis" in t), titles[-1])
    ai_images = sorted({i for r in rows if (i := row_image(r)) is not None})
    delete_measurement(page, delete)
    shots.append(page.screenshot(prefix + "02-deleted"))
    kept = [r["title"] for r in page.measurement_rows()]

    if image is None:
        position = page.wait(lambda: viewport_position(page), 10, "the viewport's image number")
        size = position[2]
        free = [i for i in range(1, size + 1) if i not in ai_images]
        assert free, f"every image holds an AI measurement: {ai_images}"
        image = min(free, key=lambda i: (abs(i - (size + 1) / 2), i))
    assert image not in ai_images, f"image {image} holds an AI measurement ({ai_images})"
    scroll_to_image(page, image)
    assert image_shown(page, 15), f"image {image} is not shown (mean grey {canvas_mean(page):.1f})"
    row = draw_length(page, image)
    uid = current_image_uid(page)
    shots.append(page.screenshot(prefix + "03-drawn"))

    sr = store_report(page, node, study_uid, report_name, timeout_s)
    shots.append(page.screenshot(prefix + "04-saved"))
    return Verdicts(
        deleted=delete,
        kept=kept,
        length_image=image,
        length_image_uid=uid,
        length_text=(row.get("lines") or [""])[0].strip(),
        ai_images=ai_images,
        report_name=report_name,
        sr_file=sr.file,
        sr=pydicom.dcmread(io.BytesIO(sr.file)),
        screenshots=shots,
    )
