"""Studies that no rule matched: listed with each rule's outcome, kept for a bounded time, and the dry run
says why nothing matched (unit tests of the store and of the rules' explanation, and the plugin against a
fake Orthanc)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lesion_engine.errors import ConfigError
from orthanc_plugin.admin.routes import CSRF_HEADER, CSRF_VALUE
from orthanc_plugin.intake.ignored import MAX_ENTRIES, IgnoredStudies
from orthanc_plugin.node.settings import NodeSettings
from orthanc_plugin.rules import parse_rules
from tests.support.fake_orthanc import fake_node

CT = [
    {
        "Modality": "CT",
        "SeriesDescription": "thorax 1.0",
        "BodyPartExamined": "CHEST",
        "sop_class": "1.2.840.10008.5.1.4.1.1.2",
    }
]
PROSTATE = [{"SeriesDescription": "t2_tse_tra"}, {"SeriesDescription": "ep2d_diff_tra_ADC"}]
#: An admin's typo: "prostrate" where "prostate" was meant.
TYPO_RULES = """
version: 1
rules:
  - name: prostate-mr
    match:
      study: {StudyDescription: '(?i)prostrate'}
      series: {Modality: [MR]}
  - name: by-patient
    match:
      study: {PatientID: [SOMEONE]}
"""


class _Series:
    def __init__(self, **attributes: str) -> None:
        self.values = attributes
        self.series_id = "s1"

    def attribute(self, keyword: str) -> str | None:
        return self.values.get(keyword)


class _Study:
    def __init__(self, study: dict[str, str], series: list[_Series]) -> None:
        self.values = study
        self.series = series

    def study_attribute(self, keyword: str) -> str | None:
        return self.values.get(keyword)


def test_the_explanation_names_the_first_failing_part_of_each_rule() -> None:
    rules = parse_rules(TYPO_RULES)
    study = _Study({"StudyDescription": "MR PROSTATE", "PatientID": "P-123"}, [_Series(Modality="MR")])
    assert rules.evaluate(study) == []
    typo, patient = rules.explain(study)
    assert typo["rule"] == "prostate-mr" and typo["outcome"].startswith(
        "not matched: study: StudyDescription"
    )
    assert "'MR PROSTATE'" in typo["outcome"] and "(?i)prostrate" in typo["outcome"]
    # A value that identifies the patient is never shown.
    assert patient["outcome"] == "not matched: study: PatientID is (value not shown), not in [SOMEONE]"
    assert "P-123" not in json.dumps(rules.explain(study))


def test_the_explanation_of_series_and_required_series() -> None:
    rules = parse_rules(
        """
version: 1
rules:
  - name: mr
    match:
      series: {Modality: [MR]}
      has_series: [{SeriesDescription: '(?i)diff'}]
  - name: never
    enabled: false
    match: {series: {Modality: [CT]}}
"""
    )
    ct = _Study({}, [_Series(Modality="CT"), _Series(Modality="SR")])
    first, disabled = rules.explain(ct)
    assert (
        first["outcome"]
        == "not matched: none of its 2 series matches (the first: Modality is 'CT', not in [MR])"
    )
    assert disabled["outcome"] == "disabled"
    t2_only = _Study({}, [_Series(Modality="MR", SeriesDescription="t2_tse_tra")])
    assert (
        rules.explain(t2_only)[0]["outcome"]
        == "not matched: no input series has SeriesDescription ~/(?i)diff/"
    )
    both = _Study({}, [_Series(Modality="MR", SeriesDescription="ep2d_diff")])
    assert rules.explain(both)[0]["outcome"] == "matched"
    assert len(rules.explain(both)) == 1  # the evaluation ends at the first match


def test_the_store_keeps_entries_for_a_bounded_time_and_number(tmp_path: Path) -> None:
    path = tmp_path / "ignored.json"
    store = IgnoredStudies(path, keep_s=100.0)
    store.record("a", "1.2.3", [{"rule": "r", "action": "process", "outcome": "not matched: x"}], now=1000.0)
    store.record("b", "1.2.4", [], now=1050.0)
    assert [e["study"] for e in store.list(now=1060.0)] == ["b", "a"]
    assert [e["study"] for e in IgnoredStudies(path, 100.0).list(now=1060.0)] == ["b", "a"]  # persisted
    assert [e["study"] for e in store.list(now=1120.0)] == ["b"]  # "a" is older than 100 s
    store.forget("b")
    assert store.list(now=1120.0) == []
    store = IgnoredStudies(path, keep_s=1e6, max_entries=10)
    for index in range(15):
        store.record(f"s{index}", None, [], now=2000.0 + index)
    assert len(store) == 10 and store.list(now=3000.0, limit=1)[0]["study"] == "s14"
    assert IgnoredStudies(path, 1.0).max_entries == MAX_ENTRIES == 1000
    with pytest.raises(ValueError, match="keep_s"):
        IgnoredStudies(path, 0)


class _Shared:
    """A value every server reads (the cluster database's, in memory)."""

    def __init__(self) -> None:
        self.value: str | None = None

    def load(self) -> str | None:
        return self.value

    def save(self, value: str) -> None:
        self.value = value


def test_a_shared_list_is_the_same_on_every_server(tmp_path: Path) -> None:
    shared = _Shared()
    server_a = IgnoredStudies(tmp_path / "a.json", keep_s=100.0, shared=shared)
    server_b = IgnoredStudies(tmp_path / "b.json", keep_s=100.0, shared=shared)
    server_a.record("s1", "1.2.1", [{"rule": "r", "outcome": "no match"}], now=10.0)
    server_b.record("s2", "1.2.2", [], now=11.0)
    assert [e["study"] for e in server_a.list(now=12.0)] == ["s2", "s1"]
    server_a.forget("s2")
    assert [e["study"] for e in server_b.list(now=12.0)] == ["s1"]
    assert not (tmp_path / "a.json").exists() and not (tmp_path / "b.json").exists()


def test_a_damaged_file_starts_an_empty_list(tmp_path: Path) -> None:
    path = tmp_path / "ignored.json"
    for content in ("{not json", json.dumps({"format": "other"}), json.dumps({"format": "x", "studies": 3})):
        path.write_text(content)
        assert IgnoredStudies(path, 10.0).list() == []
    path.write_text(json.dumps({"format": "lesion-ai-ignored-studies", "studies": [{"study": 1}, "x"]}))
    assert IgnoredStudies(path, 10.0).list() == []


def test_keep_days_is_validated() -> None:
    queue = {"Queue": "sqlite:///q.sqlite", "Home": "/data", "Rules": "/data/rules.yaml"}
    assert NodeSettings.from_section(queue).ignored_keep_days == 7.0
    with pytest.raises(ConfigError, match="IgnoredKeepDays: must be a number of days above 0"):
        NodeSettings.from_section({**queue, "IgnoredKeepDays": 0})


def test_an_ignored_study_is_listed_with_its_evaluation_and_leaves_when_it_gets_a_job(tmp_path: Path) -> None:
    with fake_node(tmp_path) as (fake, plugin):
        ct = fake.add_study(description="CT THORAX", series=CT)
        fake.stabilize(ct, notify=False)
        plugin.follower.start()
        assert plugin.queue.list() == []
        answer = fake.rest("GET", "/lesion-ai/ignored")
        assert answer.status == 200
        (entry,) = answer.json()["ignored"]
        assert entry["study"] == ct and entry["study_instance_uid"]
        outcomes = {e["rule"]: e["outcome"] for e in entry["evaluation"]}
        assert outcomes["prostate-mr"].startswith("not matched: ")
        assert "CT THORAX" in outcomes["prostate-mr"] or "'CT'" in outcomes["prostate-mr"]
        assert answer.json()["kept_days"] == 7.0
        assert (tmp_path / "ignored.json").is_file()

        # The dry run says the same.
        test = fake.rest(
            "POST",
            "/lesion-ai/rules/test",
            body=json.dumps({"study": ct, "roles": False}).encode(),
            headers={CSRF_HEADER: CSRF_VALUE},
        )
        assert test.status == 200 and test.json()["matches"] == []
        assert test.json()["evaluation"] == entry["evaluation"]

        # A prostate study is not listed; a study that later gets a job leaves the list.
        prostate = fake.add_study(description="MR PROSTATA", series=PROSTATE)
        plugin.enqueue_study(prostate)
        assert [e["study"] for e in fake.rest("GET", "/lesion-ai/ignored").json()["ignored"]] == [ct]
        plugin.ignored.record(prostate, None, [])
        plugin.enqueue_study(prostate, force=True)
        assert [e["study"] for e in fake.rest("GET", "/lesion-ai/ignored").json()["ignored"]] == [ct]

        assert fake.rest("GET", "/lesion-ai/ignored", get={"limit": "0"}).status == 400
        assert fake.rest("GET", "/lesion-ai/ignored", get={"limit": "x"}).status == 400
