"""One model's evaluations side by side: main test set, subgroups, held-out sets, other models; into MODEL_CARD.md."""

from __future__ import annotations

import json
import logging
import math
import statistics
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from training.evaluate_report import metric_values

__all__ = ["load_evaluation", "summary_markdown", "update_model_card"]

logger = logging.getLogger(__name__)

#: (key, header, lesion-level) of the columns every table shows; lesion-level figures are means over lesions.
COLUMNS: tuple[tuple[str, str, bool], ...] = (
    ("psnr_l", "PSNR_L dB", True),
    ("mae_ce", "MAE_CE", False),
    ("c_bar", "c-bar", True),
    ("c_hat", "c-hat", True),
    ("fe_nonenhancing", "FE non-enh", True),
    ("fe_normal", "FE normal", False),
    ("psnr_b", "PSNR_B dB", False),
    ("ssim_b", "SSIM_B", False),
)
BASELINES = ("x_pc", "x_ld", "linear")
_CARD_START = "## Metrics"
_CARD_END = "## Limits"

Document = Mapping[str, Any]
LesionFilter = Callable[[Mapping[str, Any], Mapping[str, Any]], bool]


def load_evaluation(path: Path) -> dict[str, Any]:
    """An ``evaluation.json`` written by ``gadsynth evaluate`` (``path`` is the file or its folder).

    Raises
    ------
    ValueError
        When the file is missing or is not an evaluation document.
    """
    path = Path(path)
    file = path / "evaluation.json" if path.is_dir() else path
    if not file.is_file():
        raise ValueError(f"no evaluation.json at {path}")
    document: dict[str, Any] = json.loads(file.read_text(encoding="utf-8"))
    if "subjects" not in document or "model" not in document:
        raise ValueError(f"{file} is not a GadSynth evaluation document (no subjects / model)")
    document["_path"] = str(file)
    return document


def _values(document: Document, method: str, key: str, lesion: bool, keep: LesionFilter) -> list[float]:
    """Finite values only (c-bar is NaN for a lesion whose reference has no positive contrast)."""
    return [v for v in metric_values(document, method, key, lesion, keep) if math.isfinite(v)]


def _mean(values: Sequence[float]) -> float | None:
    return statistics.fmean(values) if values else None


def _fmt(value: float | None, digits: int = 3) -> str:
    if value is None:
        return "-"
    return f"{value:.{digits}g}" if abs(value) < 10 else f"{value:.1f}"


def _everything(subject: Mapping[str, Any], lesion: Mapping[str, Any]) -> bool:
    return True


def _row(label: str, document: Document, method: str, keep: LesionFilter = _everything) -> list[str]:
    cells = [label]
    for key, _, lesion in COLUMNS:
        cells.append(_fmt(_mean(_values(document, method, key, lesion, keep))))
    return cells


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def _subjects(document: Document, keep: LesionFilter = _everything) -> int:
    return sum(1 for s in document["subjects"] if s.get("status") == "ok" and keep(s, {}))


def _difference(document: Document, key: str, other: str, keep: LesionFilter = _everything) -> float | None:
    model, base = _mean(_values(document, "model", key, True, keep)), _mean(_values(document, other, key, True, keep))
    return None if model is None or base is None else model - base


def _describe(document: Document) -> str:
    options = {k: v for k, v in document.get("options", {}).items() if v is not None and k not in ("examples",)}
    fixed = ", ".join(f"{k} {v}" for k, v in options.items() if k in ("dose", "field_strength", "agent", "vendor"))
    return f"`{document['test_set']}`, {_subjects(document)} subjects" + (f", fixed {fixed}" if fixed else "")


def _by(document: Document, name: str, key: Callable[[Mapping[str, Any]], str]) -> list[list[str]]:
    groups: dict[str, None] = {}
    for subject in document["subjects"]:
        groups.setdefault(key(subject), None)
    rows = []
    for group in sorted(groups):

        def keep(subject: Mapping[str, Any], _: Mapping[str, Any], group: str = group) -> bool:
            return key(subject) == group

        n = _subjects(document, keep)
        psnr = [_fmt(_mean(_values(document, m, "psnr_l", True, keep))) for m in ("model", "x_ld", "linear")]
        c_bar = _fmt(_mean(_values(document, "model", "c_bar", True, keep)))
        rows.append([f"{name} {group}", str(n), *psnr, c_bar])
    return rows


#: How each column is judged when two models are compared: higher is better, lower is better, closer to 1, or
#: closer to 0. False enhancement is a bias: a synthetic image that darkens normal brain on average is as wrong as
#: one that brightens it, so FE is judged by its size.
_BETTER: dict[str, str] = {
    "psnr_l": "higher",
    "mae_ce": "lower",
    "c_bar": "one",
    "c_hat": "one",
    "fe_nonenhancing": "zero",
    "fe_normal": "zero",
    "psnr_b": "higher",
    "ssim_b": "higher",
}


def _standard_error(values: Sequence[float]) -> float | None:
    return statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else None


def _change_table(new: Document, old: Document, old_label: str) -> list[str]:
    """Per column: this model's mean and standard error, the other model's mean, the change, and whether this
    model is worse by more than the standard error (the yardstick issue 12 set for the 4 mm set)."""
    rows = []
    for key, header, lesion in COLUMNS:
        values = _values(new, "model", key, lesion, _everything)
        mine, theirs = _mean(values), _mean(_values(old, "model", key, lesion, _everything))
        error = _standard_error(values)
        if mine is None or theirs is None:
            rows.append([header, _fmt(mine), "-", _fmt(theirs), "-", "-"])
            continue
        direction = _BETTER[key]
        gain = {
            "higher": mine - theirs,
            "lower": theirs - mine,
            "one": abs(theirs - 1.0) - abs(mine - 1.0),
            "zero": abs(theirs) - abs(mine),
        }[direction]
        verdict = "better" if gain > 0 else "same" if gain == 0 else "worse"
        if verdict == "worse" and error is not None:
            verdict = "worse, within SE" if -gain <= error else "**worse by more than SE**"
        rows.append([header, _fmt(mine), _fmt(error), _fmt(theirs), _fmt(mine - theirs), verdict])
    return _table(["figure", "this model", "SE", old_label, "change", "verdict"], rows)


def summary_markdown(
    main: Document,
    *,
    held_out: Mapping[str, Document] | None = None,
    compare: Mapping[str, Document] | None = None,
    training_pairs: Sequence[tuple[str, float]] | None = None,
    held_out_compare: Mapping[str, Sequence[tuple[str, Document]]] | None = None,
) -> str:
    """Markdown: the main test set beside baselines and other models, subgroups, and each held-out set.

    Parameters
    ----------
    main:
        The model's evaluation on its main test set.
    held_out:
        Label -> the same model's evaluation on a held-out set (doses, agent / field-strength pairs).
    compare:
        Model name -> another model's evaluation on the SAME test set (its ``model`` row is shown).
    training_pairs:
        (agent, field strength) pairs the model was trained on; main-set subjects outside them are marked.
    held_out_compare:
        Held-out label -> [(model name, that model's evaluation on the same held-out set), ...]: each shown beside
        it, with the change and its standard error.
    """
    name = main["model"]["name"]
    lines = [
        f"Main test set: {_describe(main)}, phantom size `{main['options'].get('size', '?')}`, through the full "
        f"pipeline from DICOM (`{main['_path']}`). Lesion figures are means over enhancing lesions (FE non-enh over "
        "non-enhancing ones), the rest means over subjects. Synthetic phantoms only: nothing here is evidence about "
        "real patients.",
        "",
    ]
    header = ["method", *[h for _, h, _ in COLUMNS]]
    rows = [_row(f"**{name}**", main, "model")]
    for other, document in (compare or {}).items():
        if document["test_set"] != main["test_set"]:
            raise ValueError(f"{other} was evaluated on {document['test_set']}, not {main['test_set']}")
        rows.append(_row(other, document, "model"))
    rows += [_row(b, main, b) for b in BASELINES]
    lines += _table(header, rows)
    to_ld, to_linear = _difference(main, "psnr_l", "x_ld"), _difference(main, "psnr_l", "linear")
    lines += [
        "",
        f"PSNR_L of {name} minus x_LD: {_fmt(to_ld)} dB; minus linear dose scaling: {_fmt(to_linear)} dB.",
    ]
    for other, document in (compare or {}).items():
        lines += ["", f"{name} against {other} on this set (SE: standard error of {name}'s mean):", ""]
        lines += _change_table(main, document, other)
    if training_pairs is not None:
        seen = {(a, float(f)) for a, f in training_pairs}

        def in_training(subject: Mapping[str, Any], _: Mapping[str, Any]) -> bool:
            flavour = subject["flavour"]
            return (flavour["agent"], float(flavour["field_strength"])) in seen

        def held(subject: Mapping[str, Any], lesion: Mapping[str, Any]) -> bool:
            return not in_training(subject, lesion)

        lines += ["", "Main test set split by whether the subject's agent / field-strength pair was in training:", ""]
        lines += _table(
            ["subset", *[h for _, h, _ in COLUMNS]],
            [
                _row(f"pairs seen in training ({_subjects(main, in_training)})", main, "model", in_training),
                _row(f"pairs held out ({_subjects(main, held)})", main, "model", held),
            ],
        )
    lines += ["", "Subgroups of the main test set (PSNR_L in dB, means over enhancing lesions):", ""]
    subgroup_rows = _by(main, "dose", lambda s: f"{s['flavour']['dose']:g}") + _by(
        main, "pair", lambda s: f"{s['flavour']['agent']} {s['flavour']['field_strength']:g} T"
    )
    lines += _table(["subgroup", "subjects", "PSNR_L model", "PSNR_L x_LD", "PSNR_L linear", "c-bar"], subgroup_rows)
    lesion_rows = []
    kinds = {lesion["type"] for s in main["subjects"] for lesion in s.get("lesions", []) if lesion["enhancing"]}
    for kind in sorted(kinds):

        def of_kind(_: Mapping[str, Any], lesion: Mapping[str, Any], kind: str = kind) -> bool:
            return not lesion or lesion["type"] == kind

        count = sum(1 for s in main["subjects"] for lesion in s.get("lesions", []) if lesion["type"] == kind)
        psnr = [_fmt(_mean(_values(main, m, "psnr_l", True, of_kind))) for m in ("model", "x_ld", "linear")]
        lesion_rows.append([kind, str(count), *psnr, _fmt(_mean(_values(main, "model", "c_bar", True, of_kind)))])
    lines += ["", "By enhancing lesion kind:", ""]
    lines += _table(["lesion kind", "lesions", "PSNR_L model", "PSNR_L x_LD", "PSNR_L linear", "c-bar"], lesion_rows)
    if held_out:
        lines += [
            "",
            "Other test sets (conditions held out of training, other grids); change = that set minus the main set:",
            "",
        ]
        reference = {key: _mean(_values(main, "model", key, lesion, _everything)) for key, _, lesion in COLUMNS}
        held_rows = []
        changes: list[str] = []
        for label, document in held_out.items():
            others = [(label, document)]
            for other_name, other_document in (held_out_compare or {}).get(label, []):
                if other_document["test_set"] != document["test_set"]:
                    raise ValueError(f"{other_name} on {label!r} was evaluated on {other_document['test_set']}")
                others.append((f"{label}: {other_name}", other_document))
                changes += ["", f"{label}: {name} against {other_name} (SE: standard error of {name}'s mean):", ""]
                changes += _change_table(document, other_document, other_name)
            held_rows += [
                _held_row(row_label, doc, reference if doc is document else None) for row_label, doc in others
            ]
        lines += _table(
            [
                "set",
                *[h for _, h, _ in COLUMNS],
                "PSNR_L - x_LD",
                "PSNR_L - linear",
                "PSNR_L change",
                "c-bar change",
                "seeds, subjects",
            ],
            held_rows,
        )
        lines += changes
    return "\n".join(lines) + "\n"


def _held_row(label: str, document: Document, reference: Mapping[str, float | None] | None) -> list[str]:
    """A held-out set's row: its figures, its margins over the baselines, and its change from the main set (none
    for another model's row: its own main set is not in this summary)."""
    psnr_l = _mean(_values(document, "model", "psnr_l", True, _everything))
    c_bar = _mean(_values(document, "model", "c_bar", True, _everything))
    main_psnr, main_c = (None, None) if reference is None else (reference["psnr_l"], reference["c_bar"])
    change_psnr = None if psnr_l is None or main_psnr is None else psnr_l - main_psnr
    change_c = None if c_bar is None or main_c is None else c_bar - main_c
    return [
        *_row(label, document, "model"),
        _fmt(_difference(document, "psnr_l", "x_ld")),
        _fmt(_difference(document, "psnr_l", "linear")),
        _fmt(change_psnr),
        _fmt(change_c),
        f"`{document['test_set']}`, {_subjects(document)}",
    ]


def update_model_card(folder: Path, markdown: str) -> Path:
    """Replace the body of the "## Metrics" section of ``folder``/MODEL_CARD.md with ``markdown``.

    Raises
    ------
    ValueError
        When the card is missing or has no Metrics / Limits sections.
    """
    card = Path(folder) / "MODEL_CARD.md"
    if not card.is_file():
        raise ValueError(f"no MODEL_CARD.md in {folder}")
    text = card.read_text(encoding="utf-8")
    start, end = text.find(_CARD_START), text.find(_CARD_END)
    if start < 0 or end < start:
        raise ValueError(f"{card} has no '{_CARD_START}' section before '{_CARD_END}'")
    card.write_text(text[: start + len(_CARD_START)] + "\n\n" + markdown + "\n" + text[end:], encoding="utf-8")
    logger.info("model card %s: metrics section updated", card)
    return card
