"""A 100-study soak of the node: synthetic, bounded, on loopback (``make bench`` key ``soak``).

A real Orthanc with the node's plugin and one worker is started on free loopback ports in a temporary
folder. ``studies`` copies of one small synthetic prostate study (:mod:`training.synth`, new UIDs and
PatientID per copy) are sent by C-STORE in batches of ``first`` studies; after each batch the soak waits
until every study sent so far has its results, then reads the worker's resident memory (``VmRSS`` of
``/proc/<pid>/status``; the PID from ``GET /lesion-ai/health``). At the end it checks, per study, that it
holds exactly one result set: one SR series (and one SEG series where the job stored one) in Orthanc, one
job in ``GET /lesion-ai/jobs``, and (with the fake processor) one processor run.

The goal: the worker's RSS after all studies within 20% of its RSS after the first ``first`` studies.

The worker runs the real engine with the installed default model (about 3.7 s per small study, sending
included, on 2 cores: the 100 studies take about 6 min), so that its memory is the engine's;
``python -m benchmarks.soak --fake`` runs the test suite's fake processor instead (``tests.support.node_fakes:factory``:
small SEG and SR objects, no model), which also counts the processor's runs per study. The report says which
processor ran.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pydicom

from benchmarks import write_report
from benchmarks.node import _artifact, _copy, _extra, _send
from lesion_engine.logsetup import configure_cli_logging
from orthanc_plugin.cli.dicomsend import dicom_files
from orthanc_plugin.jobqueue import SUPERSEDED
from orthanc_plugin.worker.client import OrthancClient
from tests.support.node_env import FAKE_PROCESSOR, OrthancFleet, OrthancServer, find_study, wait_for

logger = logging.getLogger(__name__)

#: Studies sent in the soak.
STUDIES = 100
#: The RSS reference is taken after this many studies (and RSS is sampled after every such batch).
FIRST = 10
#: The goal: RSS after the soak over RSS after the first batch, at most.
RSS_RATIO_GOAL = 1.2
#: StableAge of the soak's node (studies whose completeness cannot be judged start after it).
STABLE_AGE = 2
#: The whole soak is stopped (and reported as incomplete) after this many seconds.
TIME_LIMIT_S = 600.0
FAKE_NOTE = "fake processor (tests.support.node_fakes:factory: small SEG + SR per study, no model)"


def _template(folder: Path) -> list[Path]:
    """The files of one small synthetic prostate study (T2W, DWI, ADC, a localizer and T2 in other planes)."""
    from training.synth import SynthConfig, generate_case

    config = SynthConfig(
        vendor="siemens",
        profile="small",
        repeat_t2=False,
        calc_bvalue=False,
        dce=False,
        coil_reference=False,
        screenshot=False,
        n_localizers=1,
        lesion_kinds=("cspca",),
    )
    return dicom_files([generate_case(folder, 0, 7, config) / "dicom"])


def rss_mb(pid: int) -> float:
    """Resident set size of a process in MiB (``VmRSS`` of ``/proc/<pid>/status``).

    Raises
    ------
    OSError
        The process is gone (or ``/proc`` cannot be read).
    ValueError
        The status file has no ``VmRSS`` line (a zombie).
    """
    with open(f"/proc/{pid}/status", encoding="ascii") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    raise ValueError(f"process {pid} has no VmRSS (a zombie?)")


def _worker_pid(client: OrthancClient) -> int | None:
    processes = client.get_json("/lesion-ai/health")["workers"]["processes"]
    alive = [int(p["pid"]) for p in processes if p.get("alive") and p.get("pid")]
    return alive[0] if alive else None


def _all_jobs(client: OrthancClient) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    while True:
        page = client.get_json(f"/lesion-ai/jobs?limit=1000&offset={len(out)}")
        out.extend(page["jobs"])
        if not page.get("has_more"):
            return out


def _series_counts(client: OrthancClient, study_id: str) -> Counter[str]:
    """Series per Modality in a study."""
    return Counter(
        s["MainDicomTags"].get("Modality", "") for s in client.get_json(f"/studies/{study_id}/series")
    )


class _Progress:
    """The studies sent so far: their Orthanc IDs once found, and those whose results are stored."""

    def __init__(self, client: OrthancClient) -> None:
        self.client = client
        self.studies: dict[str, str | None] = {}  # StudyInstanceUID -> Orthanc ID
        self.finished: set[str] = set()

    def all_finished(self) -> bool:
        """Whether every study sent is in Orthanc and stable (nothing more will start for it), none of its
        jobs is queued or running, one has ended, and its SR is stored. (A job started early, before the
        study is stable, is run again when its inputs then change: the soak waits for that run too.)"""
        for uid, found in self.studies.items():
            if found is None:
                self.studies[uid] = find_study(self.client, uid)
        waiting = [s for s in self.studies.values() if s is None or s not in self.finished]
        if not waiting:
            return True
        every_job = _all_jobs(self.client)
        ended = {j["study"] for j in every_job if j["state"] in ("done", "failed")}
        busy = {j["study"] for j in every_job if j["state"] in ("queued", "running")}
        for study in waiting:
            if study is None or study not in ended or study in busy:
                continue
            if self.client.get_json(f"/studies/{study}").get("IsStable") and (
                _series_counts(self.client, study)["SR"] >= 1
            ):
                self.finished.add(study)
        return len(self.finished) == len(self.studies) and None not in self.studies.values()


def _histogram(values: list[int]) -> dict[str, int]:
    return {str(k): v for k, v in sorted(Counter(values).items())}


def _runs(log: Path) -> Counter[str]:
    """Processor runs per StudyInstanceUID (the fake processor appends one line per run)."""
    if not log.is_file():
        return Counter()
    return Counter(line.split()[0] for line in log.read_text(encoding="utf-8").splitlines() if line.strip())


def _check(client: OrthancClient, study_ids: dict[str, str | None], log: Path | None) -> dict[str, Any]:
    """Per study: result sets (SR series), SEG series, jobs and processor runs. A job superseded because
    the study's inputs changed after an early start is counted apart (``reruns``): its results were
    replaced, so it is not a second result set."""
    every_job = _all_jobs(client)
    live = [j for j in every_job if not str(j.get("error") or "").startswith(SUPERSEDED)]
    jobs = Counter(j["study"] for j in live)
    reruns = len(every_job) - len(live)
    failed = sum(1 for j in live if j["state"] == "failed")
    runs = _runs(log) if log is not None else None
    sr, seg, job_counts, run_counts = [], [], [], []
    for uid, study in study_ids.items():
        counts = _series_counts(client, study) if study is not None else Counter()
        sr.append(counts["SR"])
        seg.append(counts["SEG"])
        job_counts.append(jobs[study] if study is not None else 0)
        if runs is not None:
            run_counts.append(runs[uid])
    exactly_one = all(n == 1 for n in sr + job_counts) and all(n <= 1 for n in seg)
    runs_as_expected = all(n == 1 for n in run_counts) if not reruns else sum(run_counts) <= len(sr) + reruns
    return {
        "result_sets_per_study": _histogram(sr),
        "seg_series_per_study": _histogram(seg),
        "jobs_per_study": _histogram(job_counts),
        **({"processor_runs_per_study": _histogram(run_counts)} if runs is not None else {}),
        "failed_jobs": failed,
        "reruns_inputs_changed": reruns,
        "processor_runs_as_expected": runs_as_expected,
        "all_exactly_one_result_set": exactly_one,
    }


def _soak(
    node: OrthancServer, template: list[Path], copies: Path, studies: int, first: int, deadline: float
) -> dict[str, Any]:
    client = node.client()
    pid = wait_for(lambda: _worker_pid(client), 60, "the worker to start")
    progress = _Progress(client)
    rss: dict[str, float] = {}
    orthanc_rss: dict[str, float] = {}
    pids = {pid}
    send_s = 0.0
    started = time.monotonic()
    sent = 0
    while sent < studies:
        batch = min(first, studies - sent)
        for index in range(sent, sent + batch):
            files = _copy(template, index, copies / str(index))
            progress.studies[str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)] = None
            send_s += _send(files, node)
            shutil.rmtree(copies / str(index))
        sent += batch
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"the time limit ran out after {sent} studies were sent")
        wait_for(progress.all_finished, left, f"the results of {sent} studies", interval_s=0.5)
        now_pid = _worker_pid(client)
        if now_pid is None:
            raise RuntimeError(f"no worker alive after {sent} studies")
        pids.add(now_pid)
        rss[str(sent)] = round(rss_mb(now_pid), 1)
        if node.process is not None:
            orthanc_rss[str(sent)] = round(rss_mb(node.process.pid), 1)
        logger.warning("soak: %d studies processed, worker RSS %.1f MiB", sent, rss[str(sent)])
    wall_s = time.monotonic() - started
    reference, final = rss[str(min(first, studies))], rss[str(studies)]
    return {
        "wall_s": round(wall_s, 1),
        "send_s": round(send_s, 1),
        "worker_pids": sorted(pids),
        "worker_restarted": len(pids) > 1,
        f"rss_after_{min(first, studies)}_mb": reference,
        f"rss_after_{studies}_mb": final,
        "ratio": round(final / reference, 3),
        "goal_ratio_at_most": RSS_RATIO_GOAL,
        "within_goal": final / reference <= RSS_RATIO_GOAL and len(pids) == 1,
        "worker_rss_mb_by_studies": rss,
        "orthanc_rss_mb_by_studies": orthanc_rss,
        "study_ids": progress.studies,
    }


def run(
    studies: int = STUDIES,
    first: int = FIRST,
    *,
    engine: bool = True,
    model: Path | None = None,
    time_limit_s: float = TIME_LIMIT_S,
) -> dict[str, Any]:
    """Run the soak (see the module docstring); returns the JSON-ready report.

    Parameters
    ----------
    studies : int
        Studies to send (at least ``first``).
    first : int
        Studies per batch; the RSS reference is taken after the first batch.
    engine : bool
        Run the real engine (``model``, or the installed default, or random weights); False: the fake
        processor.
    model : Path, optional
        Model artifact for ``engine``.
    time_limit_s : float
        The soak stops after this long and reports what it did.
    """
    if not 1 <= first <= studies:
        raise ValueError(f"the soak needs 1 <= first <= studies, got first={first}, studies={studies}")
    if not time_limit_s > 0:
        raise ValueError(f"time_limit_s must be greater than 0, got {time_limit_s}")
    deadline = time.monotonic() + time_limit_s
    with tempfile.TemporaryDirectory(prefix="lesion-ai-bench-soak-") as scratch:
        root = Path(scratch)
        template = _template(root / "template")
        log = None if engine else root / "processor-runs.log"
        if engine:
            artifact, weights = _artifact(model, root)
            processor, note, extra = None, f"the engine ({weights})", _extra(artifact)
        else:
            processor, note, extra = FAKE_PROCESSOR, FAKE_NOTE, {"MaxAttempts": 1}
        fleet = OrthancFleet(root)
        report: dict[str, Any] = {
            "processor": note,
            "studies": studies,
            "instances_per_study": len(template),
            "stable_age_s": STABLE_AGE,
            "time_limit_s": time_limit_s,
        }
        try:
            node = fleet.node(
                "soak",
                processor=processor,
                stable_age=STABLE_AGE,
                extra=extra,
                env={"LESION_AI_FAKE_LOG": str(log)} if log is not None else None,
            )
            node.start()
            try:
                figures = _soak(node, template, root / "copies", studies, first, deadline)
                study_ids = figures.pop("study_ids")
                report.update(_check(node.client(), study_ids, log))
                report.update(figures)
                report["completed"] = True
            except (AssertionError, TimeoutError, RuntimeError, OSError, ValueError) as exc:
                report.update(completed=False, error=f"{type(exc).__name__}: {exc}")
            node.note_workers()
        finally:
            fleet.close()
    return report


def main() -> int:
    """``python -m benchmarks.soak [--studies N] [--first N] [--fake] [--model DIR] [--out FILE]``."""
    configure_cli_logging(logging.WARNING)
    parser = argparse.ArgumentParser(prog="python -m benchmarks.soak")
    parser.add_argument("--studies", type=int, default=STUDIES)
    parser.add_argument("--first", type=int, default=FIRST)
    parser.add_argument("--fake", action="store_true", help="run the tests' fake processor, not the engine")
    parser.add_argument(
        "--model", type=Path, help="model artifact of the engine (default: the installed one)"
    )
    parser.add_argument("--time-limit", type=float, default=TIME_LIMIT_S, help="seconds (default 600)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    report = run(
        args.studies, args.first, engine=not args.fake, model=args.model, time_limit_s=args.time_limit
    )
    write_report(report, args.out)
    return 0 if report.get("completed") else 1


if __name__ == "__main__":
    sys.exit(main())
