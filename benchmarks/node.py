"""The node end to end, on real Orthanc servers started for the run (free loopback ports, temporary folder).

* ``latency``: from the last C-STORE of the fixture study to its results (SEG when lesions were found, and
  SR) stored in the study, at the node's defaults (StableAge 30 s): the node starts the job as soon as the
  series the engine reads look complete, not StableAge later. Measured three times: on the first study after
  the start (the worker loads the model); on the fixture as it is (its Siemens headers announce no image
  counts, so the job starts ``CompletenessQuietSeconds`` after the last instance); and on a copy whose
  headers announce each series' image count (ImagesInAcquisition, as GE writes it), which starts once the
  last instance is in. Each split into waiting, queueing and the worker's own time, beside the target.
  The jobs start ``CompletenessEarlyStartSeconds`` after the last instance and store their results once the
  quiet time has passed (a store gate); the baseline, measured in the same run on a second node, is the
  fixture with the early start off (the job starts when the quiet time has passed).
* ``throughput``: ``studies`` copies of the fixture (new UIDs) sent back to back; all must be processed;
  studies per hour from the first C-STORE to the last result.
* ``ingestion``: C-STORE rate of the fixture into Orthanc with the node's plugin loaded (no worker running)
  and without the plugin, alternated; the ratio shows what the plugin costs ingestion.

The engine runs with the installed default model, a given artifact, or (when no trained model is installed)
random weights with the default architecture: the time does not depend on the weights.
"""

from __future__ import annotations

import logging
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import pydicom
from pydicom.uid import generate_uid
from pynetdicom import AE
from pynetdicom.presentation import build_context

from orthanc_plugin.cli.dicomsend import dicom_files, no_delay
from orthanc_plugin.node.settings import setting_default
from orthanc_plugin.worker.client import OrthancClient
from tests.support.node_env import OrthancFleet, OrthancServer, count_by_modality, find_study, jobs, wait_for

logger = logging.getLogger(__name__)

#: StableAge of the throughput and ingestion runs.
STABLE_AGE = 2
#: Orthanc's and ``lesion-ai node``'s default StableAge: the latency is measured with it.
DEFAULT_STABLE_AGE = 30
#: The latency wanted at the node's defaults: last C-STORE to SEG and SR stored, seconds.
LATENCY_TARGET_S = 5.0


def _artifact(given: Path | None, scratch: Path) -> tuple[str | None, str]:
    if given is not None:
        return str(given), "given artifact"
    from lesion_engine.model.artifact import save_artifact
    from lesion_engine.model.candidates import CandidateConfig
    from lesion_engine.model.model_card import default_artifact
    from lesion_engine.model.model_input import PreprocessConfig
    from lesion_engine.model.networks import JointModel

    if (default_artifact() / "model.json").is_file():
        return None, "installed default model"
    import torch

    torch.manual_seed(0)
    path = save_artifact(
        JointModel(),
        scratch / "random-default",
        name="random-default-architecture",
        version="0",
        preprocessing=PreprocessConfig(),
        candidates=CandidateConfig(),
        training={"data": "none: random weights, for timing only"},
    )
    return str(path), "random weights with the default architecture (no trained default model is installed)"


def _extra(model: str | None) -> dict[str, Any]:
    # One attempt: the benchmark times the path that works; a failing study is reported, not retried.
    return {"MaxAttempts": 1, **({"Model": model} if model else {})}


def _load(dicom_dir: Path) -> list[Path]:
    return dicom_files([dicom_dir])


def _send(files: list[Path], server: OrthancServer) -> float:
    """C-STORE the files (as stored: no re-encoding) over one association; returns the seconds taken."""
    ae = AE(ae_title="BENCH")
    ae.dimse_timeout = ae.network_timeout = ae.acse_timeout = 300
    contexts = set()
    for path in files:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        contexts.add((str(ds.SOPClassUID), str(ds.file_meta.TransferSyntaxUID)))
    for sop_class, syntax in sorted(contexts):
        ae.requested_contexts.append(build_context(sop_class, [syntax]))
    start = time.perf_counter()
    pending = list(files)
    for attempt in range(3):  # an association lost under load is opened again for the remaining files
        assoc = ae.associate("127.0.0.1", server.dicom_port, ae_title=server.aet)
        if not assoc.is_established:
            raise ConnectionError("no association with the node")
        no_delay(assoc)
        try:
            while pending:
                status = assoc.send_c_store(pending[0])
                code = getattr(status, "Status", None)
                if code is None:
                    logger.warning("C-STORE of %s unanswered (attempt %d)", pending[0].name, attempt + 1)
                    break
                if code != 0:
                    raise RuntimeError(f"C-STORE of {pending[0].name} refused: status 0x{code:04X}")
                pending.pop(0)
        finally:
            if assoc.is_established:
                assoc.release()
        if not pending:
            return time.perf_counter() - start
    raise RuntimeError(f"{len(pending)} instance(s) could not be sent")


def _copy(files: list[Path], index: int, folder: Path, *, announce: bool = False) -> list[Path]:
    """The study with new study, series and instance UIDs (a distinct study for the node), in ``folder``;
    with ``announce``, each image's ImagesInAcquisition is its series' image count."""
    study = str(generate_uid())
    series: dict[str, str] = {}
    counts: dict[str, int] = {}
    if announce:
        for path in files:
            uid = str(pydicom.dcmread(path, stop_before_pixels=True).SeriesInstanceUID)
            counts[uid] = counts.get(uid, 0) + 1
    out = []
    folder.mkdir(parents=True, exist_ok=True)
    for number, path in enumerate(files):
        ds = pydicom.dcmread(path)
        copy = ds
        if announce:
            copy.ImagesInAcquisition = counts[str(ds.SeriesInstanceUID)]
        copy.StudyInstanceUID = study
        copy.SeriesInstanceUID = series.setdefault(str(ds.SeriesInstanceUID), str(generate_uid()))
        copy.SOPInstanceUID = generate_uid()
        copy.file_meta.MediaStorageSOPInstanceUID = copy.SOPInstanceUID
        copy.PatientID = f"BENCH-{index:03d}"
        target = folder / f"{number:04d}.dcm"
        copy.save_as(target, enforce_file_format=True)
        out.append(target)
    return out


def _results(client: OrthancClient, count: int, timeout_s: float) -> list[dict[str, Any]]:
    def finished() -> list[dict[str, Any]] | None:
        found = [j for j in jobs(client) if j["state"] in ("done", "failed")]
        return found if len(found) >= count else None

    return wait_for(finished, timeout_s, f"{count} processed studies", interval_s=0.1)


def _results_stored(client: OrthancClient, study_uid: str, timeout_s: float) -> tuple[str, float, bool]:
    """Poll until the study holds its SR and, unless its job ended without one, its SEG; returns the study's
    Orthanc ID, the time they were seen, and whether Orthanc called the study stable by then."""

    def stored() -> tuple[str, float, bool] | None:
        study = find_study(client, study_uid)
        if study is None:
            return None
        seen = time.time()
        info = client.get_json(f"/studies/{study}")
        modalities = {s["MainDicomTags"].get("Modality") for s in client.get_json(f"/studies/{study}/series")}
        ended = any(j["state"] in ("done", "failed") for j in jobs(client) if j["study"] == study)
        if "SR" in modalities and ("SEG" in modalities or ended):
            return study, seen, bool(info.get("IsStable"))
        return None

    # Looked for four times a second: faster polling loads the machine the job runs on (the latency itself is
    # read from the job's end, which comes after its results are stored).
    return wait_for(stored, timeout_s, "the results in the study", interval_s=0.25)


def _latency_of(node: OrthancServer, files: list[Path]) -> dict[str, Any]:
    client = node.client()
    study_uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
    send_s = _send(files, node)
    last_store = time.time()
    study, seen, stable = _results_stored(client, study_uid, 600)
    [job] = wait_for(
        lambda: [j for j in jobs(client) if j["study"] == study and j["state"] in ("done", "failed")],
        600,
        "the job to end",
        interval_s=0.1,
    )
    detail = client.get_json(f"/lesion-ai/jobs/{job['id']}")
    modalities = count_by_modality(client, study)
    # The worker ends the job once its results are stored.
    results_s = float(detail["finished_at"]) - last_store
    return {
        "send_s": round(send_s, 2),
        "last_cstore_to_seg_sr_stored_s": round(results_s, 2),
        "last_cstore_to_results_seen_by_polling_s": round(seen - last_store, 2),
        "within_target": results_s <= LATENCY_TARGET_S,
        "study_stable_when_stored": stable,
        "last_cstore_to_job_queued_s": round(detail["created_at"] - last_store, 2),
        "job_run_s": round(detail["finished_at"] - detail["created_at"], 2),
        "engine_timings_s": (detail["progress"].get("details") or {}).get("timings_s"),
        "state": detail["state"],
        "results": {k: v for k, v in modalities.items() if k in ("SEG", "SR")},
        "lesions": (detail["progress"].get("details") or {}).get("lesions"),
    }


def _latency_node(fleet: OrthancFleet, name: str, extra: dict[str, Any]) -> OrthancServer:
    """A node at the defaults (StableAge 30 s) with one engine worker, started, its worker alive."""
    node = fleet.node(name, processor=None, stable_age=DEFAULT_STABLE_AGE, extra=extra)
    node.start()
    client = node.client()
    wait_for(
        lambda: client.get_json("/lesion-ai/health")["workers"]["processes"][0]["alive"], 60, "the worker"
    )
    time.sleep(3)  # let the worker finish importing the engine
    return node


def _latency(fleet: OrthancFleet, datasets: list[Path], model: str | None) -> dict[str, Any]:
    node = _latency_node(fleet, "latency", _extra(model))
    first = _latency_of(node, _copy(datasets, 0, fleet.root / "latency-first"))
    fixture = _latency_of(node, datasets)
    announced = _latency_of(node, _copy(datasets, 1, fleet.root / "latency-announced", announce=True))
    node.note_workers()
    node.stop()
    baseline = _without_early_start(fleet, datasets, model)
    return {
        "stable_age_s": DEFAULT_STABLE_AGE,
        "completeness_quiet_s": setting_default("completeness_quiet_s"),
        "completeness_early_start_s": setting_default("completeness_early_s"),
        "target_s": LATENCY_TARGET_S,
        "instances": len(datasets),
        "first_study_after_start": first,
        "fixture": fixture,
        "counts_announced": announced,
        "baseline_fixture_without_early_start": baseline,
        "fixture_speed_ratio_to_baseline": round(
            baseline["last_cstore_to_seg_sr_stored_s"] / fixture["last_cstore_to_seg_sr_stored_s"], 2
        ),
    }


def _without_early_start(fleet: OrthancFleet, datasets: list[Path], model: str | None) -> dict[str, Any]:
    """The baseline, in the same run: the fixture as it is on a node whose jobs wait for the whole quiet time
    (``CompletenessEarlyStartSeconds`` 0), after one study that loads the model."""
    node = _latency_node(fleet, "latency-baseline", {**_extra(model), "CompletenessEarlyStartSeconds": 0})
    _latency_of(node, _copy(datasets, 2, fleet.root / "latency-baseline-first"))
    baseline = _latency_of(node, datasets)
    node.note_workers()
    node.stop()
    return baseline


def _throughput(fleet: OrthancFleet, datasets: list[Path], model: str | None, studies: int) -> dict[str, Any]:
    node = fleet.node("throughput", processor=None, stable_age=STABLE_AGE, extra=_extra(model))
    node.start()
    client = node.client()
    start = time.time()
    send_s = 0.0
    copies = fleet.root / "copies"
    for index in range(studies):
        files = _copy(datasets, index, copies / str(index))
        send_s += _send(files, node)
        shutil.rmtree(copies / str(index))
    done = _results(client, studies, 60 + 120 * studies)
    end = max(j["finished_at"] for j in done)
    node.note_workers()
    node.stop()
    ok = sum(1 for j in done if j["state"] == "done")
    return {
        "studies": studies,
        "processed": ok,
        "failed": len(done) - ok,
        "failures": sorted({str(j["error"])[:300] for j in done if j["state"] != "done"}),
        "total_s": round(end - start, 1),
        "send_s": round(send_s, 1),
        "studies_per_hour": round(studies * 3600 / (end - start), 1),
        "workers": 1,
    }


def _ingestion(fleet: OrthancFleet, datasets: list[Path], repeats: int) -> dict[str, Any]:
    rates: dict[str, list[float]] = {"with_plugin": [], "without_plugin": []}
    for repeat in range(repeats):
        for label, plugin in (("with_plugin", True), ("without_plugin", False)):
            server = fleet.node(
                f"ingest-{label}-{repeat}", workers=0, with_plugin=plugin, stable_age=STABLE_AGE
            )
            server.start()
            rates[label].append(len(datasets) / _send(datasets, server))
            server.stop()
    with_plugin = statistics.median(rates["with_plugin"])
    without = statistics.median(rates["without_plugin"])
    return {
        "instances": len(datasets),
        "repeats": repeats,
        "with_plugin_instances_per_s": round(with_plugin, 1),
        "without_plugin_instances_per_s": round(without, 1),
        "ratio_with_to_without": round(with_plugin / without, 3),
    }


def run(dicom_dir: Path, model: Path | None = None, studies: int = 20, repeats: int = 3) -> dict[str, Any]:
    """Run the node benchmarks (see the module docstring); returns the JSON-ready report."""
    with tempfile.TemporaryDirectory(prefix="lesion-ai-bench-node-") as scratch:
        root = Path(scratch)
        artifact, weights = _artifact(model, root)
        datasets = _load(dicom_dir)
        fleet = OrthancFleet(root)
        try:
            report = {
                "model": weights,
                "latency": _latency(fleet, datasets, artifact),
                "throughput": _throughput(fleet, datasets, artifact, studies),
                "ingestion": _ingestion(fleet, datasets, repeats),
            }
        finally:
            fleet.close()
    return report
