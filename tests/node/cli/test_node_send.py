"""``lesion-ai send`` and its association set-up (Nagle off, responses never lost to pynetdicom's
association thread)."""

from __future__ import annotations

import queue
import socket
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from lesion_engine.cli.main import main
from orthanc_plugin.cli.dicomsend import dicom_files, no_delay, send_files
from tests.support.node_env import free_port, make_study


def test_responses_taken_by_the_association_thread_go_back_to_the_sender() -> None:
    served: list[Any] = []
    msg_queue: queue.Queue[tuple[int, Any]] = queue.Queue()
    with socket.socket() as sock:
        assoc = SimpleNamespace(
            dul=SimpleNamespace(socket=SimpleNamespace(socket=sock)),
            dimse=SimpleNamespace(msg_queue=msg_queue),
            _serve_request=lambda msg, cx: served.append(msg),
        )
        no_delay(assoc)
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
    response = SimpleNamespace(is_valid_request=False)
    request = SimpleNamespace(is_valid_request=True)
    assoc._serve_request(response, 3)
    assoc._serve_request(request, 5)
    assert msg_queue.get_nowait() == (3, response)
    assert served == [request]


def test_send_reports_unreachable_receivers_and_non_dicom(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    make_study(tmp_path / "study", images=1)
    (tmp_path / "study" / "notes.txt").write_text("not DICOM")
    files = dicom_files([tmp_path / "study"])
    assert len(files) == 3
    with pytest.raises(ConnectionError, match="no association"):
        send_files(files, "127.0.0.1", free_port(), timeout_s=5)
    assert main(["send", str(tmp_path / "study"), "--port", str(free_port())]) == 2
    assert "no association" in capsys.readouterr().err
    with pytest.raises(FileNotFoundError):
        dicom_files([tmp_path / "missing"])
