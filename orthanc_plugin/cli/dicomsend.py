"""``lesion-ai send``: send DICOM files to a node (or any C-STORE SCP) with pynetdicom.

Files are sent as they are stored (no decoding and re-encoding); presentation contexts are proposed for
each file's SOP class with its own transfer syntax plus the uncompressed ones.
"""

from __future__ import annotations

import logging
import os
import socket
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydicom
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.presentation import build_context

from orthanc_plugin.node.settings import DEFAULT_AET, DEFAULT_CALLING_AET

logger = logging.getLogger(__name__)

__all__ = ["SendReport", "dicom_files", "no_delay", "send_files"]

_MAX_CONTEXTS = 128


@dataclass
class SendReport:
    """What happened to each file.

    Attributes
    ----------
    sent : int
        Files accepted by the receiver (status 0x0000 or a warning).
    failed : list of (str, str)
        File and reason, for files refused or not sent.
    skipped : list of (str, str)
        Files that are not DICOM.
    """

    sent: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)


def no_delay(assoc: Any) -> None:
    """Make an established association fast and safe for back-to-back C-STOREs.

    * Nagle's algorithm off on its socket: each C-STORE otherwise waits for the receiver's delayed ACK
      (tens of milliseconds per instance).
    * pynetdicom's association thread can take a response off the DIMSE queue in the instant before
      ``send_c_store`` pauses it (a race that fast answers make likely); it then drops the response as
      "unexpected" and the sender waits for the DIMSE timeout. Such a response is put back on the queue,
      where ``send_c_store`` is waiting for it.
    """
    sock = getattr(getattr(getattr(assoc, "dul", None), "socket", None), "socket", None)
    if isinstance(sock, socket.socket):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    serve = getattr(assoc, "_serve_request", None)
    queue = getattr(getattr(assoc, "dimse", None), "msg_queue", None)
    if serve is None or queue is None:
        return

    def serve_or_requeue(msg: Any, context_id: int) -> None:
        if msg is not None and not getattr(msg, "is_valid_request", True):
            queue.put((context_id, msg))  # a response for the waiting sender, not a request to serve
            logger.debug("C-STORE response handed back to the sender")
            return
        serve(msg, context_id)

    assoc._serve_request = serve_or_requeue


def dicom_files(paths: Iterable[Path]) -> list[Path]:
    """Every file under ``paths`` (folders searched recursively, hidden entries skipped), sorted."""
    out: list[Path] = []
    for path in paths:
        if path.is_dir():
            for root, dirs, files in os.walk(path):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                out.extend(Path(root) / name for name in sorted(files) if not name.startswith("."))
        elif path.is_file():
            out.append(path)
        else:
            raise FileNotFoundError(f"no such file or folder: {path}")
    return out


def send_files(
    files: Iterable[Path],
    host: str,
    port: int,
    calling_aet: str = DEFAULT_CALLING_AET,
    called_aet: str = DEFAULT_AET,
    timeout_s: float = 60.0,
) -> SendReport:
    """Send DICOM files with C-STORE over as few associations as the presentation contexts allow.

    Raises
    ------
    ConnectionError
        The association was rejected or the receiver cannot be reached.
    """
    report = SendReport()
    by_context: dict[tuple[str, str], list[Path]] = defaultdict(list)
    for path in files:
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SOPClassUID"])
            sop_class = str(ds.SOPClassUID)
            syntax = str(ds.file_meta.TransferSyntaxUID)
        except Exception as exc:
            report.skipped.append((str(path), f"not a DICOM file: {exc}"))
            continue
        by_context[(sop_class, syntax)].append(path)
    keys = sorted(by_context)
    # Each (SOP class, transfer syntax) gets its own context; at most 128 per association.
    for start in range(0, len(keys), _MAX_CONTEXTS):
        chunk = keys[start : start + _MAX_CONTEXTS]
        ae = AE(ae_title=calling_aet)
        ae.acse_timeout = timeout_s
        ae.dimse_timeout = timeout_s
        ae.network_timeout = timeout_s
        for sop_class, syntax in chunk:
            syntaxes = list(dict.fromkeys([syntax, ExplicitVRLittleEndian, ImplicitVRLittleEndian]))
            ae.requested_contexts.append(build_context(sop_class, syntaxes))
        assoc = ae.associate(host, port, ae_title=called_aet)
        if not assoc.is_established:
            raise ConnectionError(
                f"no association with {called_aet}@{host}:{port} (rejected, aborted or unreachable)"
            )
        no_delay(assoc)
        try:
            for key in chunk:
                for path in by_context[key]:
                    try:
                        status = assoc.send_c_store(path)
                    except Exception as exc:
                        report.failed.append((str(path), f"{type(exc).__name__}: {exc}"))
                        continue
                    code = getattr(status, "Status", None)
                    if code is None:
                        report.failed.append((str(path), "no response (connection lost or timed out)"))
                    elif code == 0x0000 or code in (0xB000, 0xB007, 0xB006):
                        report.sent += 1
                    else:
                        report.failed.append((str(path), f"C-STORE status 0x{code:04X}"))
        finally:
            if assoc.is_established:
                assoc.release()
    return report
