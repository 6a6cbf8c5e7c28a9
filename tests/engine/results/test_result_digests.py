"""The node's DICOM results of the real fixture study, pinned byte for byte.

Refactoring must not change what a radiologist receives: the same UIDs (they are derived from the input
series, so re-processing gives the same objects) and the same bytes. The digests in
``tests/data/fixture_result_digests.json`` were taken with the reference build (CPU, ``torch==2.13.0`` as
``make setup`` installs it); other builds of torch may round differently in the networks, so there only the
UIDs, the lesion list and the localization map's figures are compared. The gland model runs in float32
here (``GlandSettings.precision``): its default, ``auto``, takes bfloat16 on CPUs with bfloat16 instructions
only, which would pin a CPU model (bfloat16's own agreement is tested in
``tests/engine/anatomy/test_gland_precision.py``). Regenerate the file only for an intended change of the results:
``LESION_AI_PIN_DIGESTS=1 pytest tests/engine/results/test_result_digests.py``.
"""

from __future__ import annotations

import datetime
import hashlib
import io
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
import torch
from pydicom.dataset import Dataset

from lesion_engine.anatomy.gland_settings import GlandSettings
from lesion_engine.engine import Engine
from lesion_engine.intake.preprocess import prepare_study
from lesion_engine.results.dicom_outputs import write_outputs
from lesion_engine.results.outputs import Output
from tests.paths import DATA

pytestmark = [pytest.mark.fixture, pytest.mark.slow]

DIGESTS = DATA / "fixture_result_digests.json"
ANALYSIS_TIME = datetime.datetime(2026, 1, 2, 3, 4, 5)
REFERENCE_TORCH = "2.13.0+cpu"


FLOAT_PIXELS = ("FloatPixelData", "DoubleFloatPixelData")


def _encode(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()


def _describe(data: bytes) -> dict[str, Any]:
    """Digest and UIDs of one object; a Parametric Map's float pixels as figures with a tolerance.

    The localization map's float values depend in their last bits on the number of CPU threads the
    networks ran on; everything else (SEG, SR, overlays, the map's header) must be byte-identical.
    """
    ds = pydicom.dcmread(io.BytesIO(data))
    out: dict[str, Any] = {
        "sha256": hashlib.sha256(data).hexdigest(),
        "sop_class_uid": str(ds.SOPClassUID),
        "sop_instance_uid": str(ds.SOPInstanceUID),
        "series_instance_uid": str(ds.SeriesInstanceUID),
    }
    if any(keyword in ds for keyword in FLOAT_PIXELS):
        values = ds.pixel_array.astype(np.float64)
        for keyword in FLOAT_PIXELS:
            if keyword in ds:
                delattr(ds, keyword)
        out["sha256"] = hashlib.sha256(_encode(ds)).hexdigest()
        out["pixels"] = {
            "mean": float(values.mean()),
            "max": float(values.max()),
            "above_half": int((values > 0.5).sum()),
        }
    return out


def _node_results(prostatex: Path) -> dict[str, Any]:
    """What the node's worker makes of the fixture (every output kind), with a fixed analysis time."""
    prepared = prepare_study(prostatex / "dicom")
    engine = Engine.from_artifact(None, "cpu", gland=GlandSettings(precision="float32"))
    result = engine.run(prepared)
    objects = write_outputs(prepared, result, list(Output), analysis_time=ANALYSIS_TIME)
    # SEG first (the SR references it), then SR, Parametric Map and the overlay images.
    in_order = [ds for output in (Output.SEG, Output.SR, Output.PMAP, Output.SC) for ds in objects[output]]
    encoded = [_encode(ds) for ds in in_order]
    return {
        "torch": torch.__version__,
        "lesions": [
            {"id": lesion.id, "probability": round(float(lesion.probability), 4), "category": lesion.category}
            for lesion in result.lesions
        ],
        "objects": [_describe(data) for data in encoded],
    }


def test_fixture_results_are_pinned(prostatex: Path) -> None:
    made = _node_results(prostatex)
    if os.environ.get("LESION_AI_PIN_DIGESTS") == "1":
        DIGESTS.parent.mkdir(exist_ok=True)
        DIGESTS.write_text(json.dumps(made, indent=1) + "\n", encoding="utf-8")
    pinned = json.loads(DIGESTS.read_text(encoding="utf-8"))
    strip = ("sha256", "pixels")
    assert [{k: v for k, v in o.items() if k not in strip} for o in made["objects"]] == [
        {k: v for k, v in o.items() if k not in strip} for o in pinned["objects"]
    ], "result UIDs or SOP classes changed"
    assert [(x["id"], x["category"]) for x in made["lesions"]] == [
        (x["id"], x["category"]) for x in pinned["lesions"]
    ]
    for ours, theirs in zip(made["lesions"], pinned["lesions"], strict=True):
        assert abs(ours["probability"] - theirs["probability"]) <= 1e-3
    if made["torch"] == pinned["torch"] == REFERENCE_TORCH:
        assert [o["sha256"] for o in made["objects"]] == [o["sha256"] for o in pinned["objects"]]
    for ours, theirs in zip(made["objects"], pinned["objects"], strict=True):
        if "pixels" in theirs:
            assert ours["pixels"]["above_half"] == theirs["pixels"]["above_half"]
            for key in ("mean", "max"):
                assert abs(ours["pixels"][key] - theirs["pixels"][key]) <= 1e-4, key


def test_infer_writes_the_nodes_seg_and_sr(prostatex: Path, tmp_path: Path) -> None:
    """``lesion-ai infer`` derives its result UIDs as the node does: same SEG and SR instances."""
    from lesion_engine.cli.main import main

    out = tmp_path / "out"
    assert main(["infer", str(prostatex / "dicom"), "--out", str(out), "--device", "cpu"]) == 0
    pinned = json.loads(DIGESTS.read_text(encoding="utf-8"))
    pinned_uids = {o["sop_class_uid"]: o["sop_instance_uid"] for o in pinned["objects"]}
    # A negative study (no lesion) has no SEG.
    names = ("seg.dcm", "sr.dcm", "summary.dcm") if pinned["lesions"] else ("sr.dcm", "summary.dcm")
    assert (out / "seg.dcm").is_file() == bool(pinned["lesions"])
    written = {name: pydicom.dcmread(out / name, stop_before_pixels=True) for name in names}
    for ds in written.values():
        assert pinned_uids[str(ds.SOPClassUID)] == str(ds.SOPInstanceUID)
    assert str(written["sr.dcm"].SOPClassUID) == "1.2.840.10008.5.1.4.1.1.88.34"
    assert str(written["summary.dcm"].SOPClassUID) == "1.2.840.10008.5.1.4.1.1.7"
    assert not list(out.glob("pmap.dcm")) and not list(out.glob("sc_*.dcm"))
