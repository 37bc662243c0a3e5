"""Routing rules: which received studies become jobs, with which model, and where their results go.

The rules are a YAML file (setting ``routing_rules``), read again whenever it changes. It is validated as a whole
on every load; a file that does not validate is refused with the reason, and the rules loaded before stay in force
(at start-up, a bad file stops the service). The first rule whose ``match`` holds decides::

    rules:
      - name: neuro-from-pacs
        match:
          calling_ae: [PACS1]              # any of these calling AE titles
          called_ae: [GADSYNTH]            # any of these called AE titles
          modality: [MR]                   # the study has a series of one of these modalities
          body_part: [HEAD, BRAIN]         # ... a series with one of these BodyPartExamined (any case)
          study_description: "(?i)brain|neuro"     # regular expression, searched in StudyDescription
          series_description: "(?i)mprage"         # ... in some series' SeriesDescription
          roles: [t1_pre, t1_low_dose]     # the series selector found every one of these roles
        model: ce-lowdose-v1               # optional: default, the automatic choice by the roles
        destinations: ["@caller", archive] # names from dicom_destinations; @caller: the calling AE, if configured
      - name: everything-else
        action: skip                       # matched studies are logged and kept, no job

A condition left out always holds. Without a rules file, one default rule routes every MR study with the
automatic model and sends the results back to the calling AE if it is a configured DICOM destination.
"""

from __future__ import annotations

import logging
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from app.dicom_node.config import CALLER, Destination
from app.service.options import MODEL_NAME_PATTERN
from operators.roles import Role

__all__ = [
    "DEFAULT_RULES",
    "Match",
    "Route",
    "Rule",
    "RuleBook",
    "RuleSet",
    "RulesError",
    "StudyFacts",
    "decide",
    "load_rules",
]

logger = logging.getLogger(__name__)


class RulesError(ValueError):
    """A routing rules file that cannot be used; the message names the file, the rule and the field."""


@dataclass(frozen=True)
class StudyFacts:
    """What the rules can see of a received study (no patient data)."""

    calling_ae: str
    called_ae: str
    modalities: frozenset[str] = frozenset()
    body_parts: frozenset[str] = frozenset()
    study_descriptions: frozenset[str] = frozenset()
    series_descriptions: tuple[str, ...] = ()
    roles: frozenset[str] = frozenset()


def _upper_list(value: object) -> object:
    if isinstance(value, str):
        value = [value]
    if isinstance(value, list):
        return [str(v).strip().upper() for v in value]
    return value


def _compile(value: str | None) -> str | None:
    if value is not None:
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"not a valid regular expression ({exc}): {value!r}") from None
    return value


class Match(BaseModel):
    """The conditions of a rule; every one given must hold."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    calling_ae: list[str] | None = None
    called_ae: list[str] | None = None
    modality: list[str] | None = None
    body_part: list[str] | None = None
    study_description: str | None = None
    series_description: str | None = None
    roles: list[Role] | None = None

    @field_validator("calling_ae", "called_ae", mode="before")
    @classmethod
    def _ae_list(cls, value: object) -> object:
        return [value] if isinstance(value, str) else value

    @field_validator("modality", "body_part", mode="before")
    @classmethod
    def _upper(cls, value: object) -> object:
        return _upper_list(value)

    @field_validator("study_description", "series_description")
    @classmethod
    def _regex(cls, value: str | None) -> str | None:
        return _compile(value)

    def failed(self, facts: StudyFacts) -> str | None:
        """The first condition that does not hold for ``facts``, or None when all hold."""
        if self.calling_ae is not None and facts.calling_ae not in self.calling_ae:
            return f"calling AE {facts.calling_ae!r} not in {self.calling_ae}"
        if self.called_ae is not None and facts.called_ae not in self.called_ae:
            return f"called AE {facts.called_ae!r} not in {self.called_ae}"
        if self.modality is not None and not facts.modalities & set(self.modality):
            return f"modalities {sorted(facts.modalities)} not in {self.modality}"
        if self.body_part is not None and not facts.body_parts & set(self.body_part):
            return f"body parts {sorted(facts.body_parts)} not in {self.body_part}"
        if self.study_description is not None and not any(
            re.search(self.study_description, d) for d in facts.study_descriptions
        ):
            return f"no StudyDescription matches {self.study_description!r}"
        if self.series_description is not None and not any(
            re.search(self.series_description, d) for d in facts.series_descriptions
        ):
            return f"no SeriesDescription matches {self.series_description!r}"
        if self.roles is not None:
            missing = [r.value for r in self.roles if r.value not in facts.roles]
            if missing:
                return f"roles {', '.join(missing)} not found"
        return None


class Rule(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    match: Match = Field(default_factory=Match)
    action: Literal["process", "skip"] = "process"
    model: str | None = Field(default=None, pattern=MODEL_NAME_PATTERN)
    destinations: list[str] = Field(default_factory=list)


class RuleSet(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    version: Literal[1] = 1
    rules: list[Rule] = Field(default_factory=list)


#: The rules in force without a rules file.
DEFAULT_RULES = RuleSet(
    rules=[Rule(name="default", match=Match(modality=["MR"]), action="process", destinations=[CALLER])]
)


@dataclass(frozen=True)
class Route:
    """The routing decision for one study."""

    rule: str | None
    process: bool
    model: str | None = None
    destinations: tuple[str, ...] = ()
    #: Why no rule matched (each rule's first failed condition), for the log and the API.
    why: str = ""


def decide(rules: RuleSet, facts: StudyFacts) -> Route:
    """The first rule whose match holds; a not-processed route with the reasons when none does."""
    failures = []
    for rule in rules.rules:
        failed = rule.match.failed(facts)
        if failed is None:
            return Route(rule.name, rule.action == "process", rule.model, tuple(rule.destinations))
        failures.append(f"{rule.name}: {failed}")
    return Route(None, False, why="; ".join(failures) or "no rules")


def _format_errors(path: Path, exc: ValidationError) -> str:
    lines = []
    for error in exc.errors():
        where = ".".join(str(p) for p in error["loc"]) or "(file)"
        lines.append(f"{where}: {error['msg']}")
    return f"Routing rules {path}: " + "; ".join(lines)


def load_rules(path: Path, destinations: list[Destination]) -> RuleSet:
    """Read and validate a rules file.

    Raises
    ------
    RulesError
        When the file cannot be read, is not YAML, does not fit the schema (the message gives each field's path,
        e.g. ``rules.1.match.roles.0``), repeats a rule name, or names a destination that is not configured.
    """
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise RulesError(f"Routing rules {path} cannot be read: {exc}") from None
    except yaml.YAMLError as exc:
        raise RulesError(f"Routing rules {path} are not valid YAML: {exc}") from None
    if not isinstance(loaded, dict):
        raise RulesError(f"Routing rules {path} must be a mapping with a 'rules' list. Found {type(loaded).__name__}.")
    try:
        rules = RuleSet.model_validate(loaded)
    except ValidationError as exc:
        raise RulesError(_format_errors(path, exc)) from None
    names = [r.name for r in rules.rules]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise RulesError(f"Routing rules {path}: rule names must be unique. Found {', '.join(twice)} twice.")
    known = {d.name for d in destinations}
    for index, rule in enumerate(rules.rules):
        unknown = [d for d in rule.destinations if d != CALLER and d not in known]
        if unknown:
            raise RulesError(
                f"Routing rules {path}: rules.{index} ({rule.name}) names destination(s) {unknown} that are not "
                f"configured. Configured: {sorted(known) or 'none'} (and {CALLER})."
            )
    return rules


@dataclass
class RuleBook:
    """The rules in force: the file's, reloaded when it changes (a bad reload keeps the previous rules)."""

    path: Path | None
    destinations: list[Destination]
    rules: RuleSet = DEFAULT_RULES
    loaded_at: float | None = None
    error: str | None = None
    _signature: tuple[int, int] | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def load(self) -> None:
        """First load (start-up). Raises RulesError for a bad file."""
        if self.path is None:
            return
        signature = _stat(self.path)
        self.rules = load_rules(self.path, self.destinations)
        self._signature, self.loaded_at, self.error = signature, _now(), None
        logger.info("routing rules: %d rule(s) from %s", len(self.rules.rules), self.path)

    def current(self) -> RuleSet:
        """The rules to apply now (reading the file again when it changed)."""
        if self.path is None:
            return self.rules
        with self._lock:
            signature = _stat(self.path)
            if signature != self._signature:
                self._signature = signature
                try:
                    self.rules = load_rules(self.path, self.destinations)
                    self.loaded_at, self.error = _now(), None
                    logger.info("routing rules: reloaded %d rule(s) from %s", len(self.rules.rules), self.path)
                except RulesError as exc:
                    self.error = str(exc)
                    logger.error("%s; the previous rules stay in force", exc)
            return self.rules

    def status(self) -> dict[str, object]:
        return {
            "source": str(self.path) if self.path else "default (every MR study, results to the calling AE)",
            "rules": [r.name for r in self.rules.rules],
            "loaded_at": self.loaded_at,
            "error": self.error,
        }


def _stat(path: Path) -> tuple[int, int] | None:
    try:
        stat = path.stat()
    except OSError:
        return None
    return stat.st_mtime_ns, stat.st_size


def _now() -> float:
    import time

    return time.time()
