"""Series-selection rule language: rules kept as JSON / YAML data, evaluated on the features of a series.

The language is a superset of MONAI Deploy's ``DICOMSeriesSelectorOperator`` rules. A *node* is a JSON object:

``conditions``
    ``{keyword: expected}``, all must hold (AND), as in MONAI Deploy (including its
    ``"ImageOrientationPatient": "Axial" | "Coronal" | "Sagittal"``). ``keyword`` is a DICOM keyword, looked up
    in the first instance's top level, its shared functional groups and its first per-frame functional groups
    (Enhanced MR), or one of the derived features of `operators.series_features.series_features`
    (e.g. ``NumberOfSlices``).
    ``expected`` is matched as follows:

    * ``true`` / ``false``: the attribute is present (non-empty) / absent; for a boolean feature, equality.
    * number: exact match; ``[low, high]``: inclusive range (``null`` leaves a side open);
      ``[value, op]`` with op one of ``>``, ``>=``, ``<``, ``<=``, ``!=``; a string: regex (fullmatch).
    * text attribute: a string matches case-insensitively if equal or found as a regex (``re.search``); a
      leading ``!`` negates it; a list of strings matches if any of them does.
    * multi-valued attribute (ImageType, ScanningSequence, ...): a list of terms, every term must be one of the
      values (case-insensitive, whole values, not substrings); ``!term`` means the term must not be one of them.
      A single string is a list of one term. Numeric lists: the numeric condition must hold for every value.
    * A missing attribute never matches (except ``false``).

``any``: list of nodes, at least one must match (OR); the index of the first match ranks candidates.
``all``: list of nodes, every one must match. ``not``: list of nodes, none may match (negation).
``use``: the name of a node in the rules' ``definitions``, which must match too. ``label``: text for the log.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

__all__ = [
    "DEFAULT_RULES",
    "Match",
    "evaluate",
    "load_rules",
    "match_condition",
]

logger = logging.getLogger(__name__)

#: Name of the packaged default rules (operators/selection_rules.json).
DEFAULT_RULES = "selection_rules.json"

_NODE_KEYS = frozenset({"label", "conditions", "any", "all", "not", "use"})
_SELECTION_KEYS = frozenset(
    {
        "name",
        "roles",
        "split_by",
        "after",
        "before",
        "same_study",
        "same_frame_of_reference",
        "match_protocol_of",
        "consistency_group",
    }
)
_OPERATORS = {
    ">": lambda a, b: a > b,
    ">=": lambda a, b: a >= b,
    "<": lambda a, b: a < b,
    "<=": lambda a, b: a <= b,
    "!=": lambda a, b: a != b,
}


def load_rules(rules: Mapping[str, Any] | str | Path | None = None) -> dict[str, Any]:
    """Load selection rules: the packaged default, a JSON / YAML file, or an already parsed mapping.

    Raises
    ------
    ValueError
        When the rules lack ``selections``, or a node has an unknown key.
    FileNotFoundError
        When a rules file does not exist.
    """
    if rules is None:
        data: Any = json.loads(resources.files("operators").joinpath(DEFAULT_RULES).read_text(encoding="utf-8"))
    elif isinstance(rules, Mapping):
        data = dict(rules)
    else:
        path = Path(rules)
        text = path.read_text(encoding="utf-8")
        if path.suffix.lower() in {".yaml", ".yml"}:
            import yaml

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    if not isinstance(data, dict) or not isinstance(data.get("selections"), list) or not data["selections"]:
        raise ValueError('Selection rules must be an object with a non-empty "selections" list.')
    definitions = data.setdefault("definitions", {})
    for name, node in definitions.items():
        _validate_node(node, f"definitions.{name}", definitions)
    for i, node in enumerate(data.get("exclusions", [])):
        _validate_node(node, f"exclusions[{i}]", definitions)
    for i, selection in enumerate(data["selections"]):
        if "name" not in selection:
            raise ValueError(f'Selection rules: selections[{i}] has no "name".')
        unknown = set(selection) - _NODE_KEYS - _SELECTION_KEYS
        if unknown:
            raise ValueError(
                f"Selection rules: selections[{i}] ({selection['name']}) has unknown keys {sorted(unknown)}; "
                f"known: {sorted(_NODE_KEYS | _SELECTION_KEYS)}."
            )
        node = {k: v for k, v in selection.items() if k in _NODE_KEYS}
        _validate_node(node, f"selections[{i}] ({selection['name']})", definitions)
    return data


def _validate_node(node: Any, where: str, definitions: Mapping[str, Any]) -> None:
    if not isinstance(node, dict):
        raise ValueError(f"Selection rules: {where} must be an object, found {type(node).__name__}.")
    unknown = set(node) - _NODE_KEYS
    if unknown:
        raise ValueError(f"Selection rules: {where} has unknown keys {sorted(unknown)}; known: {sorted(_NODE_KEYS)}.")
    if "use" in node and node["use"] not in definitions:
        raise ValueError(f"Selection rules: {where} uses {node['use']!r}, not in definitions {sorted(definitions)}.")
    for key in ("any", "all", "not"):
        for i, child in enumerate(node.get(key, [])):
            _validate_node(child, f"{where}.{key}[{i}]", definitions)


@dataclass
class Match:
    """Outcome of evaluating a node on a series: whether it matched, why (or why not), and its rank."""

    ok: bool
    reason: str
    rank: tuple[int, ...] = ()


def _label(node: Mapping[str, Any], definitions: Mapping[str, Any]) -> str:
    if "label" in node:
        return str(node["label"])
    if "use" in node:
        return str(definitions[node["use"]].get("label", node["use"]))
    return ", ".join(f"{k} {v!r}" for k, v in node.get("conditions", {}).items()) or "rule"


def evaluate(node: Mapping[str, Any], features: Mapping[str, Any], definitions: Mapping[str, Any]) -> Match:
    """Evaluate one rule node on the features of a series."""
    rank: list[int] = []
    matched: list[str] = []
    if "use" in node:
        sub = evaluate(definitions[node["use"]], features, definitions)
        if not sub.ok:
            return Match(False, f"not {_label(definitions[node['use']], definitions)}: {sub.reason}")
        rank.extend(sub.rank)
        matched.append(sub.reason)
    found = []
    for key, expected in node.get("conditions", {}).items():
        if key == "ImageOrientationPatient" and isinstance(expected, str):
            key = "Orientation"  # MONAI Deploy's "Axial" / "Coronal" / "Sagittal" condition
            expected = f"^{expected.strip().upper()}$"
        ok, why = match_condition(key, expected, features.get(key))
        if not ok:
            return Match(False, why)
        found.append(why)
    for child in node.get("all", []):
        sub = evaluate(child, features, definitions)
        if not sub.ok:
            return Match(False, sub.reason)
        rank.extend(sub.rank)
        matched.append(sub.reason)
    if node.get("any"):
        failures = []
        for index, child in enumerate(node["any"]):
            sub = evaluate(child, features, definitions)
            if sub.ok:
                rank.append(index)
                rank.extend(sub.rank)
                matched.append(sub.reason)
                break
            failures.append(f"{_label(child, definitions)}: {sub.reason}")
        else:
            return Match(False, "none of [" + "; ".join(failures) + "]")
    for child in node.get("not", []):
        sub = evaluate(child, features, definitions)
        if sub.ok:
            return Match(False, f"is {_label(child, definitions)}")
    inner = " / ".join(m for m in [*found, *matched] if m)
    if "label" in node:
        text = f"{node['label']} ({inner})" if inner else str(node["label"])
    else:
        text = inner or _label(node, definitions)
    return Match(True, text, tuple(rank))


def _is_empty(value: Any) -> bool:
    return value is None or value == "" or (isinstance(value, list) and not value)


def _numeric(expected: Any, actual: float) -> bool:
    if isinstance(expected, bool):
        raise ValueError(f"Boolean condition {expected!r} cannot compare a number.")
    if isinstance(expected, (int, float)):
        return abs(actual - float(expected)) <= 1e-6 * max(1.0, abs(float(expected)))
    if isinstance(expected, str):
        return re.fullmatch(expected, f"{actual:g}") is not None
    if isinstance(expected, list) and len(expected) == 2:
        if isinstance(expected[1], str):
            if expected[1] not in _OPERATORS:
                raise ValueError(f"Unknown operator {expected[1]!r}; use one of {sorted(_OPERATORS)}.")
            return bool(_OPERATORS[expected[1]](actual, float(expected[0])))
        low, high = expected
        return (low is None or actual >= float(low)) and (high is None or actual <= float(high))
    raise ValueError(f"Unsupported numeric condition {expected!r}.")


def _text(expected: str, actual: str) -> bool:
    negate = expected.startswith("!")
    pattern = expected[1:] if negate else expected
    hit = actual.casefold() == pattern.casefold() or re.search(pattern, actual, re.IGNORECASE) is not None
    return hit != negate


def match_condition(key: str, expected: Any, actual: Any) -> tuple[bool, str]:
    """Match one attribute condition.

    Returns
    -------
    tuple
        Whether it matched, and a short text naming the key and the value found (and what was expected, on a
        mismatch).

    Raises
    ------
    ValueError
        When the condition is malformed (e.g. an unknown relational operator).
    """
    if isinstance(expected, bool):
        if isinstance(actual, bool):
            return actual == expected, f"{key} is {actual}" + ("" if actual == expected else f", expected {expected}")
        present = not _is_empty(actual)
        shown = f"{key} {actual!r}" if present else f"{key} absent"
        return present == expected, shown + (
            "" if present == expected else f", expected {'present' if expected else 'absent'}"
        )
    if _is_empty(actual):
        return False, f"{key} missing"
    if isinstance(actual, bool):
        return actual == bool(expected), f"{key} is {actual}"
    if isinstance(actual, (int, float)):
        ok = _numeric(expected, float(actual))
        return ok, f"{key} {actual:g}" + ("" if ok else f" not {_describe(expected)}")
    if isinstance(actual, list):
        if all(isinstance(v, (int, float)) for v in actual) and not _is_text_terms(expected):
            ok = all(_numeric(expected, float(v)) for v in actual)
            return ok, f"{key} {actual}" + ("" if ok else f" not {_describe(expected)}")
        values = [str(v).strip().upper() for v in actual]
        terms = [expected] if isinstance(expected, str) else [str(t) for t in expected]
        for term in terms:
            negate = term.startswith("!")
            name = (term[1:] if negate else term).strip().upper()
            if (name in values) == negate:
                return False, f"{key} {values} {'includes' if negate else 'lacks'} {name}"
        return True, f"{key} {values}"
    text = str(actual)
    if isinstance(expected, list):
        ok = any(_text(str(e), text) for e in expected)
    elif isinstance(expected, str):
        ok = _text(expected, text)
    else:
        ok = _numeric(expected, float(text)) if re.fullmatch(r"[-+0-9.eE]+", text) else False
    return ok, f"{key} {text!r}" + ("" if ok else f" does not match {expected!r}")


def _is_text_terms(expected: Any) -> bool:
    if isinstance(expected, str):
        return not re.fullmatch(r"[-+0-9.*^$()|\\]+", expected)
    return (
        isinstance(expected, list)
        and all(isinstance(t, str) for t in expected)
        and not (len(expected) == 2 and expected[1] in _OPERATORS)
    )


def _describe(expected: Any) -> str:
    if isinstance(expected, list) and len(expected) == 2 and isinstance(expected[1], str):
        return f"{expected[1]} {expected[0]}"
    if isinstance(expected, list) and len(expected) == 2:
        low = "-inf" if expected[0] is None else expected[0]
        high = "inf" if expected[1] is None else expected[1]
        return f"in [{low}, {high}]"
    return repr(expected)
