"""Routing rules: validation errors name the line and the field; matching on study and series
attributes, sender, ranges and networks; the default rules take prostate MR and leave the rest."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest

from lesion_engine.errors import ConfigError
from lesion_engine.results.outputs import Output
from orthanc_plugin.rules import Destinations, RoutingRules, load_rules, parse_rules
from tests.paths import REPO


@dataclass
class Series:
    series_id: str
    attrs: dict[str, str]

    def attribute(self, keyword: str) -> str | None:
        return self.attrs.get(keyword)


@dataclass
class Study:
    attrs: dict[str, str]
    series: list[Series] = field(default_factory=list)

    def study_attribute(self, keyword: str) -> str | None:
        return self.attrs.get(keyword)


def mr(series_id: str, description: str, body: str | None = None, **more: str) -> Series:
    attrs = {
        "Modality": "MR",
        "SeriesDescription": description,
        "RemoteAET": "SCANNER",
        "RemoteIP": "10.0.0.7",
    }
    if body is not None:
        attrs["BodyPartExamined"] = body
    attrs.update(more)
    return Series(series_id, attrs)


@pytest.fixture(scope="module")
def defaults() -> RoutingRules:
    return load_rules(REPO / "orthanc_plugin" / "data" / "rules.yaml")


def names(rules: RoutingRules, study: Study) -> list[tuple[str, list[str]]]:
    return [(m.rule.name, [s.series_id for s in m.series]) for m in rules.evaluate(study)]


def test_default_rules_take_prostate_mr(defaults: RoutingRules) -> None:
    prostatex = Study(
        {"StudyDescription": "MR prostaat kanker detectie WDS_mc MCAPRODETW"},
        [mr("t2", "t2_tse_tra", "PROSTATE"), mr("adc", "ep2d_diff_tra_ADC", "PROSTATE")],
    )
    assert names(defaults, prostatex) == [("prostate-mr", ["t2", "adc"])]
    by_body_part = Study(
        {"StudyDescription": "MRI"}, [mr("t2", "t2 ax", "PROSTATE"), mr("x", "dwi", "PROSTATE")]
    )
    assert names(defaults, by_body_part) == [("prostate-mr", ["t2", "x"])]
    by_protocol = Study({}, [mr("t2", "T2 AX", None, ProtocolName="PROSTATE_MP")])
    assert names(defaults, by_protocol) == [("prostate-mr", ["t2"])]
    unnamed = Study({"StudyDescription": "MRT Becken"}, [mr("t2", "t2_tse_tra"), mr("dwi", "ep2d_diff_b800")])
    assert names(defaults, unnamed) == [("prostate-mr", ["t2", "dwi"])]


def test_default_rules_leave_ct_and_other_mr(defaults: RoutingRules) -> None:
    ct = Study(
        {"StudyDescription": "CT prostate planning"},
        [Series("ct", {"Modality": "CT", "SeriesDescription": "pelvis", "BodyPartExamined": "PELVIS"})],
    )
    brain = Study(
        {"StudyDescription": "MRI BRAIN"}, [mr("t2", "t2_tse_tra", "BRAIN"), mr("dwi", "ep2d_diff", "BRAIN")]
    )
    brain_unlabelled = Study(
        {"StudyDescription": "MR Head"}, [mr("t2", "t2_tse_tra"), mr("dwi", "ep2d_diff")]
    )
    knee = Study({"StudyDescription": "MR KNEE"}, [mr("pd", "pd_tse_sag", "KNEE")])
    t2_only = Study({"StudyDescription": "MR"}, [mr("t2", "t2_tse_tra")])
    for study in (ct, brain, brain_unlabelled, knee, t2_only):
        assert defaults.evaluate(study) == []


RULES = """\
version: 1
rules:
  - name: block-research
    action: ignore
    match:
      calling_aet: {regex: '^RESEARCH'}
  - name: urgent
    priority: 10
    continue: true
    outputs: [sr]
    destinations: {modalities: [pacs], dicomweb: [cloud], peers: [backup]}
    match:
      study: {AccessionNumber: '^URG'}
      series: {Modality: [MR], SeriesNumber: {min: 2, max: 10}}
      remote_ip: {cidr: [10.0.0.0/8, 'fd00::/8']}
  - name: everything-mr
    match:
      - series: {Modality: [MR], SeriesDescription: {not: '(?i)loc'}}
        has_series:
          - {SeriesDescription: '(?i)t2'}
  - name: disabled
    enabled: false
    match: {series: {Modality: [CT]}}
"""


def test_rule_matching() -> None:
    rules = parse_rules(RULES)
    series = [
        mr("loc", "localizer", SeriesNumber="1"),
        mr("t2", "t2", SeriesNumber="3"),
        mr("dwi", "dwi", SeriesNumber="12"),
    ]
    urgent = Study({"AccessionNumber": "URG123"}, series)
    assert names(rules, urgent) == [("urgent", ["t2"]), ("everything-mr", ["t2", "dwi"])]
    [first, _] = rules.evaluate(urgent)
    assert (first.rule.priority, first.rule.outputs) == (10, (Output.SR,))
    assert first.rule.destinations == Destinations(("pacs",), ("cloud",), ("backup",))
    routine = Study({"AccessionNumber": "A1"}, series)
    assert names(rules, routine) == [("everything-mr", ["t2", "dwi"])]
    outside = Study({"AccessionNumber": "URG9"}, [mr("t2", "t2", SeriesNumber="3", RemoteIP="192.168.1.5")])
    assert names(rules, outside) == [("everything-mr", ["t2"])]
    research = Study({}, [mr("t2", "t2", RemoteAET="RESEARCH_PC")])
    assert rules.evaluate(research) == []
    assert rules.evaluate(Study({}, [Series("ct", {"Modality": "CT"})])) == []  # only the disabled rule
    assert rules.destinations == Destinations(("pacs",), ("cloud",), ("backup",))


def test_multi_valued_and_missing_attributes() -> None:
    rules = parse_rules("""\
rules:
  - name: r
    match:
      study: {ModalitiesInStudy: [SR]}
      series: {ImageType: '\\\\ADC', EchoTime: {max: 100}}
""")
    adc = Series("a", {"ImageType": "DERIVED\\PRIMARY\\ADC", "EchoTime": "87"})
    no_te = Series("b", {"ImageType": "DERIVED\\PRIMARY\\ADC"})
    assert names(rules, Study({"ModalitiesInStudy": "MR\\SR"}, [adc, no_te])) == [("r", ["a"])]
    assert rules.evaluate(Study({"ModalitiesInStudy": "MR"}, [adc])) == []


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "rules:\n  - name: a\n    match: {series: {Modality: [MR]}}\n    priorty: 3\n",
            "line 4, field rules[0].priorty: unknown field",
        ),
        (
            "rules:\n  - name: a\n    priority: urgent\n    match: {series: {Modality: [MR]}}\n",
            "line 3, field rules[0].priority: must be an integer",
        ),
        (
            "rules:\n  - name: a\n    match:\n      series: {SeriesDescripton: t2}\n",
            "line 4, field rules[0].match.series.SeriesDescripton: 'SeriesDescripton' is not a DICOM keyword",
        ),
        (
            "rules:\n  - name: a\n    match:\n      - study: {StudyDescription: '(prostate'}\n",
            "line 4, field rules[0].match[0].study.StudyDescription: invalid regular expression",
        ),
        (
            "rules:\n  - name: a\n    match: {remote_ip: {cidr: [10.0.0.300/8]}}\n",
            "line 3, field rules[0].match.remote_ip.cidr[0]: not an IP network",
        ),
        (
            "rules:\n  - name: a\n    match: {series: {SeriesNumber: {min: 5, max: 1}}}\n",
            "field rules[0].match.series.SeriesNumber: min (5) is greater than max (1)",
        ),
        (
            "rules:\n  - name: a\n    outputs: [seg, report]\n    match: {series: {Modality: [MR]}}\n",
            "line 3, field rules[0].outputs: must be a non-empty list of seg, sr, pmap, sc",
        ),
        (
            "rules:\n  - name: a\n    destinations: {modalities: pacs}\n    match: {series: {Modality: [MR]}}\n",
            "line 3, field rules[0].destinations.modalities: must be a list of names",
        ),
        (
            "rules:\n  - name: a\n    destinations: {pacs: [x]}\n    match: {series: {Modality: [MR]}}\n",
            "line 3, field rules[0].destinations.pacs: unknown field",
        ),
        (
            "rules:\n  - name: a\n    match: {series: {Modality: [MR]}}\n  - name: a\n    match: {study: {}}\n",
            "field rules[1].match.study: must map DICOM keywords to conditions",
        ),
        (
            "rules:\n  - name: a\n    match: {series: {Modality: [MR]}}\n  - name: a\n    match: {series: {Modality: [CT]}}\n",
            "line 4, field rules[1].name: rule name 'a' is used twice",
        ),
        ("rules:\n  - name: 'a b'\n    match: {series: {Modality: [MR]}}\n", "line 2, field rules[0].name"),
        (
            "rules:\n  - name: a\n    action: skip\n    match: {series: {Modality: [MR]}}\n",
            "line 3, field rules[0].action",
        ),
        ("rules:\n  - name: a\n", "field rules[0]: rule 'a' has no 'match'"),
        (
            "rules:\n  - name: a\n    match: {}\n",
            "field rules[0].match: an empty match would accept every study",
        ),
        ("version: 2\nrules: []\n", "line 1, field version: unsupported version 2"),
        ("rule: []\n", "line 1, field rule: unknown field"),
        (
            "rules:\n  - name: a\n    match: {series: {Modality: {between: [1, 2]}}}\n",
            "field rules[0].match.series.Modality.between: unknown condition",
        ),
        (
            "rules:\n  - name: a\n    match: {series: {Modality: {regex: x, in: [y]}}}\n",
            "field rules[0].match.series.Modality: a condition mapping has one of",
        ),
        ("rules: [\n", "not valid YAML"),
    ],
)
def test_validation_errors_name_line_and_field(text: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_rules(text, "rules.yaml")
    assert expected in str(info.value)
    assert str(info.value).startswith("rules.yaml")


def test_series_rules_overrides_inline_and_from_a_file(tmp_path: Path) -> None:
    inline = parse_rules(
        """\
rules:
  - name: site
    match: {series: {Modality: [MR]}}
    series_rules:
      roles:
        t2w:
          include:
            - {SeriesDescription: '(?i)tse_ax'}
""",
        "rules.yaml",
        tmp_path,
    )
    rule = inline.rules[0]
    assert rule.series_rules is not None
    assert rule.series_rules.to_json() == {
        "roles": {"t2w": {"include": [{"SeriesDescription": "(?i)tse_ax"}]}}
    }
    assert rule.series_rules.source == "rules.yaml (rules[0].series_rules)"
    assert rule.series_rules.t2w.include[0].describe() == "SeriesDescription~/(?i)tse_ax/"
    with pytest.raises(ConfigError) as info:
        parse_rules(
            """\
rules:
  - name: site
    match: {series: {Modality: [MR]}}
    series_rules:
      min_slices: many
""",
            "rules.yaml",
            tmp_path,
        )
    assert str(info.value).startswith(
        "rules.yaml (rules[0].series_rules), line 5, field min_slices: must be an integer"
    )
    (tmp_path / "site-series.yaml").write_text("min_slices: 4\n")
    from_file = parse_rules(
        "rules:\n  - name: f\n    match: {series: {Modality: [MR]}}\n    series_rules: site-series.yaml\n",
        "rules.yaml",
        tmp_path,
    )
    assert from_file.rules[0].series_rules is not None and from_file.rules[0].series_rules.min_slices == 4
    assert from_file.rules[0].series_rules.to_json() == {"min_slices": 4}
    assert from_file.rules[0].summary()["series_rules"] == str(tmp_path / "site-series.yaml")
    with pytest.raises(ConfigError, match=r"field rules\[0\]\.series_rules: cannot read"):
        parse_rules(
            "rules:\n  - name: f\n    match: {series: {Modality: [MR]}}\n    series_rules: missing.yaml\n",
            "rules.yaml",
            tmp_path,
        )


def test_summary_is_json_ready(defaults: RoutingRules) -> None:
    import json

    summary = defaults.rules[0].summary()
    assert json.loads(json.dumps(summary))["name"] == "prostate-mr"
    assert summary["match"][0]["study"] == {"StudyDescription": "~/(?i)prosta/"}
    assert isinstance(summary["line"], int) and summary["line"] > 1
