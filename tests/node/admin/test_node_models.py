"""Several models in the node: registering one (a validated zip), shadow runs kept in the node, the
agreement report (picai_eval) with the active model and with labels, and promotion (recorded; the next
jobs name the new model). Against a fake ``orthanc`` module and in-memory workers."""

from __future__ import annotations

import io
import json
import shutil
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from lesion_engine.model.model_card import CARD_FILE, WEIGHTS_FILE, default_artifact, model_identity
from lesion_engine.results.outputs import Output
from orthanc_plugin.admin.models import ModelsRoutes
from orthanc_plugin.admin.routes import CSRF_HEADER, CSRF_VALUE
from orthanc_plugin.jobqueue import (
    JobPayload,
    JobQueue,
    JobState,
    NewJob,
    QueuePolicy,
    open_queue,
    sqlite_url,
)
from orthanc_plugin.models.registry import CONFIGURED, ModelRegistry, RegistryError
from orthanc_plugin.models.shadow import Grid, ShadowStore, StudyEvidence, agreement_report
from orthanc_plugin.node.settings import WorkerSettings
from orthanc_plugin.plugin import NodePlugin
from orthanc_plugin.worker.model_runs import ModelRuns
from orthanc_plugin.worker.processing import ProcessingOutcome, ProcessingRequest, ProcessorSettings
from orthanc_plugin.worker.runner import Worker, WorkerOptions
from tests.support.fake_orthanc import FakeOrthanc, fake_node
from tests.support.model_helpers import write_tiny_artifact
from tests.support.node_fakes import FakeRest

GRID = Grid((0.0, 0.0, 0.0), (1.0, 1.0, 3.0), (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0), (16, 16, 4))
UID = "1.2.826.0.1.3680043.8.498.1"


def _headers(user: str = "alice") -> dict[str, str]:
    import base64

    token = base64.b64encode(f"{user}:secret".encode()).decode("ascii")
    return {CSRF_HEADER: CSRF_VALUE, "Authorization": f"Basic {token}"}


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> dict[int, Path]:
    root = tmp_path_factory.mktemp("artifacts")
    return {seed: write_tiny_artifact(root / f"seed{seed}", seed=seed) for seed in (1, 2)}


def _zip(folder: Path, extra: dict[str, bytes] | None = None, leave_out: str | None = None) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name in (CARD_FILE, WEIGHTS_FILE):
            if name != leave_out:
                archive.write(folder / name, name)
        for name, data in (extra or {}).items():
            archive.writestr(name, data)
    return buffer.getvalue()


@pytest.fixture
def node(tmp_path: Path) -> Iterator[tuple[FakeOrthanc, NodePlugin]]:
    with fake_node(tmp_path, processor=None) as node:
        yield node


# -- the registry and its routes --------------------------------------------------------------------------
def test_a_model_is_registered_from_its_zip_and_listed(
    node: tuple[FakeOrthanc, NodePlugin], artifacts: dict[int, Path]
) -> None:
    fake, plugin = node
    out = fake.rest("POST", "/lesion-ai/models/site-v2", _zip(artifacts[1]), headers=_headers())
    assert out.status == 201, out.body
    assert out.json()["identity"] == model_identity(str(artifacts[1]))
    listing = fake.rest("GET", "/lesion-ai/models").json()
    assert listing["active"] == CONFIGURED
    status = {m["name"]: m["status"] for m in listing["models"]}
    assert status == {CONFIGURED: "active", "site-v2": "registered"}
    assert listing["history"][0]["action"] == "add" and listing["history"][0]["user"] == "alice"
    stored = plugin.settings.models_folder / "site-v2"
    assert (stored / WEIGHTS_FILE).read_bytes() == (artifacts[1] / WEIGHTS_FILE).read_bytes()
    one = fake.rest("GET", "/lesion-ai/models/site-v2").json()
    assert one["card"]["name"] == "tiny-random" and one["shadow_studies"] == 0 and one["agreement"] is None


@pytest.mark.parametrize(
    ("name", "build", "status", "words"),
    [
        ("x", lambda a: b"not a zip at all", 400, "not a readable zip"),
        ("x", lambda a: _zip(a, {"../evil.json": b"{}"}), 400, "unexpected file"),
        ("x", lambda a: _zip(a, {"run.sh": b"rm -rf /"}), 400, "unexpected file"),
        ("x", lambda a: _zip(a, leave_out=WEIGHTS_FILE), 400, "no model.safetensors"),
        ("x", lambda a: _zip(a, leave_out=CARD_FILE), 400, "no model.json"),
        ("..", lambda a: _zip(a), 400, "invalid model name"),
        ("configured", lambda a: _zip(a), 400, "invalid model name"),
        ("x", lambda a: b"", 400, "needs the artifact's zip"),
        (".hidden", lambda a: _zip(a), 400, "invalid model name"),
    ],
)
def test_bad_uploads_are_refused_and_leave_nothing(
    node: tuple[FakeOrthanc, NodePlugin],
    artifacts: dict[int, Path],
    name: str,
    build: Any,
    status: int,
    words: str,
) -> None:
    fake, plugin = node
    out = fake.rest("POST", f"/lesion-ai/models/{name}", build(artifacts[1]), headers=_headers())
    assert out.status == status and words in out.json()["error"], out.body
    folder = plugin.settings.models_folder
    assert plugin.models.names() == []
    assert not folder.exists() or not [p for p in folder.iterdir() if p.is_dir()]


@pytest.mark.parametrize(
    "name",
    [
        "registry.json",
        "REGISTRY.JSON",
        "agreement.json",
        "x.tmp",
        "registry.json.1.tmp",
        "x.lock",
        "x.log",
        "x.partial",
    ],
)
def test_names_of_the_nodes_own_files_are_refused_and_processing_goes_on(
    node: tuple[FakeOrthanc, NodePlugin], artifacts: dict[int, Path], name: str
) -> None:
    """A model may never take the place of the registry or of its temporary, lock or log files."""
    fake, plugin = node
    out = fake.rest("POST", f"/lesion-ai/models/{name}", _zip(artifacts[1]), headers=_headers())
    assert out.status == 400 and "may not end with" in out.json()["error"], out.body
    folder = plugin.settings.models_folder
    assert not folder.exists() or sorted(p.name for p in folder.iterdir() if not p.name.startswith(".")) == []
    # Everything goes on: the registry is readable, the next upload works, health has no problem.
    assert fake.rest("GET", "/lesion-ai/models").status == 200
    assert fake.rest("POST", "/lesion-ai/models/ok-1", _zip(artifacts[1]), headers=_headers()).status == 201
    assert (
        fake.rest("POST", "/lesion-ai/models/ok-1/shadow", b'{"enabled": true}', headers=_headers()).status
        == 200
    )
    assert (folder / "registry.json").is_file()
    assert not [p for p in folder.iterdir() if p.name.endswith(".tmp")]
    health = fake.rest("GET", "/lesion-ai/health").json()
    assert health["status"] == "ok" and health["problems"] == [], health


def test_an_unreadable_registry_is_a_health_problem_and_nothing_is_left_behind(
    node: tuple[FakeOrthanc, NodePlugin], artifacts: dict[int, Path]
) -> None:
    """A registry file that cannot be read (here a folder in its place, as an older node could make) is
    named by health, the model routes say why, and a write leaves no temporary file."""
    fake, plugin = node
    folder = plugin.settings.models_folder
    (folder / "registry.json").mkdir(parents=True)
    health = fake.rest("GET", "/lesion-ai/health").json()
    assert health["status"] == "degraded"
    assert any("model registry" in p and "registry.json" in p for p in health["problems"]), health
    listing = fake.rest("GET", "/lesion-ai/models")
    assert listing.status == 500 and "cannot read the model registry" in listing.json()["error"]
    with pytest.raises(RegistryError, match="model registry"):
        plugin.models.add_zip("x", _zip(artifacts[1]), "alice")
    assert not [p for p in folder.iterdir() if p.name.endswith(".tmp")]
    (folder / "registry.json").rmdir()
    assert fake.rest("GET", "/lesion-ai/health").json()["problems"] == []


def _raw_zip(entries: Sequence[tuple[str, bytes]], method: int = zipfile.ZIP_STORED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", method) as archive:
        for name, data in entries:
            archive.writestr(name, data)
    return buffer.getvalue()


def _artifact_entries(folder: Path) -> list[tuple[str, bytes]]:
    return [(name, (folder / name).read_bytes()) for name in (CARD_FILE, WEIGHTS_FILE)]


def _patched(data: bytes, old: bytes, new: bytes) -> bytes:
    assert old in data
    return data.replace(old, new)


def _with_card(folder: Path, **changes: Any) -> bytes:
    card = json.loads((folder / CARD_FILE).read_text())
    card.update(changes)
    return _raw_zip(
        [(CARD_FILE, json.dumps(card).encode()), (WEIGHTS_FILE, (folder / WEIGHTS_FILE).read_bytes())]
    )


def _crc_broken(folder: Path) -> bytes:
    data = bytearray(_raw_zip(_artifact_entries(folder)))
    start = data.index(b"safetensors") if b"safetensors" in data else len(data) // 2
    data[start + 200] ^= 0xFF  # a byte of the stored weights: the CRC no longer matches
    return bytes(data)


def _deflate_broken(folder: Path) -> bytes:
    data = bytearray(_raw_zip(_artifact_entries(folder), zipfile.ZIP_DEFLATED))
    header = data.index(b"PK\x03\x04", 10)  # the second entry's local header (the weights)
    for offset in range(header + 80, header + 160):
        data[offset] = 0xFF  # garbage in the deflate stream
    return bytes(data)


def _flagged(data: bytes, flag: int = 0, method: int | None = None) -> bytes:
    """Set a general-purpose flag bit or the compression method in every header of a zip."""
    out = bytearray(data)
    for signature, flag_at, method_at in ((b"PK\x03\x04", 6, 8), (b"PK\x01\x02", 8, 10)):
        start = 0
        while (start := out.find(signature, start)) >= 0:
            out[start + flag_at] |= flag
            if method is not None:
                out[start + method_at : start + method_at + 2] = method.to_bytes(2, "little")
            start += 4
    return bytes(out)


def _understated(folder: Path) -> bytes:
    """A bomb that declares a smaller size than it unpacks to (the card's entry)."""
    data = _raw_zip(_artifact_entries(folder), zipfile.ZIP_DEFLATED)
    card_size = len((folder / CARD_FILE).read_bytes())
    small = (card_size // 2).to_bytes(4, "little")
    out = bytearray(data)
    for signature, size_at in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):
        start = out.find(signature)
        out[start + size_at : start + size_at + 4] = small
    return bytes(out)


@pytest.mark.parametrize(
    ("build", "words"),
    [
        (lambda a: _with_card(a, name="x" * 10_000_000), "model.json is larger than 1048576 bytes"),
        (lambda a: _with_card(a, name="x" * 200), "'name': text longer than 128"),
        (lambda a: _with_card(a, training={"data": "y" * 5000}), "training.data"),
        (lambda a: _with_card(a, version="1\x002"), "NUL"),
        (
            lambda a: _raw_zip([*_artifact_entries(a), *((f"p{i}.png", b"x") for i in range(10_000))]),
            "10002 entries",
        ),
        (lambda a: _raw_zip([*_artifact_entries(a), (CARD_FILE, b"{}")]), "model.json twice"),
        (
            lambda a: _patched(
                _raw_zip([*_artifact_entries(a), ("plot.png@.sh", b"x")]), b"plot.png@", b"plot.png\x00"
            ),
            "NUL character",
        ),
        (_crc_broken, "damaged (its CRC check fails)"),
        (_deflate_broken, "damaged"),
        (lambda a: _flagged(_raw_zip(_artifact_entries(a)), flag=1), "is encrypted"),
        (lambda a: _flagged(_raw_zip(_artifact_entries(a)), method=99), "compression method"),
        (_understated, "model.json in the model upload"),
        (lambda a: b"PK\x03\x04" + b"\x00" * 100, "not a readable zip file"),
    ],
    ids=[
        "name-10MB",
        "name-200",
        "long-text",
        "nul-in-card",
        "10000-entries",
        "duplicate",
        "nul-name",
        "bad-crc",
        "broken-deflate",
        "encrypted",
        "unknown-method",
        "bomb",
        "truncated",
    ],
)
def test_malformed_uploads_are_400_naming_the_problem_without_exception_text(
    node: tuple[FakeOrthanc, NodePlugin], artifacts: dict[int, Path], build: Any, words: str
) -> None:
    fake, plugin = node
    out = fake.rest("POST", "/lesion-ai/models/x", build(artifacts[1]), headers=_headers())
    assert out.status == 400, out.body
    message = out.json()["error"]
    assert words in message, message
    assert "Traceback" not in message and "Error:" not in message and "zlib" not in message, message
    folder = plugin.settings.models_folder
    assert plugin.models.names() == []
    assert not folder.exists() or not [p for p in folder.iterdir() if p.is_dir()]


def test_weights_that_are_not_the_cards_are_refused(artifacts: dict[int, Path], tmp_path: Path) -> None:
    registry = ModelRegistry(tmp_path / "models")
    mixed = io.BytesIO()
    with zipfile.ZipFile(mixed, "w") as archive:
        archive.write(artifacts[1] / CARD_FILE, CARD_FILE)
        archive.write(artifacts[2] / WEIGHTS_FILE, WEIGHTS_FILE)
    with pytest.raises(RegistryError, match="is not the one its card names"):
        registry.add_zip("mixed", mixed.getvalue(), "alice")
    registry.add_zip("ok", _zip(artifacts[1]), "alice")
    with pytest.raises(RegistryError, match="exists already"):
        registry.add_zip("ok", _zip(artifacts[2]), "bob")
    with pytest.raises(RegistryError, match="on the node already, as 'ok'"):
        registry.add_zip("again", _zip(artifacts[1]), "bob")
    default = io.BytesIO()
    with zipfile.ZipFile(default, "w") as archive:
        for name in (CARD_FILE, WEIGHTS_FILE):
            archive.write(default_artifact() / name, name)
    with pytest.raises(RegistryError, match="on the node already, as 'configured'"):
        registry.add_zip("copy", default.getvalue(), "bob")
    assert registry.names() == ["ok"]
    assert [p.name for p in (tmp_path / "models").iterdir() if p.is_dir()] == ["ok"]


def test_uploads_need_the_csrf_header(
    node: tuple[FakeOrthanc, NodePlugin], artifacts: dict[int, Path]
) -> None:
    fake, plugin = node
    for path, body in (
        ("/lesion-ai/models/x", _zip(artifacts[1])),
        ("/lesion-ai/models/x/promote", b""),
        ("/lesion-ai/models/x/shadow", b'{"enabled": true}'),
    ):
        assert fake.rest("POST", path, body).status == 403
    assert plugin.models.names() == []


def test_promotion_is_recorded_and_the_next_jobs_name_the_new_model(
    node: tuple[FakeOrthanc, NodePlugin], artifacts: dict[int, Path]
) -> None:
    fake, plugin = node
    configured = plugin.model
    assert fake.rest("POST", "/lesion-ai/models/v2", _zip(artifacts[1]), headers=_headers()).status == 201
    study = fake.add_study(
        series=[{"SeriesDescription": "t2_tse_tra"}, {"SeriesDescription": "ep2d_diff_tra_ADC"}]
    )
    before = plugin.enqueue_study(study)
    out = fake.rest("POST", "/lesion-ai/models/v2/promote", headers=_headers("bob"))
    assert out.status == 200, out.body
    recorded = out.json()["recorded"]
    assert recorded["user"] == "bob" and recorded["previous"] == CONFIGURED
    assert recorded["previous_identity"] == configured and recorded["identity"] == model_identity(
        str(artifacts[1])
    )
    assert plugin.model == recorded["identity"] != configured
    after = plugin.enqueue_study(study)
    models = {plugin.queue.get(j.id).model for j in after if j.id is not None}  # type: ignore[union-attr]
    assert models == {recorded["identity"]} and before[0].key != after[0].key
    assert (
        fake.rest("GET", "/lesion-ai/model").json()["weights_sha256"].startswith(recorded["identity"][-16:])
    )
    # Rolling back is promoting the configured model again.
    assert fake.rest("POST", f"/lesion-ai/models/{CONFIGURED}/promote", headers=_headers()).status == 200
    assert plugin.model == configured
    history = fake.rest("GET", "/lesion-ai/models").json()["history"]
    assert [h["action"] for h in history] == ["promote", "promote", "add"]


def test_shadow_switches_and_errors(node: tuple[FakeOrthanc, NodePlugin], artifacts: dict[int, Path]) -> None:
    fake, plugin = node
    assert fake.rest("POST", "/lesion-ai/models/v2", _zip(artifacts[1]), headers=_headers()).status == 201
    on = fake.rest("POST", "/lesion-ai/models/v2/shadow", b'{"enabled": true}', headers=_headers())
    assert on.status == 200 and on.json()["shadow"] == ["v2"]
    assert [m.name for m in plugin.models.shadows()] == ["v2"]
    assert (
        fake.rest("POST", "/lesion-ai/models/v2/shadow", b'{"enabled": "yes"}', headers=_headers()).status
        == 400
    )
    assert (
        fake.rest("POST", "/lesion-ai/models/nope/shadow", b'{"enabled": true}', headers=_headers()).status
        == 404
    )
    assert fake.rest("POST", "/lesion-ai/models/nope/promote", headers=_headers()).status == 404
    assert fake.rest("GET", "/lesion-ai/models/nope").status == 404
    # Promoted, it leaves the shadow list; the active model cannot run in shadow.
    assert fake.rest("POST", "/lesion-ai/models/v2/promote", headers=_headers()).status == 200
    assert plugin.models.shadows() == []
    refused = fake.rest("POST", "/lesion-ai/models/v2/shadow", b'{"enabled": true}', headers=_headers())
    assert refused.status == 400 and "active model" in refused.json()["error"]


def test_a_damaged_registry_is_an_error_not_a_reset(node: tuple[FakeOrthanc, NodePlugin]) -> None:
    fake, plugin = node
    configured = plugin.model
    plugin.settings.models_folder.mkdir()
    plugin.models.registry_file.write_text("{not json")
    out = fake.rest("GET", "/lesion-ai/models")
    assert out.status == 500 and "not JSON" in out.json()["error"]
    assert plugin.model == configured  # jobs go on with the configured model (logged)
    assert plugin.models.registry_file.read_text() == "{not json"


# -- shadow runs and agreement -------------------------------------------------------------------------
def _evidence(uid: str, lesion: tuple[slice, ...] | None, probability: float = 0.8) -> StudyEvidence:
    detection = np.zeros(GRID.size[::-1], dtype=np.float32)
    if lesion is not None:
        detection[lesion] = probability
    score = probability if lesion is not None else 0.0
    return StudyEvidence(uid, score, detection, GRID, ({"probability": score},) if lesion is not None else ())


BLOB = (slice(1, 3), slice(4, 8), slice(4, 8))
OTHER = (slice(1, 3), slice(10, 14), slice(10, 14))


def test_agreement_with_the_active_model_and_with_labels(tmp_path: Path) -> None:
    store = ShadowStore(tmp_path / "v2")
    # Four studies: the shadow agrees with the active model on three, and finds a lesion elsewhere on one.
    cases = [
        ("1.1", BLOB, 0.9, BLOB),
        ("1.2", None, 0.0, None),
        ("1.3", BLOB, 0.7, BLOB),
        ("1.4", OTHER, 0.5, None),
    ]
    for uid, shadow, probability, active in cases:
        store.save(_evidence(uid, shadow, probability), _evidence(uid, active), [b"SEG", b"SR"], {"job": 1})
    assert store.studies() == ["1.1", "1.2", "1.3", "1.4"]
    assert sorted(p.name for p in (store.shadow / "1.1").iterdir()) == ["01.dcm", "02.dcm"]

    truth = {"1.1": BLOB, "1.4": OTHER}

    def labels(uid: str, grid: Grid) -> Any:
        if uid not in ("1.1", "1.2", "1.4"):
            return None
        out = np.zeros(grid.size[::-1], dtype=np.int16)
        if uid in truth:
            out[truth[uid]] = 3
        return out

    report = agreement_report(store, labels, "tiny:1:abc")
    active = report["with_active"]
    assert report["studies"] == 4 and active["positive_studies"] == 2
    # The active model's two lesions are found (at 0.9 and 0.7) above its negatives (0 and 0.5).
    assert active["same_patient_call"] == 0.75 and active["auroc"] == 1.0
    assert active["sensitivity_at_1_fp"] == 1.0 and active["mean_patient_score_difference"] == 0.175
    shadow, active_vs_labels = report["with_labels"]["shadow"], report["with_labels"]["active"]
    assert report["with_labels"]["labelled_studies"] == ["1.1", "1.2", "1.4"]
    # The shadow finds both labelled lesions without a false positive; the active model one of the two.
    assert shadow["studies"] == 3 and shadow["auroc"] == 1.0 and shadow["average_precision"] == 1.0
    assert active_vs_labels["auroc"] == 0.75 and active_vs_labels["average_precision"] == 0.5
    assert store.report() == report


def test_the_report_compares_the_newest_runs_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    import orthanc_plugin.models.shadow as shadow_module

    store = ShadowStore(tmp_path / "v2")
    for number in range(4):
        uid = f"1.{number + 1}"
        store.save(_evidence(uid, BLOB), _evidence(uid, BLOB), [], {})
        os.utime(store.shadow / f"{uid}.npz", (1000.0 + number, 1000.0 + number))
    assert store.studies(newest=2) == ["1.3", "1.4"] and store.studies(newest=0) == []
    monkeypatch.setattr(shadow_module, "MAX_COMPARED", 3)
    report = agreement_report(store, None, "m")
    assert report["studies"] == 3 and report["studies_kept"] == 4


def test_undefined_figures_are_null_with_a_note(tmp_path: Path) -> None:
    store = ShadowStore(tmp_path / "v2")
    store.save(_evidence("1.1", None), _evidence("1.1", None), [], {})
    report = agreement_report(store, None, "m")
    assert report["with_active"]["auroc"] is None and report["with_active"]["sensitivity_at_1_fp"] is None
    assert any("AUROC needs" in n for n in report["with_active"]["notes"])
    assert report["with_labels"]["shadow"]["notes"] == ["no study to compare"]


def test_the_store_refuses_what_is_not_a_uid_or_not_the_same_grid(tmp_path: Path) -> None:
    store = ShadowStore(tmp_path / "v2")
    with pytest.raises(ValueError, match="not a StudyInstanceUID"):
        store.save(_evidence("../../etc", None), _evidence("../../etc", None), [], {})
    other = StudyEvidence(
        "1.1",
        0.0,
        np.zeros((4, 16, 8), np.float32),
        Grid(GRID.origin, GRID.spacing, GRID.direction, (8, 16, 4)),
    )
    with pytest.raises(ValueError, match="same study grid"):
        store.save(_evidence("1.1", None), other, [], {})
    with pytest.raises(ValueError, match="not on the grid"):
        StudyEvidence("1.1", 0.0, np.zeros((4, 4, 4), np.float32), GRID)


# -- a worker runs each job's model, then the shadows ----------------------------------------------------
class Tagging:
    """A processor that says which model folder it was built for, with evidence."""

    def __init__(self, settings: ProcessorSettings) -> None:
        self.model = settings.model
        self.calls: list[str] = []

    def __call__(self, instances: Sequence[bytes], request: ProcessingRequest) -> ProcessingOutcome:
        self.calls.append(request.study_id)
        tag = Path(self.model).name if self.model else "configured"
        if tag == "broken":
            raise RuntimeError("this model is broken")
        lesion = BLOB if tag != "v3" else OTHER
        return ProcessingOutcome.analysed(
            {Output.SEG: [f"SEG {tag}".encode()], Output.SR: [f"SR {tag}".encode()]},
            model={"name": tag},
            evidence=_evidence(UID, lesion),
        )

    def failure(self, instances: Sequence[bytes], reason: str) -> list[bytes]:
        return [b"FAIL"]


CREATED: list[Tagging] = []


def tagging(settings: ProcessorSettings) -> Tagging:
    processor = Tagging(settings)
    CREATED.append(processor)
    return processor


def _queue_job(queue: JobQueue, model: str) -> None:
    payload = JobPayload(study="st1", rule="prostate-mr", series=("se1", "se2"), model=model)
    queue.enqueue(NewJob(f"k-{model}", "st1", "prostate-mr", model, 0, payload.to_json()))


def test_a_worker_runs_the_jobs_model_then_keeps_the_shadow_results(
    tmp_path: Path, artifacts: dict[int, Path]
) -> None:
    CREATED.clear()
    registry = ModelRegistry(tmp_path / "models")
    registry.add_zip("v2", _zip(artifacts[1]), "alice")
    registry.add_zip("v3", _zip(artifacts[2]), "alice")
    shutil.copytree(tmp_path / "models" / "v3", tmp_path / "models" / "broken")
    registry.set_shadow("v3", True, "alice")
    registry.set_shadow("broken", True, "alice")
    queue = open_queue(
        sqlite_url(tmp_path / "q.sqlite"),
        QueuePolicy(lease_s=30, max_attempts=2, backoff_base_s=0, backoff_max_s=0),
    )
    settings = ProcessorSettings()
    default = tagging(settings)
    models = ModelRuns(registry, settings, "tests.node.admin.test_node_models:tagging", default)
    options = WorkerOptions.from_settings(WorkerSettings(queue="sqlite:///unused", heartbeat_s=5), owner="w")
    rest = FakeRest()
    worker = Worker(queue, rest, default, options, models)
    _queue_job(queue, registry.get("v2").identity)
    job = queue.claim("w")
    assert job is not None and worker.run_job(job) is JobState.DONE
    # The job's model (v2) made the stored results; v3 ran in shadow, kept in the node only.
    assert rest.stored == [b"SEG v2", b"SR v2"] and default.calls == []
    store = ShadowStore(tmp_path / "models" / "v3")
    assert store.studies() == [UID]
    kept = json.loads((store.shadow / f"{UID}.json").read_text())
    assert (
        kept["shadow_model"] == registry.get("v3").identity
        and kept["active_model"] == registry.get("v2").identity
    )
    assert (store.shadow / UID / "01.dcm").read_bytes() == b"SEG v3"
    report = store.report()
    assert report is not None and report["with_active"]["same_patient_call"] == 1.0
    # The broken shadow model did not fail the job, and nothing of it was kept.
    assert not (tmp_path / "models" / "broken" / "shadow").exists()
    # A job queued for the configured model runs the default processor.
    _queue_job(queue, "processor:none")
    job = queue.claim("w")
    assert job is not None and worker.run_job(job) is JobState.DONE
    assert default.calls == ["st1"] and rest.stored[-2:] == [b"SEG configured", b"SR configured"]
    queue.close()


def test_an_idle_worker_recomputes_reports_when_labels_arrive(
    tmp_path: Path, artifacts: dict[int, Path]
) -> None:
    registry = ModelRegistry(tmp_path / "models")
    registry.add_zip("v3", _zip(artifacts[2]), "alice")
    registry.set_shadow("v3", True, "alice")
    store = ShadowStore(tmp_path / "models" / "v3")
    store.save(_evidence("1.1", BLOB), _evidence("1.1", BLOB), [], {})
    store.save(_evidence("1.2", None), _evidence("1.2", None), [], {})

    class Labels:
        def __init__(self) -> None:
            self.known: dict[str, Any] = {}

        def signature(self) -> str:
            return ",".join(sorted(self.known))

        def __call__(self, study_instance_uid: str, grid: Grid) -> Any:
            return self.known.get(study_instance_uid)

    labels = Labels()
    models = ModelRuns(registry, ProcessorSettings(), None, tagging(ProcessorSettings()), labels)
    assert models.refresh(now=0.0) == 1
    assert store.report()["with_labels"]["labelled_studies"] == []  # type: ignore[index]
    assert models.refresh(now=1.0) == 0  # not due yet
    assert models.refresh(now=100.0) == 0  # due, but the labels did not change
    truth = np.zeros(GRID.size[::-1], np.int16)
    truth[BLOB] = 2
    labels.known = {"1.1": truth, "1.2": np.zeros_like(truth)}
    assert models.refresh(now=200.0) == 1
    report = store.report()
    assert report is not None and report["with_labels"]["shadow"]["auroc"] == 1.0


def test_a_missing_active_model_falls_back_to_the_configured_one_logged_once(
    tmp_path: Path, artifacts: dict[int, Path], caplog: pytest.LogCaptureFixture
) -> None:
    registry = ModelRegistry(tmp_path / "models")
    registry.add_zip("v2", _zip(artifacts[1]), "alice")
    registry.promote("v2", "alice")
    shutil.rmtree(tmp_path / "models" / "v2")
    with caplog.at_level("ERROR", logger="orthanc_plugin.models.registry"):
        assert registry.active().name == CONFIGURED and registry.active().name == CONFIGURED
    assert [r.getMessage() for r in caplog.records].count(
        f"the active model 'v2' is missing from {tmp_path / 'models'}; using the configured model"
    ) == 1


def test_a_shadow_models_report_holds_the_verdicts_on_the_active_models_findings(
    tmp_path: Path, artifacts: dict[int, Path]
) -> None:
    """The Models listing shows each model's verdicts; a shadow model's full report holds those of the active
    model (a shadow writes nothing into the studies, so only the active model is judged in the viewer)."""
    registry = ModelRegistry(tmp_path / "models")
    for name, seed in (("v2", 1), ("v3", 2)):
        registry.add_zip(name, _zip(artifacts[seed]), "alice")
    registry.promote("v2", "alice")
    registry.set_shadow("v3", True, "alice")
    ShadowStore(tmp_path / "models" / "v3").write_report(
        {"model": "v3", "with_active": {}, "with_labels": {}}
    )
    card = json.loads((artifacts[1] / CARD_FILE).read_text())
    figures = {"accepted": 7, "rejected": 1, "missed": 1, "studies": 1, "ppv": 0.875}
    routes = ModelsRoutes(registry, lambda: {f"{card['name']} {card['version']}": figures})
    status, listing, _ = routes.list_models()
    assert status == 200 and isinstance(listing, dict)
    by_name = {m["name"]: m for m in listing["models"]}
    assert by_name["v2"]["verdicts"] == figures and by_name[CONFIGURED]["verdicts"] is None
    status, report, _ = routes.get_model("v3")
    assert status == 200 and isinstance(report, dict)
    assert report["agreement"]["active_verdicts"] == {
        "model": "v2",
        "algorithm": f"{card['name']} {card['version']}",
        "figures": figures,
    }
    # Before any verdict: no figures, and a note saying why.
    status, report, _ = ModelsRoutes(registry, dict).get_model("v3")
    assert report["agreement"]["active_verdicts"]["figures"] is None
    assert "no radiologist's SR" in report["agreement"]["active_verdicts"]["note"]
