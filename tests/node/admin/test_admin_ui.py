"""The admins' page and the admin API routes it uses, against a fake ``orthanc`` module: the page's files
and their security headers, paths that try to leave its folder, the CSRF header of state-changing requests,
job filters and paging, retrying a failed job, validating rules, the rules' history (10 kept, who and
when, restore), the model card and the study list."""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from orthanc_plugin.admin.routes import CSRF_HEADER, CSRF_VALUE, csrf_refusal
from orthanc_plugin.admin.rules import error_location
from orthanc_plugin.admin.ui import CONTENT_SECURITY_POLICY, UI_BASE, UiFiles
from orthanc_plugin.jobqueue import WITHDRAWN, JobState, QueuePolicy, open_queue, sqlite_url
from orthanc_plugin.plugin import NodePlugin
from orthanc_plugin.rules.history import KEEP, RulesHistory, request_user
from tests.paths import REPO
from tests.support.fake_orthanc import FakeOrthanc, fake_node, node_settings

UI_DIR = REPO / "orthanc_plugin" / "data" / "ui"
PROSTATE: list[dict[str, Any]] = [
    {"SeriesDescription": "t2_tse_tra"},
    {"SeriesDescription": "ep2d_diff_tra_ADC"},
]


def _auth(user: str, password: str = "secret") -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
    return {"Authorization": f"Basic {token}"}


def admin(user: str = "alice") -> dict[str, str]:
    """The headers of a state-changing request of ``user`` (CSRF header and basic authentication)."""
    return {CSRF_HEADER: CSRF_VALUE, **_auth(user)}


def _rules(name: str, priority: int = 0, destinations: str = "{}") -> str:
    return (
        "version: 1\nrules:\n"
        f"  - name: {name}\n"
        f"    priority: {priority}\n"
        f"    destinations: {destinations}\n"
        "    match:\n"
        "      series: {Modality: [MR]}\n"
    )


@pytest.fixture
def node(tmp_path: Path) -> Iterator[tuple[FakeOrthanc, NodePlugin]]:
    with fake_node(tmp_path) as node:
        yield node


# -- the page's files -------------------------------------------------------------------------------------
def test_the_page_and_its_files_are_served_with_security_headers(
    node: tuple[FakeOrthanc, NodePlugin],
) -> None:
    fake, _ = node
    index = fake.rest("GET", "/lesion-ai/ui")  # Orthanc drops the final slash of /lesion-ai/ui/
    assert (index.status, index.mime) == (200, "text/html; charset=utf-8")
    assert index.body == (UI_DIR / "index.html").read_bytes()
    assert fake.rest("GET", "/lesion-ai/ui/index.html").body == index.body
    for name, mime in (
        ("app.js", "text/javascript"),
        ("models.js", "text/javascript"),
        ("app.css", "text/css"),
        ("favicon.svg", "image/svg+xml"),
    ):
        out = fake.rest("GET", f"/lesion-ai/ui/{name}")
        assert out.status == 200 and out.mime is not None and out.mime.startswith(mime), name
        assert out.body == (UI_DIR / name).read_bytes()
    for out in (
        index,
        fake.rest("GET", "/lesion-ai/ui/app.js"),
        fake.rest("GET", "/lesion-ai/ui/models.js"),
        fake.rest("GET", "/lesion-ai/ui/nothing.js"),
    ):
        assert out.headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
        assert out.headers["X-Content-Type-Options"] == "nosniff"
        assert out.headers["Referrer-Policy"] == "no-referrer"
    policy = dict(part.strip().split(" ", 1) for part in CONTENT_SECURITY_POLICY.split(";"))
    assert policy["script-src"] == "'self'" and "unsafe" not in CONTENT_SECURITY_POLICY
    assert (policy["object-src"], policy["frame-ancestors"], policy["base-uri"]) == ("'none'",) * 3
    assert policy["default-src"] in ("'self'", "'none'")
    assert fake.rest("GET", "/lesion-ai/ui/nothing.js").status == 404
    post = fake.rest("POST", "/lesion-ai/ui/index.html", headers=admin())
    assert (post.status, post.allowed) == (405, "GET")
    # The admin API's routes next to it are not the page's.
    assert fake.rest("GET", "/lesion-ai/uix").status == 404


@pytest.mark.parametrize(
    "path",
    [
        "/../rules.yaml",
        "/..%2f..%2frules.yaml",
        "/%2e%2e/%2e%2e/queue.sqlite",
        "/../../data/rules.yaml",
        "/..",
        "/.hidden.js",
        "//etc/passwd",
        "/%2fetc%2fpasswd",
        "/sub/app.js",
        "/app.js%00.png",
        "/APP.JS",
        "/..\\..\\rules.yaml",
    ],
)
def test_paths_that_leave_the_pages_folder_are_refused(
    node: tuple[FakeOrthanc, NodePlugin], path: str
) -> None:
    fake, plugin = node
    (plugin.settings.home / "secret.js").write_text("SECRET-CONTENT")
    out = fake.rest("GET", f"/lesion-ai/ui{path}")
    assert out.status in (400, 404), (path, out.status)
    assert b"SECRET" not in out.body and b"version: 1" not in out.body
    assert out.headers["X-Content-Type-Options"] == "nosniff"


def test_the_page_has_no_inline_script_or_handler_and_builds_no_html_from_data() -> None:
    class Scan(HTMLParser):
        def __init__(self) -> None:
            super().__init__()
            self.scripts: list[dict[str, str | None]] = []
            self.inline: list[str] = []
            self.handlers: list[str] = []
            self._in_script = False

        def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
            self.handlers += [
                f"{tag} {name}" for name, _ in attrs if name.startswith("on") or name == "style"
            ]
            if tag == "script":
                self.scripts.append(dict(attrs))
                self._in_script = True

        def handle_endtag(self, tag: str) -> None:
            self._in_script = self._in_script and tag != "script"

        def handle_data(self, data: str) -> None:
            if self._in_script and data.strip():
                self.inline.append(data)

    scan = Scan()
    scan.feed((UI_DIR / "index.html").read_text(encoding="utf-8"))
    assert [s.get("src") for s in scan.scripts] == [f"{UI_BASE}app.js", f"{UI_BASE}models.js"]
    assert all("defer" in s for s in scan.scripts)  # in order, after the page is parsed
    assert scan.inline == [] and scan.handlers == []
    unsafe = re.compile(
        r"\.(innerHTML|outerHTML)\s*=|insertAdjacentHTML|document\.write|\beval\(|new Function|"
        r"setTimeout\(\s*[\"'`]|createContextualFragment|DOMParser"
    )
    for name in ("app.js", "models.js"):
        code = (UI_DIR / name).read_text(encoding="utf-8")
        assert not unsafe.search(code), name
        assert "textContent" in code, name
        assert "Patient" not in code, name  # no patient data on the page
    app = (UI_DIR / "app.js").read_text(encoding="utf-8")
    assert "X-Lesion-AI-Request" in app
    # models.js sends every request through app.js's api(), which adds the CSRF header.
    models = (UI_DIR / "models.js").read_text(encoding="utf-8")
    assert "fetch(" not in models and "XMLHttpRequest" not in models


def test_missing_files_are_a_clear_error(tmp_path: Path) -> None:
    empty = UiFiles(tmp_path)
    out = empty.answer("GET", "")
    assert out.status == 503 and b"missing" in out.body
    (tmp_path / "index.html").write_text("<!doctype html>")
    (tmp_path / "Evil.JS").write_text("x")
    assert UiFiles(tmp_path).files().keys() == {"index.html"}


def test_the_pages_files_are_package_data() -> None:
    toml = (REPO / "pyproject.toml").read_text(encoding="utf-8")
    assert '"data/ui/*"' in toml
    assert {"index.html", "app.js", "models.js", "app.css"} <= UiFiles().files().keys()


# -- CSRF ---------------------------------------------------------------------------------------------------
def test_state_changing_requests_need_the_csrf_header(node: tuple[FakeOrthanc, NodePlugin]) -> None:
    fake, plugin = node
    study = fake.add_study(series=PROSTATE)
    text = plugin.settings.rules.read_text()
    for method, path, body in (
        ("POST", f"/lesion-ai/studies/{study}/process", b"{}"),
        ("PUT", "/lesion-ai/rules", _rules("other").encode()),
        ("POST", "/lesion-ai/rules/validate", _rules("other").encode()),
        ("POST", "/lesion-ai/rules/test", json.dumps({"study": study}).encode()),
        ("POST", "/lesion-ai/jobs/1/retry", b""),
        ("POST", "/lesion-ai/rules/history/1/restore", b""),
        ("DELETE", "/lesion-ai/jobs", b""),
        ("POST", "/lesion-ai/no-such-route", b""),
    ):
        for headers in (_auth("mallory"), {**_auth("mallory"), CSRF_HEADER: "0"}, {"X-Requested-With": "x"}):
            out = fake.rest(method, path, body, headers=headers)
            assert out.status == 403, (method, path, out.status)
            assert f"{CSRF_HEADER}: {CSRF_VALUE}" in out.json()["error"]
    assert plugin.queue.list() == [] and plugin.settings.rules.read_text() == text
    # GET needs nothing; the header's name is case-insensitive.
    assert fake.rest("GET", "/lesion-ai/health").status == 200
    out = fake.rest("POST", f"/lesion-ai/studies/{study}/process", headers={"x-lesion-ai-request": "1"})
    assert out.status == 200 and out.json()["message"] == "queued"
    assert csrf_refusal("get", {}) is None and csrf_refusal("PATCH", {})[0] == 403  # type: ignore[index]


# -- jobs -----------------------------------------------------------------------------------------------
def _failed_job(fake: FakeOrthanc, plugin: NodePlugin, error: str = "boom") -> tuple[str, int]:
    study = fake.add_study(series=PROSTATE)
    [enqueued] = plugin.enqueue_study(study)
    assert enqueued.id is not None
    claimed = plugin.queue.claim("w1")
    assert claimed is not None and claimed.id == enqueued.id
    assert plugin.queue.fail(claimed.id, "w1", error, transient=False) is JobState.FAILED
    return study, enqueued.id


def test_a_failed_job_is_retried_with_its_attempts_reset_and_recorded(
    node: tuple[FakeOrthanc, NodePlugin],
) -> None:
    fake, plugin = node
    _, job_id = _failed_job(fake, plugin, "the PACS refused the association")
    out = fake.rest("POST", f"/lesion-ai/jobs/{job_id}/retry", headers=admin("bob"))
    assert out.status == 200, out.body
    assert out.json()["message"] == "queued again"
    job = plugin.queue.get(job_id)
    assert job is not None
    assert (job.state, job.attempts, job.finished_at) == (JobState.QUEUED, 0, None)
    assert job.error is not None and job.error.startswith("retry requested by bob at ")
    assert job.error.endswith("last error: the PACS refused the association")
    assert plugin.queue.claim("w2") is not None  # claimable at once
    again = fake.rest("POST", f"/lesion-ai/jobs/{job_id}/retry", headers=admin())
    assert again.status == 409 and "only a failed job" in again.json()["error"]
    assert fake.rest("POST", "/lesion-ai/jobs/999/retry", headers=admin()).status == 404
    assert fake.rest("POST", f"/lesion-ai/jobs/{'9' * 25}/retry", headers=admin()).status == 404
    assert fake.rest("GET", f"/lesion-ai/jobs/{job_id}/retry").status == 405


def test_a_superseded_job_is_not_retried(node: tuple[FakeOrthanc, NodePlugin]) -> None:
    fake, plugin = node
    study = fake.add_study(series=PROSTATE)
    [enqueued] = plugin.enqueue_study(study)
    assert enqueued.id is not None and plugin.queue.supersede(enqueued.id, 77)
    out = fake.rest("POST", f"/lesion-ai/jobs/{enqueued.id}/retry", headers=admin())
    assert out.status == 409 and "superseded by job 77" in out.json()["error"]
    assert f"/lesion-ai/studies/{study}/process" in out.json()["error"]


def test_a_withdrawn_job_is_not_retried(node: tuple[FakeOrthanc, NodePlugin]) -> None:
    """The node queues a withdrawn job again itself when it judges the study again."""
    fake, plugin = node
    study = fake.add_study(series=PROSTATE)
    [enqueued] = plugin.enqueue_study(study)
    assert enqueued.id is not None and plugin.queue.claim("w") is not None
    plugin.queue.fail(
        enqueued.id, "w", f"{WITHDRAWN} the study changed while it was analysed", transient=False
    )
    out = fake.rest("POST", f"/lesion-ai/jobs/{enqueued.id}/retry", headers=admin())
    assert out.status == 409 and "withdrawn: the study changed" in out.json()["error"]


def test_queue_retry_only_takes_failed_jobs(tmp_path: Path) -> None:
    from orthanc_plugin.jobqueue import NewJob

    queue = open_queue(sqlite_url(tmp_path / "q.sqlite"), QueuePolicy(60, 2, 0, 0))
    try:
        job_id, _ = queue.enqueue(NewJob("k", "s", "r", "m"))
        assert not queue.retry(job_id, "note")  # queued
        claimed = queue.claim("w")
        assert claimed is not None and queue.set_progress(job_id, "w", {"stored": ["a"]})
        assert queue.fail(job_id, "w", "bad", transient=False) is JobState.FAILED
        assert queue.retry(job_id, "retry requested by x")
        job = queue.get(job_id)
        assert job is not None and job.state is JobState.QUEUED and job.attempts == 0
        assert job.progress == {"stored": ["a"]}  # what was done stays done
        assert job.error == "retry requested by x; last error: bad"
        assert not queue.retry(12345, "note")
    finally:
        queue.close()


def test_jobs_are_filtered_by_state_study_and_rule_and_paged(node: tuple[FakeOrthanc, NodePlugin]) -> None:
    fake, plugin = node
    plugin.replace_rules(
        plugin.rules_from_text(
            _rules("first").replace("    match:", "    continue: true\n    match:")
            + _rules("second").split("rules:\n", 1)[1],
            "test",
        )
    )
    studies = [fake.add_study(series=PROSTATE) for _ in range(3)]
    for study in studies:
        assert len(plugin.enqueue_study(study)) == 2
    listed = fake.rest("GET", "/lesion-ai/jobs", get={"limit": "4"}).json()
    assert len(listed["jobs"]) == 4 and listed["has_more"] and listed["offset"] == 0
    rest = fake.rest("GET", "/lesion-ai/jobs", get={"limit": "4", "offset": "4"}).json()
    assert len(rest["jobs"]) == 2 and not rest["has_more"]
    assert {j["id"] for j in listed["jobs"]} | {j["id"] for j in rest["jobs"]} == {
        j.id for j in plugin.queue.list()
    }
    second = fake.rest("GET", "/lesion-ai/jobs", get={"rule": "second", "limit": "2"}).json()
    assert [j["rule"] for j in second["jobs"]] == ["second", "second"] and second["has_more"]
    page2 = fake.rest("GET", "/lesion-ai/jobs", get={"rule": "second", "limit": "2", "offset": "2"}).json()
    assert len(page2["jobs"]) == 1 and not page2["has_more"]
    uid = fake.studies[studies[1]].tags["StudyInstanceUID"]
    by_uid = fake.rest("GET", "/lesion-ai/jobs", get={"study": uid}).json()["jobs"]
    by_id = fake.rest("GET", "/lesion-ai/jobs", get={"study": studies[1]}).json()["jobs"]
    assert {j["study"] for j in by_uid} == {studies[1]} and len(by_uid) == 2
    assert [j["id"] for j in by_uid] == [j["id"] for j in by_id]
    assert all(j["study_uid"] == uid for j in by_uid)
    none = fake.rest("GET", "/lesion-ai/jobs", get={"rule": "nope", "state": "queued"}).json()
    assert none["jobs"] == [] and not none["has_more"]
    assert fake.rest("GET", "/lesion-ai/jobs", get={"limit": "x"}).status == 400


def test_a_jobs_details_name_its_study(node: tuple[FakeOrthanc, NodePlugin]) -> None:
    fake, plugin = node
    study = fake.add_study(series=PROSTATE, description="<script>alert(1)</script>")
    [enqueued] = plugin.enqueue_study(study)
    shown = fake.rest("GET", f"/lesion-ai/jobs/{enqueued.id}").json()
    assert shown["study_uid"] == fake.studies[study].tags["StudyInstanceUID"]
    assert shown["study_description"] == "<script>alert(1)</script>" and shown["study_exists"] is True
    assert len(shown["payload"]["series"]) == 2
    del fake.studies[study]
    gone = fake.rest("GET", f"/lesion-ai/jobs/{enqueued.id}").json()
    assert (gone["study_description"], gone["study_exists"]) == (None, False)


def test_studies_are_listed_newest_first_without_patient_data(node: tuple[FakeOrthanc, NodePlugin]) -> None:
    fake, _ = node
    ids = [fake.add_study(series=PROSTATE, description=f"MR {n}") for n in range(5)]
    out = fake.rest("GET", "/lesion-ai/studies", get={"limit": "3"})
    listed = out.json()
    assert [s["id"] for s in listed["studies"]] == ids[::-1][:3] and listed["total"] == 5
    assert listed["studies"][0]["description"] == "MR 4" and listed["studies"][0]["series"] == 2
    assert b"Doe" not in out.body and b"P1" not in out.body and b"Patient" not in out.body


def test_model_card_route_and_health(node: tuple[FakeOrthanc, NodePlugin]) -> None:
    fake, _ = node
    health = fake.rest("GET", "/lesion-ai/health").json()
    card = fake.rest("GET", "/lesion-ai/model")
    assert card.status == 200 and card.json()["format"] == "lesion-ai-model"
    assert health["model_card"]["name"] == card.json()["name"]
    assert health["model_card"]["version"] == card.json()["version"]
    assert health["model_card"]["url"] == "/lesion-ai/model"


def test_no_model_card_is_a_404(tmp_path: Path) -> None:
    settings = node_settings(tmp_path, model=str(tmp_path / "no-model"), processor=None, catch_up="none")
    fake = FakeOrthanc({"LesionAI": settings.to_section()})
    plugin = NodePlugin(fake, settings)
    plugin.install()
    try:
        assert fake.rest("GET", "/lesion-ai/model").status == 404
        assert fake.rest("GET", "/lesion-ai/health").json()["model_card"] is None
    finally:
        plugin.stop()


# -- rules ----------------------------------------------------------------------------------------------
def test_validate_names_line_and_field_and_applies_nothing(node: tuple[FakeOrthanc, NodePlugin]) -> None:
    fake, plugin = node
    before = plugin.settings.rules.read_text()
    bad = _rules("x").replace("priority: 0", "priorty: 0")
    out = fake.rest("POST", "/lesion-ai/rules/validate", bad.encode(), headers=admin())
    assert out.status == 400
    assert out.json()["line"] == 4 and out.json()["field"] == "rules[0].priorty"
    assert "unknown field" in out.json()["error"]
    unknown = _rules("x", destinations="{modalities: [nowhere]}")
    out = fake.rest("POST", "/lesion-ai/rules/validate", unknown.encode(), headers=admin())
    assert out.status == 400 and out.json()["field"] == "rules[0].destinations.modalities"
    assert out.json()["line"] == 3 and "'nowhere' is not defined in Orthanc" in out.json()["error"]
    out = fake.rest("POST", "/lesion-ai/rules/validate", _rules("fine").encode(), headers=admin())
    assert out.status == 200 and out.json()["valid"] is True
    assert [r["name"] for r in out.json()["rules"]] == ["fine"]
    syntax = fake.rest("POST", "/lesion-ai/rules/validate", b"version: 1\nrules: [\n", headers=admin())
    assert syntax.status == 400 and syntax.json()["line"] == 3  # where the YAML ends unclosed
    assert plugin.settings.rules.read_text() == before
    assert plugin.current_rules().text == before
    assert fake.rest("POST", "/lesion-ai/rules/validate", b"\xff\xfe", headers=admin()).status == 400


def test_error_location() -> None:
    assert error_location("PUT /lesion-ai/rules, line 4, field rules[0].priorty: unknown field") == {
        "line": 4,
        "field": "rules[0].priorty",
    }
    assert error_location("x, line 1, field (top level): must be a mapping") == {"line": 1, "field": None}
    assert error_location('not valid YAML: ... in "<unicode string>", line 2, column 9:') == {
        "line": 2,
        "field": None,
    }
    assert error_location("no location") == {"line": None, "field": None}


def test_saving_keeps_the_last_ten_versions_with_who_and_when(node: tuple[FakeOrthanc, NodePlugin]) -> None:
    fake, plugin = node
    original = plugin.current_rules().text
    texts = [_rules(f"rule-{n}", priority=n) for n in range(12)]
    for n, text in enumerate(texts):
        out = fake.rest("PUT", "/lesion-ai/rules", text.encode(), headers=admin(f"user{n}"))
        assert out.status == 200, out.body
    history = fake.rest("GET", "/lesion-ai/rules/history").json()
    versions = history["versions"]
    assert history["keep"] == KEEP == 10 and len(versions) == 10
    # Newest first: version 12 is texts[10] (replaced by the 12th save); versions 1 and 2 were deleted.
    assert [v["number"] for v in versions] == list(range(12, 2, -1))
    assert versions[0]["text"] == texts[10]
    assert (versions[0]["saved_by"], versions[0]["replaced_by"]) == ("user10", "user11")
    assert versions[0]["saved_at"] <= versions[0]["replaced_at"]
    assert versions[-1]["text"] == texts[1]
    assert history["current"]["saved_by"] == "user11"
    assert (
        sorted(p.name for p in (plugin.settings.home / "rules-history").glob("0*.json"))[0] == "000003.json"
    )
    assert "secret" not in "".join(p.read_text() for p in (plugin.settings.home / "rules-history").iterdir())
    rules = fake.rest("GET", "/lesion-ai/rules").json()
    assert rules["text"] == texts[11] and rules["saved_by"] == "user11"
    assert original not in [v["text"] for v in versions]

    # Restore version 5 (texts[3]): in force and saved; what it replaced is kept as version 13.
    out = fake.rest("POST", "/lesion-ai/rules/history/5/restore", headers=admin("carol"))
    assert out.status == 200 and out.json()["restored"] == 5
    assert plugin.current_rules().text == texts[3] == plugin.settings.rules.read_text()
    after = fake.rest("GET", "/lesion-ai/rules/history").json()
    assert after["versions"][0]["number"] == 13 and after["versions"][0]["text"] == texts[11]
    assert after["versions"][0]["replaced_by"] == "carol" and len(after["versions"]) == 10
    assert after["current"]["saved_by"] == "carol"
    missing = fake.rest("POST", "/lesion-ai/rules/history/1/restore", headers=admin())
    assert missing.status == 404 and "kept: 13, 12" in missing.json()["error"]


def test_a_version_that_no_longer_validates_is_not_restored(node: tuple[FakeOrthanc, NodePlugin]) -> None:
    fake, plugin = node
    with_pacs = _rules("to-pacs", destinations="{modalities: [pacs]}")
    assert fake.rest("PUT", "/lesion-ai/rules", with_pacs.encode(), headers=admin()).status == 200
    assert fake.rest("PUT", "/lesion-ai/rules", _rules("plain").encode(), headers=admin()).status == 200
    fake.modalities = []  # the PACS was removed from Orthanc's configuration
    out = fake.rest("POST", "/lesion-ai/rules/history/2/restore", headers=admin())
    assert out.status == 400 and "'pacs' is not defined in Orthanc" in out.json()["error"]
    assert plugin.current_rules().rules[0].name == "plain"
    assert len(fake.rest("GET", "/lesion-ai/rules/history").json()["versions"]) == 2


def test_an_unchanged_save_keeps_no_version(tmp_path: Path) -> None:
    history = RulesHistory(tmp_path / "h")
    assert history.record("a", "a", "u", now=1.0) is None and history.versions() == []
    assert history.author("a") == ("u", 1.0) and history.author("b") == (None, None)
    kept = history.record("a", "b", "v", now=2.0)
    assert kept is not None and (kept.number, kept.saved_by, kept.replaced_by) == (1, "u", "v")
    (tmp_path / "h" / "000002.json").write_text("{not json")
    assert [v.number for v in history.versions()] == [1]
    with pytest.raises(ValueError, match="at least 1"):
        RulesHistory(tmp_path, keep=0)


def test_the_history_cannot_be_written_and_the_rules_stay(node: tuple[FakeOrthanc, NodePlugin]) -> None:
    fake, plugin = node
    (plugin.settings.home / "rules-history").write_text("a file where the folder should be")
    before = plugin.current_rules().text
    out = fake.rest("PUT", "/lesion-ai/rules", _rules("new").encode(), headers=admin())
    assert out.status == 500 and "were not changed" in out.json()["error"]
    assert plugin.current_rules().text == before == plugin.settings.rules.read_text()


@pytest.mark.parametrize(
    ("headers", "user"),
    [
        (_auth("alice"), "alice"),
        ({"authorization": "Basic " + base64.b64encode(b"bob:pa:ss").decode()}, "bob"),
        ({"Authorization": "Bearer abc"}, None),
        ({"Authorization": "Basic !!!"}, None),
        ({}, None),
        ({"Authorization": "Basic " + base64.b64encode(b"ev\x1bil:x").decode()}, "ev?il"),
    ],
)
def test_request_user(headers: dict[str, str], user: str | None) -> None:
    assert request_user(headers) == user


def test_the_rules_test_route_reports_rule_errors_with_their_line(
    node: tuple[FakeOrthanc, NodePlugin],
) -> None:
    fake, _ = node
    study = fake.add_study(series=PROSTATE)
    bad = _rules("x").replace("priority: 0", "priorty: 0")
    out = fake.rest(
        "POST", "/lesion-ai/rules/test", json.dumps({"study": study, "rules": bad}).encode(), headers=admin()
    )
    assert out.status == 400 and (out.json()["line"], out.json()["field"]) == (4, "rules[0].priorty")
