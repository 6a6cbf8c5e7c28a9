"""The verdict loop in the real OHIF 3.13 served by the node, checked to the admin page (called by the viewer's
browser test, on the study it processed, so that the node and its work are shared).

Headless Chromium opens the processed study in OHIF, loads the node's SR as tracked measurements, deletes one
AI measurement, draws a Length on a T2W slice that holds no AI measurement, and clicks "Create SR" (a new
series). Then:

* Orthanc holds exactly one new SR, with the AI's measurements less the deleted one plus the new Length, the
  kept ones on the same images with the same points as in the node's SR;
* the node reads it as verdicts at the study's next stable event: exactly one rejected (the deleted one), the
  others accepted, one missed (``GET /lesion-ai/verdicts``);
* the admin page's Models tab shows these counts for the model.

The SRs, screenshots and the verdicts go to ``test-artifacts/ohif-verdicts/`` (or
``$LESION_AI_TEST_ARTIFACTS/ohif-verdicts/``); ``tests/data/ohif-sr/`` holds copies of SRs made this way (its
README says how). See :mod:`tests.support.ohif_actions` for how the page is driven.
"""

from __future__ import annotations

import io
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataset import Dataset

from tests.browser.test_viewer_browser import TOOL_PREFIX, Browser, sr_tool_groups
from tests.support.browser_env import ARTIFACTS_ROOT, chromium_driver
from tests.support.node_env import OrthancServer, wait_for
from tests.support.ohif_actions import (
    NODE_MANUFACTURER,
    SR_CLASSES,
    foreign_srs,
    give_verdicts,
)

ARTIFACTS = ARTIFACTS_ROOT / "ohif-verdicts"


@dataclass(frozen=True)
class Measured:
    """A measurement group of a TID 1500 SR that names a Cornerstone3D tool, with its geometry."""

    tool: str
    label: str | None
    tracking_uid: str | None
    graphic_type: str
    points: tuple[float, ...]
    image_uid: str
    value: float


def _code_value(item: Dataset) -> str:
    return str(item.ConceptNameCodeSequence[0].CodeValue) if "ConceptNameCodeSequence" in item else ""


def tool_measurements(sr: Dataset) -> list[Measured]:
    """The SR's measurement groups with a Tracking Identifier ``Cornerstone3DTools@^0.1.0:TOOL``: tool,
    Comment, Tracking UID, the first SCOORD's graphic type, data and referenced image, the first NUM."""
    out = []
    for container in sr.ContentSequence:
        if container.ValueType != "CONTAINER" or _code_value(container) != "126010":
            continue
        for group in container.get("ContentSequence", []):
            items = list(group.get("ContentSequence", []))
            by_code = {_code_value(i): i for i in items}
            tracking = by_code.get("112039")
            if tracking is None or not str(tracking.TextValue).startswith(TOOL_PREFIX):
                continue
            scoords = [
                s
                for i in items
                for s in [i, *i.get("ContentSequence", [])]
                if s.ValueType in ("SCOORD", "SCOORD3D")
            ]
            assert scoords, f"measurement group {tracking.TextValue} has no SCOORD"
            images = [r for r in scoords[0].get("ContentSequence", []) if r.ValueType == "IMAGE"]
            num = next(i for i in items if i.ValueType == "NUM")
            uid = by_code.get("112040")
            comment = by_code.get("121106")
            out.append(
                Measured(
                    tool=str(tracking.TextValue).removeprefix(TOOL_PREFIX),
                    label=str(comment.TextValue) if comment is not None else None,
                    tracking_uid=str(uid.UID) if uid is not None else None,
                    graphic_type=str(scoords[0].GraphicType),
                    points=tuple(float(x) for x in scoords[0].GraphicData),
                    image_uid=str(images[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID),
                    value=float(num.MeasuredValueSequence[0].NumericValue),
                )
            )
    return out


def _same_geometry(ohif: Measured, node: Measured) -> bool:
    return (
        ohif.tool == node.tool
        and ohif.image_uid == node.image_uid
        and ohif.graphic_type == node.graphic_type
        and len(ohif.points) == len(node.points)
        and all(abs(a - b) <= 1e-3 for a, b in zip(ohif.points, node.points, strict=True))
    )


def _check_ohif_sr(sr: Dataset, node_sr: Dataset, study_uid: str) -> None:
    assert str(sr.SOPClassUID) in SR_CLASSES and sr.Modality == "SR"
    assert str(sr.get("Manufacturer", "")) != NODE_MANUFACTURER
    assert str(sr.StudyInstanceUID) == study_uid
    assert sr.SeriesInstanceUID != node_sr.SeriesInstanceUID, "OHIF stored into the node's SR series"
    assert str(sr.ContentTemplateSequence[0].TemplateIdentifier) == "1500"


def _node_sr(node: OrthancServer, study: str) -> tuple[Dataset, bytes]:
    client = node.client()
    series = [
        s
        for s in client.get_json(f"/studies/{study}/series")
        if s["MainDicomTags"]["Modality"] == "SR"
        and s["MainDicomTags"].get("Manufacturer") == NODE_MANUFACTURER
    ]
    assert len(series) == 1, f"{len(series)} SR series of the node in the study, expected 1"
    [instance] = series[0]["Instances"]
    raw = client.get_bytes(f"/instances/{instance}/file")
    return pydicom.dcmread(io.BytesIO(raw)), raw


def _verdicts(node: OrthancServer, study: str) -> dict[str, Any] | None:
    answer = node.client().get_json(f"/lesion-ai/verdicts?study={study}")
    return answer if answer["verdicts"] else None


def _admin_verdicts(browser: Browser, node: OrthancServer) -> dict[str, dict[str, str]]:
    """The Models tab's verdict cells, per model row that has any."""
    browser.driver.get(f"{node.url}/lesion-ai/ui/#models")
    found: dict[str, dict[str, str]] = browser.wait(
        lambda: browser.driver.execute_script(
            "const out = {};"
            "for (const row of document.querySelectorAll('#models-table tr[data-model]')) {"
            "  const cells = row.querySelectorAll('td[data-verdict]');"
            "  if (cells.length) out[row.dataset.model] = Object.fromEntries("
            "    Array.from(cells).map(c => [c.dataset.verdict, c.innerText.trim()]));"
            "}"
            "return Object.keys(out).length ? out : null;"
        ),
        30,
        "the Models tab with the radiologists' verdicts",
    )
    return found


def check_the_verdict_loop(node: OrthancServer, study: str, study_uid: str, tmp_path: Path) -> None:
    """Give verdicts in OHIF on the node's processed ``study`` and check them to the admin page (see the
    module docstring)."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    for old in [*ARTIFACTS.glob("*.png"), *ARTIFACTS.glob("*.dcm")]:
        old.unlink()
    node_sr, node_file = _node_sr(node, study)
    (ARTIFACTS / "node-sr.dcm").write_bytes(node_file)
    count = len(sr_tool_groups(node_sr))
    assert count >= 2, f"the node's SR holds {count} measurement(s) OHIF loads; the loop needs two or more"
    description = str(node_sr.SeriesDescription)
    assert not foreign_srs(node, study_uid), "an SR not written by the node is in the study already"
    started = time.monotonic()
    with chromium_driver(
        tmp_path / "chromium-verdicts",
        node.credentials or {},
        ARTIFACTS,
        arguments=("--enable-unsafe-swiftshader",),
    ) as driver:
        browser = Browser(driver, ARTIFACTS)
        try:
            # The verdicts: one AI measurement deleted, one Length drawn, "Create SR" into a new series.
            verdicts = give_verdicts(
                browser, node, study_uid, description, count, report_name="Radiologist verdicts"
            )
            # The node reads OHIF's SR at the study's next stable event.
            recorded = wait_for(lambda: _verdicts(node, study), 60, "the node to record the verdicts")
            admin = _admin_verdicts(browser, node)
            browser.screenshot("verdict-05-admin-models")
        finally:
            browser.save_console()
    (ARTIFACTS / "ohif-sr-verdicts.dcm").write_bytes(verdicts.sr_file)
    (ARTIFACTS / "verdicts.json").write_text(
        json.dumps(
            {
                "deleted": verdicts.deleted,
                "kept": verdicts.kept,
                "length_image": verdicts.length_image,
                "length_image_uid": verdicts.length_image_uid,
                "length": verdicts.length_text,
                "ai_images": verdicts.ai_images,
                "seconds_in_the_browser": round(time.monotonic() - started, 1),
                "recorded": recorded,
                "admin_page": admin,
            },
            indent=1,
        )
        + "\n"
    )

    node_measured = tool_measurements(node_sr)
    by_label = {m.label: m for m in node_measured}
    assert len(node_measured) == count and len(by_label) == count, (
        "the node's measurement labels are not unique"
    )
    # Exactly one new SR, not in the node's series: the AI's measurements less the deleted one, plus the Length.
    [stored] = foreign_srs(node, study_uid)
    sr = verdicts.sr
    _check_ohif_sr(sr, node_sr, study_uid)
    assert str(sr.SeriesDescription) == verdicts.report_name == stored.series_description
    measured = tool_measurements(sr)
    assert len(measured) == count - 1 + 1, f"{len(measured)} measurements in OHIF's SR, expected {count}"
    labelled = sorted(str(m.label) for m in measured if m.label is not None)
    assert labelled == sorted(str(label) for label in by_label if label != verdicts.deleted), labelled
    for m in measured:
        if m.label is not None:
            assert _same_geometry(m, by_label[m.label]), (m, by_label[m.label])
    [drawn] = [m for m in measured if m.label is None]
    assert drawn.tool == "Length" and drawn.image_uid == verdicts.length_image_uid
    assert drawn.image_uid not in {m.image_uid for m in node_measured}, (
        "the Length is on an AI measurement's slice"
    )

    # The node's verdicts: exactly one rejected (the deleted one), the others accepted, one missed.
    [record] = recorded["verdicts"]
    assert record["counts"] == {"accepted": count - 1, "rejected": 1, "missed": 1}, record["counts"]
    assert [f["label"] for f in record["findings"] if f["verdict"] == "rejected"] == [verdicts.deleted]
    assert record["missed"][0]["sop_instance_uid"] == verdicts.length_image_uid
    assert record["sop_instance_uid"] == str(sr.SOPInstanceUID)
    assert record["sender"]["name"] == "unknown (stored through Orthanc's Plugins)", record["sender"]
    # The admin page's Models tab shows the same counts for the model that wrote the findings.
    expected = {
        "accepted": str(count - 1),
        "rejected": "1",
        "missed": "1",
        "ppv": f"{(count - 1) / count:.2f}",
    }
    assert expected in admin.values(), admin
