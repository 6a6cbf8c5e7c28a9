"""Rules and requests that must not hurt the node: catastrophic regular expressions, YAML bombs and tags,
files outside the configuration folder, devices, huge IDs.

Bounds on parsing are checked in CPU time of this process (``time.process_time``), which other processes'
load on the machine does not change; the health check during an evaluation is checked in wall time."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lesion_engine.config.safe_regex import UnsafePatternError, compile_pattern
from lesion_engine.config.yamlconfig import MAX_YAML_BYTES, read_yaml, read_yaml_file
from lesion_engine.errors import ConfigError
from lesion_engine.intake.series_rules import load_series_rules
from orthanc_plugin.admin.routes import CSRF_HEADER, CSRF_VALUE
from orthanc_plugin.admin.rules import BoundedEvaluator
from orthanc_plugin.plugin import NodePlugin
from orthanc_plugin.rules import parse_rules
from tests.support.fake_orthanc import FakeOrthanc, fake_node

REDOS = "^(a+)+$"
# 28 'a' and a '!': Python's backtracking engine needs about 2^28 steps (minutes) to say "no match".
EVIL_VALUE = "a" * 28 + "!"

ALIAS_BOMB = "".join(
    f"{name}: &{name} [{', '.join([f'*{prev}'] * 9) if prev else ', '.join(['x'] * 9)}]\n"
    for prev, name in zip([None, *"abcdefgh"], "abcdefghi", strict=True)
)


def _rules(pattern_rule: str) -> str:
    return f"""version: 1
rules:
  - name: evil
    match:
      - study: {{StudyDescription: '{pattern_rule}'}}
        series: {{Modality: [MR]}}
"""


@pytest.fixture
def node(tmp_path: Path) -> Iterator[tuple[FakeOrthanc, NodePlugin]]:
    with fake_node(tmp_path, _rules(REDOS)) as node:
        yield node


def test_catastrophic_pattern_is_matched_in_linear_time() -> None:
    pattern = compile_pattern(REDOS)
    started = time.process_time()
    assert not pattern.search("a" * 100_000 + "!")
    assert pattern.search("aaaa")
    assert time.process_time() - started < 0.5


@pytest.mark.parametrize(
    ("pattern", "words"), [("(?=a)b", "look-arounds"), (r"(a)\1", "back-references"), ("(", "missing")]
)
def test_patterns_that_cannot_be_bounded_are_refused_at_validation(pattern: str, words: str) -> None:
    with pytest.raises(UnsafePatternError, match=words):
        compile_pattern(pattern)
    with pytest.raises(ConfigError, match=r"rules\[0\]\.match\[0\]\.study\.StudyDescription"):
        parse_rules(_rules(pattern))


def test_the_node_answers_health_while_a_redos_rule_meets_a_hostile_study(
    node: tuple[FakeOrthanc, NodePlugin],
) -> None:
    fake, plugin = node
    study = fake.add_study(description=EVIL_VALUE, series=[{"SeriesDescription": "t2_tse_tra"}])
    evaluation = threading.Thread(target=plugin.on_stable_study, args=(study,), daemon=True)
    evaluation.start()
    time.sleep(0.05)
    started = time.perf_counter()
    health = fake.rest("GET", "/lesion-ai/health")
    answered = time.perf_counter() - started
    evaluation.join(timeout=5)
    assert health.status == 200
    assert answered < 1.0, f"health took {answered:.1f} s"
    assert not evaluation.is_alive(), "the rule evaluation is still running after 5 s"


def test_alias_bomb_is_refused_within_a_second() -> None:
    assert len(ALIAS_BOMB) < 400
    started = time.process_time()
    with pytest.raises(ConfigError, match="aliases"):
        parse_rules(ALIAS_BOMB)
    assert time.process_time() - started < 1.0


@pytest.mark.parametrize(
    "text", ["a: !!python/object/apply:os.system ['true']\n", "a: !custom 1\n", "a: !!str 1\n"]
)
def test_yaml_tags_are_refused(text: str) -> None:
    with pytest.raises(ConfigError, match="tags"):
        read_yaml(text)


def test_oversized_and_deeply_nested_yaml_is_refused() -> None:
    with pytest.raises(ConfigError, match="limited to"):
        read_yaml("a: " + "x" * (MAX_YAML_BYTES + 1))
    started = time.process_time()
    with pytest.raises(ConfigError, match="nested too deeply"):
        read_yaml("[" * 200_000)  # PyYAML's scanner alone would take minutes
    with pytest.raises(ConfigError, match="nested too deeply"):
        read_yaml("".join(" " * i + "k:\n" for i in range(600)))
    # Unbounded, the first text alone takes PyYAML's scanner minutes; bounded, well under a second alone.
    assert time.process_time() - started < 3.0


def test_series_rules_from_a_device_is_refused(tmp_path: Path) -> None:
    started = time.process_time()
    with pytest.raises(ConfigError, match="not a regular file"):
        read_yaml_file("/dev/zero")
    with pytest.raises(ConfigError, match="not a regular file"):
        load_series_rules("/dev/zero")
    assert time.process_time() - started < 1.0


def _rule_with_series_rules(path: str) -> str:
    return f"version: 1\nrules:\n  - name: r\n    match: {{series: {{Modality: [MR]}}}}\n    series_rules: {path}\n"


@pytest.mark.parametrize("where", ["/dev/zero", "outside", "../secret.yaml", "link.yaml", "secret.txt"])
def test_series_rules_files_outside_the_rules_folder_are_refused_without_their_contents(
    tmp_path: Path, where: str
) -> None:
    rules_dir = tmp_path / "home"
    rules_dir.mkdir()
    secret = tmp_path / "secret.yaml"
    secret.write_text("t2w_max_tilt_deg: 'TOP-SECRET-VALUE'\n")
    (rules_dir / "secret.txt").write_text("t2w_max_tilt_deg: 'TOP-SECRET-VALUE'\n")
    (rules_dir / "link.yaml").symlink_to(secret)
    path = str(secret) if where == "outside" else where
    with pytest.raises(ConfigError) as caught:
        parse_rules(_rule_with_series_rules(path), "PUT /lesion-ai/rules", rules_dir)
    assert "TOP-SECRET-VALUE" not in str(caught.value)
    assert "series_rules" in str(caught.value)


def test_series_rules_file_inside_the_rules_folder_is_read(tmp_path: Path) -> None:
    (tmp_path / "site-series.yaml").write_text("t2w_max_tilt_deg: 20\n")
    rules = parse_rules(_rule_with_series_rules("site-series.yaml"), "rules", tmp_path)
    assert rules.rules[0].series_rules is not None
    assert rules.rules[0].series_rules.t2w_max_tilt_deg == 20


def test_put_rules_with_a_file_outside_is_refused_and_the_old_rules_stay(
    node: tuple[FakeOrthanc, NodePlugin], tmp_path: Path
) -> None:
    fake, _ = node
    secret = tmp_path.parent / f"{tmp_path.name}-secret.yaml"
    secret.write_text("password: TOP-SECRET-VALUE\n")
    answer = fake.rest(
        "PUT",
        "/lesion-ai/rules",
        _rule_with_series_rules(str(secret)).encode(),
        headers={CSRF_HEADER: CSRF_VALUE},
    )
    assert answer.status == 400
    assert "TOP-SECRET-VALUE" not in answer.body.decode()
    assert fake.rest("GET", "/lesion-ai/rules").json()["rules"][0]["name"] == "evil"


@pytest.mark.parametrize("job_id", ["99999999999999999999999", "9223372036854775808", "1" * 40])
def test_huge_job_ids_are_a_client_error(node: tuple[FakeOrthanc, NodePlugin], job_id: str) -> None:
    fake, _ = node
    assert fake.rest("GET", f"/lesion-ai/jobs/{job_id}").status == 404


def test_huge_offsets_are_a_client_error(node: tuple[FakeOrthanc, NodePlugin]) -> None:
    fake, _ = node
    assert fake.rest("GET", "/lesion-ai/jobs", get={"offset": "9" * 30}).status == 400


def test_a_slow_rules_test_is_answered_503_and_never_holds_the_rest_thread(
    node: tuple[FakeOrthanc, NodePlugin], monkeypatch: pytest.MonkeyPatch
) -> None:
    fake, plugin = node
    study = fake.add_study(series=[{"SeriesDescription": "t2_tse_tra"}])
    plugin.admin.rules.evaluator = BoundedEvaluator(timeout_s=0.3)
    release = threading.Event()
    planned = plugin.plan_study

    def slow_plan(study_id: str, rules: Any) -> Any:  # an evaluation that takes as long as the test says
        release.wait(30)
        return planned(study_id, rules)

    monkeypatch.setattr(plugin, "plan_study", slow_plan)
    body = json.dumps({"study": study, "roles": False}).encode()
    headers = {CSRF_HEADER: CSRF_VALUE}
    try:
        started = time.perf_counter()
        slow = fake.rest("POST", "/lesion-ai/rules/test", body, headers=headers)
        answered = time.perf_counter() - started
        assert slow.status == 503
        assert "rule evaluation took longer than 0.3 s" in slow.json()["error"]
        assert answered < 2.0, f"the REST thread waited {answered:.1f} s"
        # One evaluation at a time: the next request is refused at once while the first one still runs.
        started = time.perf_counter()
        again = fake.rest("POST", "/lesion-ai/rules/test", body, headers=headers)
        assert again.status == 503 and "still running" in again.json()["error"]
        assert time.perf_counter() - started < 0.3
        assert fake.rest("GET", "/lesion-ai/health").status == 200
    finally:
        release.set()
    evaluator = plugin.admin.rules.evaluator
    deadline = time.monotonic() + 10
    while evaluator.busy and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not evaluator.busy
    done = fake.rest("POST", "/lesion-ai/rules/test", body, headers=headers)
    assert done.status == 200, done.body
    assert [m["rule"] for m in done.json()["matches"]] == []  # the 'evil' rule wants a StudyDescription


def test_an_error_of_the_evaluation_reaches_the_caller() -> None:
    evaluator = BoundedEvaluator(timeout_s=5)

    def broken() -> tuple[int, Any, str]:
        raise ValueError("the body names no such thing")

    with pytest.raises(ValueError, match="no such thing"):
        evaluator.run(broken)
    assert evaluator.run(lambda: (200, {"ok": True}, "application/json"))[0] == 200
    with pytest.raises(ValueError, match="greater than 0"):
        BoundedEvaluator(timeout_s=0)
