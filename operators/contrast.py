"""Contrast conditions of a post-contrast series: dose, agent, field strength and relaxivity, and their source."""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Mapping
from typing import Any

from operators.errors import InputDicomError
from operators.roles import (
    AGENT_ALIASES,
    STANDARD_DOSE_MMOL_PER_KG,
    Role,
    canonical_agent,
    dose_from_volume,
    relaxivity,
)
from operators.study import ContrastInfo, Series

__all__ = [
    "ContrastValueError",
    "agent_from_text",
    "contrast_info",
    "field_strength",
    "header_dose",
    "header_dose_problem",
]

logger = logging.getLogger(__name__)

#: Molar mass of gadolinium (mg/mmol): ContrastBolusIngredientConcentration is mg of gadolinium per ml.
_GADOLINIUM_MG_PER_MMOL = 157.25


def agent_from_text(text: str | None) -> str | None:
    """Generic agent name found in free text such as "Gadovist (gadobutrol) 1.0 mmol/ml", or None."""
    if not text:
        return None
    try:
        return canonical_agent(text)
    except KeyError:
        pass
    lowered = text.lower()
    for alias in sorted(AGENT_ALIASES, key=len, reverse=True):
        if re.search(rf"\b{re.escape(alias)}\b", lowered):
            return AGENT_ALIASES[alias]
    return None


#: What a header may say before it is not believed (a value outside is a broken header, not a protocol).
PATIENT_WEIGHT_KG = (1.0, 400.0)
BOLUS_VOLUME_ML = (0.1, 200.0)
RELATIVE_DOSE = (0.01, 3.0)
FIELD_STRENGTH_T = (0.05, 11.7)


class ContrastValueError(InputDicomError):
    """A header value the model is conditioned on (dose, field strength) makes no sense and nothing replaces it."""


def _number(value: Any) -> float | None:
    if isinstance(value, (list, tuple)):
        value = value[0] if value else None
    if value is None or value == "":
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return math.nan
    return number


def _shown(value: Any) -> str:
    text = str(value)
    return repr(text if len(text) <= 40 else text[:37] + "...")


def _out_of_range(name: str, value: Any, bounds: tuple[float, float], unit: str) -> str | None:
    """Why a value is implausible; None when plausible or absent (0 is how many scanners write "unknown")."""
    number = _number(value)
    if number is None or number == 0.0:
        return None
    if not math.isfinite(number) or not bounds[0] <= number <= bounds[1]:
        return f"{name} {_shown(value)} is not a {unit} between {bounds[0]:g} and {bounds[1]:g}"
    return None


def header_dose_problem(f: Mapping[str, Any]) -> str | None:
    """Why the headers' dose values cannot be believed (None when they are plausible or absent)."""
    volume_key = "ContrastBolusVolume" if f.get("ContrastBolusVolume") not in (None, "") else "ContrastBolusTotalDose"
    for problem in (
        _out_of_range(volume_key, f.get(volume_key), BOLUS_VOLUME_ML, "volume in ml"),
        _out_of_range("PatientWeight", f.get("PatientWeight"), PATIENT_WEIGHT_KG, "weight in kg"),
    ):
        if problem:
            return problem
    concentration = f.get("ContrastBolusIngredientConcentration")
    if concentration not in (None, "") and not math.isfinite(_number(concentration) or math.nan):
        return f"ContrastBolusIngredientConcentration {_shown(concentration)} is not a number (mg/ml)"
    dose, _ = _raw_header_dose(f)
    if dose is not None and not RELATIVE_DOSE[0] <= dose <= RELATIVE_DOSE[1]:
        return (
            f"the dose they give ({dose:.3g} x standard, from ContrastBolusVolume and PatientWeight) is not between "
            f"{RELATIVE_DOSE[0]:g} and {RELATIVE_DOSE[1]:g} x the standard dose"
        )
    return None


def _raw_header_dose(f: Mapping[str, Any]) -> tuple[float | None, str | None]:
    agent = agent_from_text(f.get("ContrastBolusAgent"))
    volume = _number(f.get("ContrastBolusVolume") or f.get("ContrastBolusTotalDose"))
    weight = _number(f.get("PatientWeight"))
    if not volume or not weight or not math.isfinite(volume) or not math.isfinite(weight) or weight <= 0:
        return None, agent
    if agent is not None:
        return dose_from_volume(volume, weight, agent), agent
    concentration = _number(f.get("ContrastBolusIngredientConcentration"))
    if concentration and math.isfinite(concentration):
        mmol = volume * concentration / _GADOLINIUM_MG_PER_MMOL
        return mmol / (STANDARD_DOSE_MMOL_PER_KG * weight), agent
    return None, agent


def header_dose(f: Mapping[str, Any]) -> tuple[float | None, str | None]:
    """Relative dose and generic agent from a series' headers (dose None when they do not say, or say nonsense:
    see :func:`header_dose_problem`)."""
    dose, agent = _raw_header_dose(f)
    if header_dose_problem(f) is not None:
        return None, agent
    return dose, agent


def field_strength(f: Mapping[str, Any]) -> tuple[float | None, str | None]:
    """MagneticFieldStrength in tesla (gauss converted), and why it cannot be believed when it cannot."""
    value = f.get("MagneticFieldStrength")
    number = _number(value)
    if number is None:
        return None, None
    if math.isfinite(number) and number > 20:
        number /= 10000.0  # some scanners write gauss
    if not math.isfinite(number) or not FIELD_STRENGTH_T[0] <= number <= FIELD_STRENGTH_T[1]:
        return None, (
            f"MagneticFieldStrength {_shown(value)} is not a field strength between {FIELD_STRENGTH_T[0]:g} and "
            f"{FIELD_STRENGTH_T[1]:g} T"
        )
    return number, None


def contrast_info(
    features: Mapping[str, Any],
    role: Role,
    *,
    requested_dose: float | None = None,
    requested_agent: str | None = None,
    requested_field_strength_t: float | None = None,
    rules: Mapping[str, Any] | None = None,
    series: Series | None = None,
    warnings: list[str] | None = None,
) -> tuple[ContrastInfo, list[str]]:
    """Contrast conditions of a post-contrast series, each value from the headers where present and plausible.

    The dose comes from the headers, else from the request, else from the rules' ``default_dose`` for the role
    (``source`` says which; "default" when none gives one). Agent and field strength likewise. A header value that
    makes no sense (a NaN or negative volume, a 0.001 kg patient, a dose of 18,000 x standard, a field of -3 T)
    is never used: the request's value replaces it with a warning, and without one the low-dose series (whose
    values condition the model) is refused.

    Returns
    -------
    tuple
        The ContrastInfo and notes for the series' decision (e.g. a missing field strength). Warnings for
        report.json are appended to ``warnings``.

    Raises
    ------
    ContrastValueError
        When the low-dose series' dose or field strength makes no sense and the request gives none.
    """
    settings = rules or {}
    notes: list[str] = []
    warned = warnings if warnings is not None else []
    label = series.label if series is not None else role.value
    dose, header_agent = header_dose(features)
    source = "header"
    problem = header_dose_problem(features)
    if problem and requested_dose is None and role == Role.T1_LOW_DOSE:
        raise _value_error(series, label, "ContrastBolusVolume/PatientWeight", problem, "a plausible dose")
    if problem:
        warned.append(f"{label}: the headers' dose is not used: {problem}")
    if dose is None and requested_dose is not None:
        dose, source = float(requested_dose), "request"
    elif dose is not None and requested_dose is not None and abs(requested_dose - dose) > 1e-3:
        logger.warning(
            "%s: requested dose %.3g differs from the header's %.3g; using the header", role, requested_dose, dose
        )
    if dose is None:
        default = (settings.get("default_dose") or {}).get(role.value)
        dose, source = (float(default), "rules") if default is not None else (None, "default")
        if role == Role.T1_LOW_DOSE and dose is not None:
            warned.append(
                f"{label}: no dose in the headers or the request; the selection rules' default of {dose:g} x "
                "standard is assumed (give the dose with the request when it is known)"
            )
    agent = header_agent or agent_from_text(requested_agent) or agent_from_text(settings.get("default_agent"))
    field, field_problem = field_strength(features)
    if field_problem and requested_field_strength_t is None and role == Role.T1_LOW_DOSE:
        raise _value_error(series, label, "MagneticFieldStrength", field_problem, "a field strength in tesla")
    if field_problem:
        warned.append(f"{label}: {field_problem}; not used")
    if field is None:
        field = requested_field_strength_t
        if field is None:
            field = settings.get("default_field_strength_t")
        notes.append(f"{role.value}: MagneticFieldStrength missing or unusable; using {field} T")
    info = ContrastInfo(
        dose=dose,
        agent=agent,
        field_strength_t=float(field) if field is not None else 0.0,
        r1=relaxivity(agent, float(field)) if agent and field is not None else None,
        source=source,
    )
    return info, notes


def _value_error(series: Series | None, label: str, attribute: str, problem: str, expected: str) -> ContrastValueError:
    return ContrastValueError(
        f"{label}: {problem}, and the request gives no value to use instead. The model is conditioned on it: "
        "correct the header, or give the value with the request.",
        series_instance_uid=series.series_instance_uid if series is not None else None,
        attribute=attribute,
        expected=expected,
        found=problem,
    )
