"""The worker's side of a store gate: wait until a job started early may store its results, or withdraw it.

A job started before its study's quiet time passed carries a
:class:`~orthanc_plugin.jobqueue.store_gate.StoreGate` (see that module for the node's side). Before it stores
anything, the worker calls :func:`await_store_gate`: it reads the gate from the queue (the plugin may have
moved it, or lifted it, since the job was claimed), waits for its ``not_before``, and compares the study
with the gate's snapshot. When the study changed, the plugin's next judgement of the study usually moves
the gate within a second or two (same work) or queues other work (new inputs): the worker waits
``settle_s`` for a moved gate before it gives up and withdraws the job.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

from orthanc_plugin.jobqueue import JobQueue, StoreGate, StoreGateError
from orthanc_plugin.node.orthanc_api import quote_id

logger = logging.getLogger(__name__)

__all__ = ["MAX_GATE_WAIT_S", "StudySeriesReader", "await_store_gate"]

#: At most this long a job waits for its gate, from its first look (seconds): a study that keeps changing
#: for longer is withdrawn, and judged again once it is quiet.
MAX_GATE_WAIT_S = 120.0
#: How often the gate is read again while the job waits (seconds).
_POLL_S = 0.1


class StudySeriesReader(Protocol):
    """What the gate reads of Orthanc's REST API."""

    def get_json(self, path: str) -> Any:
        """GET, decoded as JSON."""
        ...


def await_store_gate(
    queue: JobQueue,
    client: StudySeriesReader,
    job_id: int,
    study_id: str,
    *,
    stop: threading.Event,
    check: Callable[[], None],
    settle_s: float = 3.0,
    clock: Callable[[], float] = time.time,
) -> str | None:
    """Wait until the job may store its results; the reason to withdraw it instead, or None.

    Parameters
    ----------
    queue : JobQueue
        Where the job's current gate is read.
    client : StudySeriesReader
        Orthanc's REST API (``GET /studies/{id}/series``).
    job_id : int
        The job.
    study_id : str
        Orthanc ID of its study.
    stop : threading.Event
        Waited on between looks (a stop request ends the wait at once).
    check : callable
        Called between looks; raises to abandon the job (lease lost, stop requested).
    settle_s : float
        After a change is seen, how long a moved gate is waited for before the job is withdrawn.
    clock : callable
        Seconds since the epoch (the gate's ``not_before`` is one).

    Returns
    -------
    str or None
        None: store now (no gate, or the study is as the gate says). Else what changed, in words.
    """
    started = time.monotonic()
    changed: tuple[StoreGate, str, float] | None = None  # the gate that saw a change, what, and when
    while True:
        job = queue.get(job_id)
        if job is None:
            return "the job is no longer in the queue"
        try:
            gate = StoreGate.of_payload(job.payload)
        except StoreGateError as exc:
            return f"its store gate cannot be read ({exc})"
        if gate is None:
            return None
        wait = gate.not_before - clock()
        if changed is not None and changed[0] != gate:
            changed = None  # the plugin moved the gate: look again once it allows
        if wait <= 0 and changed is None:
            change = gate.changes(client.get_json(f"/studies/{quote_id(study_id)}/series"))
            if change is None:
                logger.info(
                    "job %d: study %s unchanged since its judgement; results stored", job_id, study_id
                )
                return None
            logger.info("job %d: study %s changed (%s); waiting for its judgement", job_id, study_id, change)
            changed = (gate, change, time.monotonic())
        if changed is not None and time.monotonic() - changed[2] >= settle_s:
            return f"the study changed while it was analysed ({changed[1]})"
        if time.monotonic() - started >= MAX_GATE_WAIT_S:
            return f"the study kept changing for {MAX_GATE_WAIT_S:.0f} s while it was analysed"
        stop.wait(min(wait, _POLL_S) if wait > 0 else _POLL_S)
        check()
