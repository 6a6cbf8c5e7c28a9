"""The OHIF viewer's files as the node serves them (no Orthanc, no browser): paths that cannot leave the
viewer's folder, the single-page app's fallback, content types and caching, the rewriting for the
``/lesion-ai/viewer/`` sub-path, the generated configuration, a viewer turned off or not installed, and the
plugin's route; the settings and the environment variable that turn it off; setup's pinned version."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from lesion_engine.errors import ConfigError
from orthanc_plugin.admin.viewer import (
    BASE_URL,
    VIEWER_VERSION,
    ViewerFiles,
    app_config,
    default_viewer_dir,
    viewer_files,
)
from orthanc_plugin.launch import NodeOptions, write_configuration
from orthanc_plugin.node.settings import NodeSettings
from orthanc_plugin.plugin import NodePlugin
from tests.paths import REPO
from tests.support.fake_orthanc import FakeOrthanc, FakeOutput, node_settings

HASHED_JS = "app.bundle.0f6159c501addfe9.js"
WORKER_JS = "compute.bundle.0fc3a3ee85296cf2.js"
WASM = "0ddf166f7a343eda.wasm"

# What OHIF's build for the server's root looks like, in the places that name the root.
INDEX = (
    '<!doctype html><html><head><script>window.PUBLIC_URL="/"</script>'
    '<link rel="manifest" href="/manifest.json"><link rel="icon" href="/assets/favicon.ico">'
    '<script src="/app-config.js"></script><script>window.PUBLIC_URL="/"</script>'
    f'<script defer src="/{HASHED_JS}"></script><link href="/app.bundle.css" rel="stylesheet">'
    '<a href="//cdn.example.org/x.js">x</a></head><body><div id="root"></div></body></html>'
)
BUNDLE = '/******/ (() => {\n/******/ \t\t__webpack_require__.p = "/";\n/******/ })();\nconst u = "/a";\n'
CSS = "@font-face{src:url(/a34f9d1faa5f3315.woff2) format('woff2')}.x{background:url(//cdn/y.png)}"
MANIFEST = '{\n  "icons": [\n    {\n      "src": "/assets/android-chrome-36x36.png"\n    }\n  ]\n}\n'


@pytest.fixture
def dist(tmp_path: Path) -> Path:
    """A small stand-in of OHIF's dist folder."""
    root = tmp_path / "share" / "lesion-ai-viewer" / VIEWER_VERSION
    (root / "assets").mkdir(parents=True)
    (root / "index.html").write_text(INDEX)
    (root / HASHED_JS).write_text(BUNDLE)
    (root / WORKER_JS).write_text(BUNDLE)
    (root / "app.bundle.css").write_text(CSS)
    (root / "manifest.json").write_text(MANIFEST)
    (root / "app-config.js").write_text("window.config = {dataSources: ['the package default']};")
    (root / WASM).write_bytes(b"\0asm\1\0\0\0")
    (root / "a34f9d1faa5f3315.woff2").write_bytes(b"wOF2")
    (root / "assets" / "favicon.ico").write_bytes(b"\0\0\1\0")
    (root / "assets" / "logo.svg").write_text("<svg/>")
    (tmp_path / "secret.txt").write_text("outside the viewer")
    return root


def _config(body: bytes) -> dict[str, Any]:
    text = body.decode()
    match = re.search(r"window\.config = (\{.*\});\s*$", text, re.S)
    assert match, text
    config: dict[str, Any] = json.loads(match.group(1))
    return config


def test_files_are_served_with_their_content_types_and_caching(dist: Path) -> None:
    viewer = ViewerFiles(dist)
    cases = {
        WASM: "application/wasm",
        HASHED_JS: "text/javascript; charset=utf-8",
        "app.bundle.css": "text/css; charset=utf-8",
        "index.html": "text/html; charset=utf-8",
        "manifest.json": "application/json",
        "assets/favicon.ico": "image/x-icon",
        "assets/logo.svg": "image/svg+xml",
        "a34f9d1faa5f3315.woff2": "font/woff2",
    }
    for path, mime in cases.items():
        answer = viewer.answer("GET", path)
        assert (answer.status, answer.mime) == (200, mime), path
        assert answer.headers["X-Content-Type-Options"] == "nosniff"
        # Not to be framed by another site; everything from the node only.
        assert answer.headers["X-Frame-Options"] == "SAMEORIGIN"
        policy = answer.headers["Content-Security-Policy"]
        assert "frame-ancestors 'self'" in policy and "object-src 'none'" in policy
        assert "default-src 'self'" in policy and "connect-src 'self'" in policy
    assert viewer.answer("GET", WASM).body == (dist / WASM).read_bytes()
    # Content-hashed names never change: cached; the rest is revalidated.
    assert "immutable" in viewer.answer("GET", HASHED_JS).headers["Cache-Control"]
    assert "immutable" in viewer.answer("GET", WASM).headers["Cache-Control"]
    assert viewer.answer("GET", "index.html").headers["Cache-Control"] == "no-cache"
    assert viewer.answer("GET", "app.bundle.css").headers["Cache-Control"] == "no-cache"


def test_the_build_for_the_root_is_rewritten_for_the_sub_path(dist: Path) -> None:
    viewer = ViewerFiles(dist)
    index = viewer.answer("GET", "index.html").body.decode()
    assert index.count(f'window.PUBLIC_URL="{BASE_URL}"') == 2
    for url in ("manifest.json", "assets/favicon.ico", "app-config.js", HASHED_JS, "app.bundle.css"):
        assert f'="{BASE_URL}{url}"' in index, url
    assert not re.search(r'="/(?!/)', index.replace(f'="{BASE_URL}', ""))
    assert 'href="//cdn.example.org/x.js"' in index  # protocol-relative URLs are left alone
    for bundle in (HASHED_JS, WORKER_JS):
        text = viewer.answer("GET", bundle).body.decode()
        assert f'__webpack_require__.p = "{BASE_URL}";' in text
        assert 'const u = "/a";' in text
    css = viewer.answer("GET", "app.bundle.css").body.decode()
    assert f"url({BASE_URL}a34f9d1faa5f3315.woff2)" in css and "url(//cdn/y.png)" in css
    manifest = json.loads(viewer.answer("GET", "manifest.json").body)
    assert manifest["icons"][0]["src"] == f"{BASE_URL}assets/android-chrome-36x36.png"


def test_routes_of_the_app_fall_back_to_index_html_and_unknown_assets_are_404(dist: Path) -> None:
    viewer = ViewerFiles(dist)
    index = viewer.answer("GET", "index.html").body
    for route in ("", "viewer", "viewer/", "segmentation", "assets", "viewer/dicomweb", "etc/passwd"):
        answer = viewer.answer("GET", route)
        assert (answer.status, answer.body) == (200, index), route
        assert answer.mime.startswith("text/html")
    for missing in ("missing.js", "assets/missing.png", "ort/ort-wasm.wasm", "x.bundle.0123456789abcdef.js"):
        answer = viewer.answer("GET", missing)
        assert answer.status == 404, missing
        assert missing in answer.body.decode()


@pytest.mark.parametrize(
    "path",
    [
        "..",
        "../secret.txt",
        "assets/../../secret.txt",
        "%2e%2e/secret.txt",
        "%2E%2E%2Fsecret.txt",
        "..%2fsecret.txt",
        "/etc/passwd",
        "%2fetc%2fpasswd",
        "%252e%252e/secret.txt",
        "assets/./logo.svg",
        ".hidden",
        "assets//logo.svg",
        "..\\secret.txt",
        "a\0b",
        "~/secret.txt",
    ],
)
def test_paths_cannot_leave_the_viewer_folder(dist: Path, path: str) -> None:
    answer = ViewerFiles(dist).answer("GET", path)
    assert answer.status == 400, (path, answer)
    assert b"outside the viewer" not in answer.body
    assert b"bad viewer path" in answer.body


def test_a_symbolic_link_out_of_the_viewer_folder_is_refused(dist: Path) -> None:
    (dist / "escape.txt").symlink_to(dist.parents[2] / "secret.txt")
    (dist / "escape").symlink_to(dist.parents[2])
    viewer = ViewerFiles(dist)
    for path in ("escape.txt", "escape/secret.txt"):
        answer = viewer.answer("GET", path)
        assert answer.status == 400 and b"leaves the viewer's folder" in answer.body, path


def test_app_config_is_generated_for_the_node_s_dicomweb(dist: Path) -> None:
    answer = ViewerFiles(dist).answer("GET", "app-config.js")
    assert (answer.status, answer.mime) == (200, "text/javascript; charset=utf-8")
    assert answer.headers["Cache-Control"] == "no-cache"
    config = _config(answer.body)
    assert b"the package default" not in answer.body
    assert config["routerBasename"] == "/lesion-ai/viewer"
    assert config["disableConfirmationPrompts"] is True
    [source] = config["dataSources"]
    assert source["namespace"] == "@ohif/extension-default.dataSourcesModule.dicomweb"
    assert config["defaultDataSourceName"] == source["sourceName"]
    roots = {source["configuration"][key] for key in ("wadoRoot", "wadoUriRoot")}
    assert roots == {"/dicom-web"}
    assert (
        source["configuration"]["qidoRoot"] == "/lesion-ai/qido"
    )  # includefield split: tests/node/admin/test_qido.py
    assert source["configuration"]["enableStudyLazyLoad"] is False  # its series search: same comma problem
    assert source["configuration"]["imageRendering"] == "wadors"
    assert source["configuration"]["bulkDataURI"] == {"enabled": True}
    other = _config(app_config("/x/", "https://pacs.example.org/dicom-web").encode())
    assert other["routerBasename"] == "/x"
    assert other["dataSources"][0]["configuration"]["qidoRoot"] == "https://pacs.example.org/dicom-web"


def test_bulk_data_uris_written_for_the_request_s_host_are_read_as_same_origin(dist: Path) -> None:
    viewer = ViewerFiles(dist)
    for host in ("127.0.0.1:8142", "node.example.org", "[::1]:8142"):
        config = _config(viewer.answer("GET", "app-config.js", host).body)
        bulk = config["dataSources"][0]["configuration"]["bulkDataURI"]
        assert bulk == {
            "enabled": True,
            "startsWith": f"http://{host}/dicom-web/",
            "prefixWith": "/dicom-web/",
        }
    for strange in ('evil";alert(1);"', "a b", "x" * 300, "host/path", ""):
        config = _config(viewer.answer("GET", "app-config.js", strange).body)
        assert config["dataSources"][0]["configuration"]["bulkDataURI"] == {"enabled": True}, strange


def test_a_viewer_turned_off_answers_404_saying_how_to_turn_it_on(dist: Path) -> None:
    answer = ViewerFiles(dist, enabled=False).answer("GET", "index.html")
    assert answer.status == 404
    text = answer.body.decode()
    assert "turned off" in text and "Viewer: true" in text and "LESION_AI_VIEWER" in text


def test_a_missing_viewer_answers_503_saying_run_make_setup(tmp_path: Path) -> None:
    for root in (tmp_path / "nothing-here", None):
        for path in ("", "viewer", "app-config.js", HASHED_JS):
            answer = ViewerFiles(root).answer("GET", path)
            assert answer.status == 503, (root, path)
            assert "make setup" in answer.body.decode()
    assert not ViewerFiles(tmp_path).installed()


def test_only_get_is_served(dist: Path) -> None:
    answer = ViewerFiles(dist).answer("POST", "index.html")
    assert answer.status == 405 and answer.headers["Allow"] == "GET"


def test_base_url_is_validated() -> None:
    with pytest.raises(ValueError, match="must start and end with '/'"):
        ViewerFiles(None, base_url="/lesion-ai/viewer")


# -- settings, launch, setup ------------------------------------------------------------------------------
def _settings(tmp_path: Path, **changes: Any) -> NodeSettings:
    return node_settings(tmp_path, catch_up="none", **changes)


def test_settings_locate_the_viewer(tmp_path: Path, dist: Path) -> None:
    venv = tmp_path / "venv"
    default = viewer_files(_settings(tmp_path, python=str(venv / "bin" / "python")))
    assert default.root == default_viewer_dir(venv) == venv / "share" / "lesion-ai-viewer" / VIEWER_VERSION
    assert default.enabled
    assert viewer_files(_settings(tmp_path, python="python3")).root is None
    chosen = viewer_files(_settings(tmp_path, viewer_dir=dist, viewer=False))
    assert (chosen.root, chosen.enabled) == (dist, False)
    section = _settings(tmp_path, viewer_dir=dist, viewer=False).to_section()
    assert (section["Viewer"], section["ViewerDir"]) == (False, str(dist))
    again = NodeSettings.from_section(section)
    assert (again.viewer, again.viewer_dir) == (False, dist)


def test_the_viewer_setting_must_be_a_boolean(tmp_path: Path) -> None:
    section = _settings(tmp_path).to_section()
    for bad in ("no", 0, 1, "false"):
        with pytest.raises(ConfigError, match="field Viewer: expected bool"):
            NodeSettings.from_section({**section, "Viewer": bad})
    with pytest.raises(ConfigError, match="field Viewer"):
        _settings(tmp_path, viewer="yes")


def test_lesion_ai_viewer_0_turns_the_viewer_off(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for value, expected in (("0", False), ("1", True), ("", True)):
        monkeypatch.setenv("LESION_AI_VIEWER", value)
        options = NodeOptions(home=tmp_path / f"home-{value or 'unset'}")
        assert options.viewer is expected
        config_path, _, _ = write_configuration(options)
        section = json.loads(config_path.read_text())["LesionAI"]
        assert section["Viewer"] is expected
    monkeypatch.setenv("LESION_AI_VIEWER", "off")
    with pytest.raises(ValueError, match="LESION_AI_VIEWER must be 0 or 1"):
        NodeOptions(home=tmp_path)


def test_setup_installs_the_version_the_node_serves() -> None:
    script = (REPO / "scripts" / "setup.sh").read_text()
    assert f'OHIF_VERSION="{VIEWER_VERSION}"' in script
    assert 'VIEWER_DIR="$VENV/share/lesion-ai-viewer/$OHIF_VERSION"' in script
    assert re.search(r'OHIF_INTEGRITY="sha512-[A-Za-z0-9+/]{86}=="', script)
    assert "npm pack" in script and "npm install" not in script


# -- the plugin's route -----------------------------------------------------------------------------------
class HeaderOutput(FakeOutput):
    """A REST output that also records headers (``SetHttpHeader``)."""

    def __init__(self) -> None:
        super().__init__()
        self.headers: dict[str, str] = {}

    def SetHttpHeader(self, key: str, value: str) -> None:  # noqa: N802 - Orthanc's name
        assert self.status is None, "headers must be set before the answer"
        self.headers[key] = value


def _call(fake: FakeOrthanc, method: str, path: str, headers: dict[str, str] | None = None) -> HeaderOutput:
    output = HeaderOutput()
    for pattern, callback in fake.rest_callbacks:
        if m := pattern.fullmatch(path):
            callback(output, path, method=method, groups=m.groups(), get={}, headers=headers or {})
            return output
    raise AssertionError(f"no REST callback for {path}")


@pytest.mark.parametrize("enabled", [True, False])
def test_the_plugin_serves_the_viewer_under_lesion_ai_viewer(
    tmp_path: Path, dist: Path, enabled: bool
) -> None:
    settings = _settings(tmp_path, viewer_dir=dist, viewer=enabled)
    fake = FakeOrthanc({"LesionAI": settings.to_section()})
    plugin = NodePlugin(fake, settings)
    plugin.install()
    try:
        index = _call(fake, "GET", "/lesion-ai/viewer")  # Orthanc drops a final slash
        config = _call(fake, "GET", "/lesion-ai/viewer/app-config.js", {"host": "node:8142"})
        route = _call(fake, "GET", "/lesion-ai/viewer/viewer")
        wasm = _call(fake, "GET", f"/lesion-ai/viewer/{WASM}")
        bad = _call(fake, "GET", "/lesion-ai/viewer/%2e%2e/secret.txt")
        post = _call(fake, "POST", "/lesion-ai/viewer/index.html")
        health = _call(fake, "GET", "/lesion-ai/health")
        lookalike = _call(fake, "GET", "/lesion-ai/viewers")
    finally:
        plugin.stop()
    assert health.status == 200 and health.json()["status"] in ("ok", "degraded")
    assert lookalike.status == 404 and not lookalike.headers  # the admin API's, not the viewer's
    if not enabled:
        for output in (index, route, wasm, bad):
            assert output.status == 404 and b"turned off" in output.body
        return
    assert (index.status, index.mime) == (200, "text/html; charset=utf-8")
    assert index.body == route.body and f'window.PUBLIC_URL="{BASE_URL}"'.encode() in index.body
    assert index.headers["Cache-Control"] == "no-cache"
    assert b'"startsWith": "http://node:8142/dicom-web/"' in config.body
    assert (wasm.status, wasm.mime, wasm.body) == (200, "application/wasm", (dist / WASM).read_bytes())
    assert "immutable" in wasm.headers["Cache-Control"]
    assert bad.status == 400 and b"outside the viewer" not in bad.body
    assert (post.status, post.allowed) == (405, "GET")
