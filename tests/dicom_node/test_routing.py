"""Routing rules: validation with messages that name the rule and field, matching, and reloading (a bad reload keeps
the rules in force)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from app.dicom_node.config import Destination
from app.dicom_node.routing import DEFAULT_RULES, RuleBook, RulesError, StudyFacts, decide, load_rules

DESTINATIONS = [Destination(name="pacs", ae_title="PACS", host="10.0.0.5", port=104)]

GOOD = """
rules:
  - name: neuro
    match:
      calling_ae: PACS
      modality: [mr]
      body_part: [HEAD, BRAIN]
      study_description: "(?i)brain"
      series_description: "(?i)mprage"
      roles: [t1_pre, t1_low_dose]
    model: ce-lowdose-v1
    destinations: ["@caller", pacs]
  - name: rest
    action: skip
"""

FACTS = StudyFacts(
    calling_ae="PACS",
    called_ae="GADSYNTH",
    modalities=frozenset({"MR"}),
    body_parts=frozenset({"HEAD"}),
    study_descriptions=frozenset({"Neuro^Brain"}),
    series_descriptions=("t1_mprage_sag", "t2_tse"),
    roles=frozenset({"t1_pre", "t1_low_dose", "t2"}),
)


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "rules.yaml"
    path.write_text(text)
    return path


class TestMatching:
    def test_first_matching_rule_decides(self, tmp_path: Path) -> None:
        rules = load_rules(_write(tmp_path, GOOD), DESTINATIONS)
        route = decide(rules, FACTS)
        assert (route.rule, route.process, route.model, route.destinations) == (
            "neuro",
            True,
            "ce-lowdose-v1",
            ("@caller", "pacs"),
        )

    def test_a_missing_role_falls_through_to_the_next_rule(self, tmp_path: Path) -> None:
        rules = load_rules(_write(tmp_path, GOOD), DESTINATIONS)
        route = decide(rules, StudyFacts(**{**FACTS.__dict__, "roles": frozenset({"t1_pre"})}))
        assert (route.rule, route.process) == ("rest", False)

    def test_no_rule_says_why_each_failed(self) -> None:
        route = decide(DEFAULT_RULES, StudyFacts(calling_ae="X", called_ae="Y", modalities=frozenset({"CT"})))
        assert route.rule is None and not route.process
        assert route.why == "default: modalities ['CT'] not in ['MR']"


class TestValidation:
    @pytest.mark.parametrize(
        ("text", "message"),
        [
            ("rules: [{name: a, match: {modality: MR, colour: red}}]", r"rules\.0\.match\.colour: Extra inputs"),
            ("rules: [{name: a, match: {roles: [t1_post]}}]", r"rules\.0\.match\.roles\.0: Input should be 't1_pre'"),
            ("rules: [{name: a, match: {series_description: '(unclosed'}}]", r"not a valid regular expression"),
            ("rules: [{name: a, action: maybe}]", r"rules\.0\.action: Input should be 'process' or 'skip'"),
            ("rules: [{name: a}, {name: a}]", r"rule names must be unique\. Found a twice"),
            ("rules: [{name: a, destinations: [archive]}]", r"rules\.0 \(a\) names destination\(s\) \['archive'\]"),
            ("- just a list", r"must be a mapping with a 'rules' list"),
            ("rules: [{name: a", r"are not valid YAML"),
        ],
    )
    def test_bad_files_are_refused_with_the_place_and_the_reason(self, tmp_path: Path, text: str, message: str) -> None:
        with pytest.raises(RulesError, match=message):
            load_rules(_write(tmp_path, text), DESTINATIONS)

    def test_a_missing_file_is_refused_at_start_up(self, tmp_path: Path) -> None:
        book = RuleBook(tmp_path / "absent.yaml", DESTINATIONS)
        with pytest.raises(RulesError, match="cannot be read"):
            book.load()


class TestReload:
    def test_changes_are_picked_up_and_a_bad_reload_keeps_the_rules(self, tmp_path: Path) -> None:
        path = _write(tmp_path, GOOD)
        book = RuleBook(path, DESTINATIONS)
        book.load()
        assert [r.name for r in book.current().rules] == ["neuro", "rest"]

        path.write_text("rules: [{name: only}]\n")
        os.utime(path, ns=(1, 10**18))  # a new mtime whatever the clock's resolution
        assert [r.name for r in book.current().rules] == ["only"]
        assert book.error is None

        path.write_text("rules: [{name: broken, match: {nope: 1}}]\n")
        os.utime(path, ns=(1, 2 * 10**18))
        assert [r.name for r in book.current().rules] == ["only"]  # the previous rules stay in force
        assert book.error is not None and "rules.0.match.nope" in book.error
        assert book.status()["error"] == book.error

    def test_without_a_file_the_default_rule_applies(self) -> None:
        book = RuleBook(None, [])
        book.load()
        assert book.current() is DEFAULT_RULES
        assert decide(book.current(), FACTS).destinations == ("@caller",)
