"""Studies per hour of a node cluster with 1 and with 2 workers, side by side in one run (``make bench`` key
``cluster``).

A PostgreSQL server (Orthanc's index, the job queue and the cluster's tables) and two Orthancs with the
node's plugin, A and B, sharing one storage folder, are started on free loopback ports in a temporary
folder. For each worker count, on a fresh database, ``studies`` copies of one small synthetic prostate study
(:mod:`benchmarks.soak`'s) are sent by C-STORE, alternately to A and B; the figure is the studies over the
time from the first C-STORE until every study's job ended, per hour. The workers share the machine's CPUs
(``Threads``: CPUs over workers), as the node shares them among its own workers; on several machines each
worker would have its own.

Each phase also checks what the cluster promises: every study has exactly one result set (one SR series)
and one live job, and every such job is ``done``. A job started before the study was stable, and replaced
because its inputs then changed (superseded), is counted apart, as in :mod:`benchmarks.soak`.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pydicom

from benchmarks import write_report
from benchmarks.node import _artifact, _copy, _extra, _send
from benchmarks.soak import STABLE_AGE, _all_jobs, _template
from lesion_engine.logsetup import configure_cli_logging
from orthanc_plugin.jobqueue import SUPERSEDED
from orthanc_plugin.worker.client import OrthancClient
from tests.support.node_env import FAKE_PROCESSOR, OrthancFleet, OrthancServer, find_study, wait_for
from tests.support.pg_env import PostgresServer, running_postgres

logger = logging.getLogger(__name__)

#: Studies sent per worker count.
STUDIES = 8
#: A phase gives up after this many seconds.
PHASE_LIMIT_S = 300.0


def _ended(client: OrthancClient, count: int) -> list[dict[str, Any]] | None:
    found = _all_jobs(client)
    ended = [j for j in found if j["state"] in ("done", "failed")]
    return found if len(ended) >= count and len(ended) == len(found) else None


def _phase(
    postgres: PostgresServer,
    root: Path,
    template: list[Path],
    workers: int,
    studies: int,
    processor: str | None,
    extra: dict[str, Any],
    env: dict[str, str],
) -> dict[str, Any]:
    """One cluster with ``workers`` workers (A runs one, B the others); returns its figures."""
    database = postgres.database()
    fleet = OrthancFleet(root / f"workers-{workers}")
    threads = max(1, (os.cpu_count() or 1) // workers)
    try:
        servers: list[OrthancServer] = [
            fleet.node(
                name,
                workers=count,
                stable_age=STABLE_AGE,
                processor=processor,
                cluster=database,
                storage=root / f"workers-{workers}" / "storage",
                extra={**extra, "Threads": threads},
                env=env,
            ).start()
            for name, count in (("A", 1), ("B", workers - 1))
        ]
        client = servers[0].client()
        wait_for(
            lambda: any(s.client().get_json("/lesion-ai/health")["cluster"]["dispatching"] for s in servers),
            30,
            "a dispatcher",
        )
        copies = [_copy(template, i, root / f"copies-{workers}" / str(i)) for i in range(studies)]
        started = time.monotonic()
        for index, files in enumerate(copies):
            _send(files, servers[index % 2])
        found = wait_for(lambda: _ended(client, studies), PHASE_LIMIT_S, f"{studies} studies processed")
        elapsed = time.monotonic() - started
        uids = [str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID) for files in copies]
        result_sets: Counter[int] = Counter()
        for uid in uids:
            study = find_study(client, uid)
            series = client.get_json(f"/studies/{study}/series") if study else []
            result_sets[sum(1 for s in series if s["MainDicomTags"].get("Modality") == "SR")] += 1
        for server in servers:
            server.note_workers()
        superseded = [j for j in found if str(j.get("error") or "").startswith(SUPERSEDED)]
        live = [j for j in found if j not in superseded]
        return {
            "workers": workers,
            "threads_per_worker": threads,
            "studies": studies,
            "seconds": round(elapsed, 2),
            "studies_per_hour": round(studies / elapsed * 3600.0, 1),
            "jobs": len(live),
            "jobs_done": sum(1 for j in live if j["state"] == "done"),
            "reruns_inputs_changed": len(superseded),
            "result_sets_per_study": {str(k): v for k, v in sorted(result_sets.items())},
            "exactly_one_result_set_each": result_sets == Counter({1: studies})
            and len({j["study"] for j in live}) == len(live) == studies,
        }
    finally:
        fleet.close()


def run(
    studies: int = STUDIES,
    *,
    engine: bool = True,
    model: Path | None = None,
    template: list[Path] | None = None,
) -> dict[str, Any]:
    """Run both phases (see the module docstring); returns the JSON-ready report.

    Parameters
    ----------
    studies : int
        Studies sent per worker count (at least 2).
    engine : bool
        Run the real engine (``model``, or the installed default, or random weights); False: the tests'
        fake processor (small SEG and SR objects, 0.5 s per study).
    model : Path, optional
        Model artifact for ``engine``.
    template : list of Path, optional
        The files of the study sent (default: :mod:`benchmarks.soak`'s small synthetic prostate study).
    """
    if studies < 2:
        raise ValueError(f"the cluster benchmark needs at least 2 studies, got {studies}")
    with tempfile.TemporaryDirectory(prefix="lesion-ai-bench-cluster-") as scratch, running_postgres() as pg:
        root = Path(scratch)
        template = template if template is not None else _template(root / "template")
        if engine:
            artifact, weights = _artifact(model, root)
            processor, note, extra, env = None, f"the engine ({weights})", _extra(artifact), {}
        else:
            processor, note, extra = FAKE_PROCESSOR, "fake processor (0.5 s per study)", {"MaxAttempts": 1}
            env = {"LESION_AI_FAKE_DELAY": "0.5"}
        report: dict[str, Any] = {"processor": note, "instances_per_study": len(template)}
        try:
            one = _phase(pg, root, template, 1, studies, processor, extra, env)
            two = _phase(pg, root, template, 2, studies, processor, extra, env)
        except (AssertionError, TimeoutError, RuntimeError, OSError) as exc:
            report.update(completed=False, error=f"{type(exc).__name__}: {exc}")
            return report
        report.update(
            completed=True,
            workers_1=one,
            workers_2=two,
            studies_per_hour_1_worker=one["studies_per_hour"],
            studies_per_hour_2_workers=two["studies_per_hour"],
            ratio_2_over_1=round(two["studies_per_hour"] / one["studies_per_hour"], 2),
        )
    return report


def main() -> int:
    """``python -m benchmarks.cluster [--studies N] [--fake] [--model DIR] [--out FILE]``."""
    configure_cli_logging(logging.WARNING)
    parser = argparse.ArgumentParser(prog="python -m benchmarks.cluster")
    parser.add_argument("--studies", type=int, default=STUDIES)
    parser.add_argument("--fake", action="store_true", help="run the tests' fake processor, not the engine")
    parser.add_argument(
        "--model", type=Path, help="model artifact of the engine (default: the installed one)"
    )
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    report = run(args.studies, engine=not args.fake, model=args.model)
    write_report(report, args.out)
    return 0 if report.get("completed") else 1


if __name__ == "__main__":
    sys.exit(main())
