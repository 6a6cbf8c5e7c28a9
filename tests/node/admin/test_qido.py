"""The viewer's QIDO-RS route: OHIF's comma-separated includefield split for Orthanc's DICOMweb plugin, every
other search checked and passed on, hostile searches refused (unit, fake Orthanc, and a real Orthanc)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest

from orthanc_plugin.admin.qido import MAX_QUERY_CHARS, QIDO_ROOT, QidoError, qido_uri
from orthanc_plugin.admin.viewer import app_config
from tests.support.fake_orthanc import fake_node

#: What OHIF 3.13 sends for its study list, as Orthanc gives it to a plugin (values still percent-encoded).
OHIF_STUDY_SEARCH = {
    "limit": "101",
    "offset": "0",
    "fuzzymatching": "false",
    "includefield": "00081030%2C00080060",
}


def test_ohifs_includefield_is_split_into_repeated_parameters() -> None:
    uri = qido_uri("studies", OHIF_STUDY_SEARCH)
    parts = urlsplit(uri)
    assert parts.path == "/dicom-web/studies"
    assert parse_qsl(parts.query) == [
        ("limit", "101"),
        ("offset", "0"),
        ("fuzzymatching", "false"),
        ("includefield", "00081030"),
        ("includefield", "00080060"),
    ]


@pytest.mark.parametrize(
    ("resource", "query", "expected"),
    [
        (
            "/studies/1.2.3/series",
            {"includefield": "SeriesDescription, 00200011"},
            "/dicom-web/studies/1.2.3/series",
        ),
        ("studies/1.2/series/1.2.3/instances", {}, "/dicom-web/studies/1.2/series/1.2.3/instances"),
        ("series", {"PatientName": "Doe^J*"}, "/dicom-web/series"),
        ("instances", {"includefield": "all"}, "/dicom-web/instances"),
    ],
)
def test_other_searches_pass(resource: str, query: dict[str, str], expected: str) -> None:
    uri = qido_uri(resource, query)
    assert urlsplit(uri).path == expected
    values = parse_qsl(urlsplit(uri).query)
    for name, value in query.items():
        if name == "includefield":
            assert [v for n, v in values if n == name] == [v.strip() for v in value.split(",")]
        else:
            assert (name, value) in values


@pytest.mark.parametrize(
    ("resource", "query", "message"),
    [
        ("studies/1.2.3/metadata", {}, "not a QIDO-RS search"),
        ("studies/../../tools/reset", {}, "not a QIDO-RS search"),
        ("studies/1.2.3/series/../../../patients", {}, "not a QIDO-RS search"),
        ("", {}, "not a QIDO-RS search"),
        ("studies/1." + "1" * 80 + "/series", {}, "not a QIDO-RS search"),
        ("studies", {"includefield": "00081030,../../x"}, "names no attribute"),
        ("studies", {"includefield": "00081030,"}, "names no attribute"),
        ("studies", {"bad name&x": "1"}, "invalid query parameter name"),
        ("studies", {"PatientID": "x" * (MAX_QUERY_CHARS + 1)}, "longer than"),
    ],
)
def test_hostile_searches_are_refused(resource: str, query: dict[str, str], message: str) -> None:
    with pytest.raises(QidoError, match=message):
        qido_uri(resource, query)


def test_values_are_decoded_once_and_encoded_again() -> None:
    uri = qido_uri("studies", {"PatientName": "a%26includefield%3Dx%23y", "PatientID": "ProstateX%2D0001"})
    assert parse_qsl(urlsplit(uri).query) == [
        ("PatientName", "a&includefield=x#y"),
        ("PatientID", "ProstateX-0001"),
    ]
    assert "#" not in uri and uri.count("&") == 1
    with pytest.raises(QidoError, match="names no attribute"):
        qido_uri("studies", {"includefield": "00081030%2C..%2Fx"})


def test_the_node_viewer_searches_through_the_route() -> None:
    config = app_config(qido_root=QIDO_ROOT)
    assert f'"qidoRoot": "{QIDO_ROOT}"' in config
    assert '"wadoRoot": "/dicom-web"' in config
    other = app_config("/x/", "https://pacs.example.org/dicom-web")
    assert '"qidoRoot": "https://pacs.example.org/dicom-web"' in other


def test_the_plugin_passes_the_split_search_to_orthancs_dicomweb(tmp_path: Path) -> None:
    with fake_node(tmp_path) as (fake, _plugin):
        asked: list[str] = []

        def dicomweb(uri: str) -> bytes:
            asked.append(uri)
            return json.dumps([{"00081030": {"vr": "LO", "Value": ["MR prostate"]}}]).encode()

        fake.RestApiGetAfterPlugins = dicomweb  # type: ignore[method-assign]
        output = fake.rest("GET", "/lesion-ai/qido/studies", get=dict(OHIF_STUDY_SEARCH))
        assert output.status == 200 and output.mime == "application/dicom+json"
        assert output.json()[0]["00081030"]["Value"] == ["MR prostate"]
        (uri,) = asked
        assert [v for n, v in parse_qsl(urlsplit(uri).query) if n == "includefield"] == [
            "00081030",
            "00080060",
        ]

        refused = fake.rest("GET", "/lesion-ai/qido/studies/1.2/metadata")
        assert refused.status == 400 and "not a QIDO-RS search" in refused.json()["error"]
        assert fake.rest("POST", "/lesion-ai/qido/studies").status == 405
        assert len(asked) == 1  # nothing refused reached Orthanc

        def failing(uri: str) -> bytes:
            from tests.support.fake_orthanc import OrthancException

            raise OrthancException(17, "Unknown resource")

        fake.RestApiGetAfterPlugins = failing  # type: ignore[method-assign]
        answer: Any = fake.rest("GET", "/lesion-ai/qido/series")
        assert answer.status == 400 and "DICOMweb plugin refused" in answer.json()["error"]
