"""Worker processes started by the plugin: started with ``subprocess``, watched, restarted, stopped.

Inside Orthanc, ``sys.executable`` is the Orthanc binary, and forking would hand Orthanc's listening
sockets to the children; so each worker is a fresh process of the virtual environment's interpreter
(``subprocess`` with ``close_fds``), in its own process group (a Ctrl-C on Orthanc's terminal reaches Orthanc
only, which then stops the workers). A daemon thread restarts a worker that exits, with a growing delay
when one keeps crashing. Workers also stop by themselves when Orthanc dies (they watch their parent).

Each worker's output goes to ``worker-N.log``. A log that grows past ``max_log_bytes`` is rotated in place
(``worker-N.log.1`` .. ``.K``): copied, then truncated. The worker keeps writing to the same file, opened in
append mode, so its next line lands at the start of the emptied file; a line written between the copy and
the truncation can be lost.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO

logger = logging.getLogger(__name__)

__all__ = ["WorkerSupervisor"]


@dataclass
class _Slot:
    index: int
    process: subprocess.Popen[bytes] | None = None
    log: IO[bytes] | None = None
    started_at: float = 0.0
    restarts: int = 0
    next_start: float = 0.0
    last_exit: dict[str, object] | None = None


#: Variables of Orthanc's own environment that its workers do not inherit: ``MALLOC_MMAP_THRESHOLD_`` (set
#: by ``lesion-ai node`` so that Orthanc returns large request buffers to the system) makes glibc map and
#: unmap every tensor of 1 MB or more in a torch process, and the engine about 40 % slower (1.5 s -> 2.1 s
#: from a loaded study to the result on 2 cores).
ORTHANC_ONLY_ENVIRONMENT = frozenset({"MALLOC_MMAP_THRESHOLD_"})


class WorkerSupervisor:
    """Keeps ``count`` worker processes running.

    Parameters
    ----------
    command : sequence of str
        The worker's command line (interpreter first).
    count : int
        Number of workers.
    env : mapping
        Extra environment variables (credentials), added to the plugin's environment (less
        :data:`ORTHANC_ONLY_ENVIRONMENT`).
    log_dir : Path
        Each worker appends its output to ``worker-N.log`` here.
    check_s : float
        How often the monitor thread looks at the workers (and at the size of their logs).
    max_log_bytes : int
        Rotate a worker's log once it is larger than this.
    log_backups : int
        Rotated logs kept per worker (``worker-N.log.1`` is the newest).
    on_exit : callable, optional
        Called as ``on_exit(index, pid, status)`` as soon as the monitor sees a worker exited (before it
        is restarted), e.g. to hand its job to another worker at once rather than after its lease. Its
        exceptions are logged.
    """

    def __init__(
        self,
        command: Sequence[str],
        count: int,
        env: Mapping[str, str],
        log_dir: Path,
        check_s: float = 1.0,
        max_log_bytes: int = 20 * 2**20,
        log_backups: int = 3,
        on_exit: Callable[[int, int, int | None], None] | None = None,
    ) -> None:
        if max_log_bytes < 1024:
            raise ValueError(f"max_log_bytes must be at least 1024, got {max_log_bytes}")
        if log_backups < 1:
            raise ValueError(f"log_backups must be at least 1, got {log_backups}")
        self.max_log_bytes = max_log_bytes
        self.log_backups = log_backups
        self.command = list(command)
        self.count = count
        inherited = {k: v for k, v in os.environ.items() if k not in ORTHANC_ONLY_ENVIRONMENT}
        self.env = {**inherited, **env}
        self.log_dir = log_dir
        self.check_s = check_s
        self.on_exit = on_exit
        self._slots = [_Slot(i) for i in range(count)]
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start the workers and the monitor thread (a daemon)."""
        if self.count == 0:
            logger.info("no worker processes configured (workers run elsewhere)")
            return
        self.log_dir.mkdir(parents=True, exist_ok=True)
        with self._lock:
            for slot in self._slots:
                self._spawn(slot)
        self._thread = threading.Thread(target=self._monitor, name="lesion-ai-workers", daemon=True)
        self._thread.start()

    def _log_path(self, slot: _Slot) -> Path:
        return self.log_dir / f"worker-{slot.index}.log"

    def _rotate_if_large(self, slot: _Slot) -> None:
        path = self._log_path(slot)
        try:
            if path.stat().st_size <= self.max_log_bytes:
                return
        except FileNotFoundError:
            return
        for n in range(self.log_backups - 1, 0, -1):
            older = path.with_name(f"{path.name}.{n}")
            if older.exists():
                older.replace(path.with_name(f"{path.name}.{n + 1}"))
        shutil.copyfile(path, path.with_name(f"{path.name}.1"))
        os.truncate(path, 0)
        logger.info("worker %d log rotated (over %d bytes)", slot.index, self.max_log_bytes)

    def _spawn(self, slot: _Slot) -> None:
        if slot.log is None:
            slot.log = open(self._log_path(slot), "ab")  # noqa: SIM115 - kept open
        command = [*self.command, "--name", f"w{slot.index}"]
        slot.process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=slot.log,
            stderr=subprocess.STDOUT,
            env=self.env,
            close_fds=True,
            start_new_session=True,
        )
        slot.started_at = time.monotonic()
        logger.info("worker %d started (pid %d)", slot.index, slot.process.pid)

    def _monitor(self) -> None:
        while not self._stop.wait(self.check_s):
            try:
                self._check()
            except Exception:
                logger.exception("worker monitor")

    def _check(self) -> None:
        with self._lock:
            if self._stop.is_set():
                return
            now = time.monotonic()
            for slot in self._slots:
                self._rotate_if_large(slot)
                process = slot.process
                if process is not None and process.poll() is None:
                    if now - slot.started_at > 60:
                        slot.restarts = 0  # ran long enough: forget earlier crashes
                    continue
                if process is not None:
                    delay = min(2.0 ** min(slot.restarts, 6) - 1, 60.0)
                    logger.warning(
                        "worker %d (pid %d) exited with status %s; restarting in %.0f s",
                        slot.index,
                        process.pid,
                        process.returncode,
                        delay,
                    )
                    slot.process = None
                    slot.restarts += 1
                    slot.next_start = now + delay
                    slot.last_exit = {
                        "pid": process.pid,
                        "status": process.returncode,
                        "at": datetime.now(UTC).isoformat(timespec="seconds"),
                    }
                    if self.on_exit is not None:
                        try:
                            self.on_exit(slot.index, process.pid, process.returncode)
                        except Exception:
                            logger.exception("worker %d: handling its exit failed", slot.index)
                if now >= slot.next_start:
                    self._spawn(slot)

    def pids(self) -> list[int | None]:
        """Process IDs of the workers (None for a worker being restarted)."""
        with self._lock:
            return [
                s.process.pid if s.process is not None and s.process.poll() is None else None
                for s in self._slots
            ]

    def status(self) -> list[dict[str, object]]:
        """JSON-ready state of each worker."""
        with self._lock:
            return [
                {
                    "index": s.index,
                    "pid": s.process.pid if s.process is not None else None,
                    "alive": s.process is not None and s.process.poll() is None,
                    "restarts": s.restarts,
                    "last_exit": dict(s.last_exit) if s.last_exit is not None else None,
                }
                for s in self._slots
            ]

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop the workers: SIGTERM, then SIGKILL after ``timeout_s``."""
        self._stop.set()
        with self._lock:
            running = [s.process for s in self._slots if s.process is not None and s.process.poll() is None]
            for process in running:
                process.terminate()
            deadline = time.monotonic() + timeout_s
            for process in running:
                try:
                    process.wait(max(deadline - time.monotonic(), 0.1))
                except subprocess.TimeoutExpired:
                    logger.warning("worker pid %d did not stop; killing it", process.pid)
                    process.kill()
                    process.wait(5)
            for slot in self._slots:
                if slot.log is not None:
                    slot.log.close()
                    slot.log = None
        if self._thread is not None:
            self._thread.join(timeout=self.check_s * 2 + 1)
        logger.info("workers stopped")
