"""Contrast conditions of a post-contrast series: dose, agent, field strength and relaxivity, and their source."""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from typing import Any

from operators.roles import (
    AGENT_ALIASES,
    STANDARD_DOSE_MMOL_PER_KG,
    Role,
    canonical_agent,
    dose_from_volume,
    relaxivity,
)
from operators.study import ContrastInfo

__all__ = ["agent_from_text", "contrast_info", "header_dose"]

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


def header_dose(f: Mapping[str, Any]) -> tuple[float | None, str | None]:
    """Relative dose and generic agent from a series' headers (None when they do not say)."""
    agent = agent_from_text(f.get("ContrastBolusAgent"))
    volume = f.get("ContrastBolusVolume") or f.get("ContrastBolusTotalDose")
    weight = f.get("PatientWeight")
    if not volume or not weight or float(weight) <= 0:
        return None, agent
    if agent is not None:
        return dose_from_volume(float(volume), float(weight), agent), agent
    concentration = f.get("ContrastBolusIngredientConcentration")
    if concentration:
        mmol = float(volume) * float(concentration) / _GADOLINIUM_MG_PER_MMOL
        return mmol / (STANDARD_DOSE_MMOL_PER_KG * float(weight)), agent
    return None, agent


def contrast_info(
    features: Mapping[str, Any],
    role: Role,
    *,
    requested_dose: float | None = None,
    requested_agent: str | None = None,
    requested_field_strength_t: float | None = None,
    rules: Mapping[str, Any] | None = None,
) -> tuple[ContrastInfo, list[str]]:
    """Contrast conditions of a post-contrast series, each value from the headers where present.

    The dose comes from the headers, else from the request, else from the rules' ``default_dose`` for the role
    (``source`` says which; "default" when none gives one). Agent and field strength likewise.

    Returns
    -------
    tuple
        The ContrastInfo and notes for the series' decision (e.g. a missing field strength).
    """
    settings = rules or {}
    notes: list[str] = []
    dose, header_agent = header_dose(features)
    source = "header"
    if dose is None and requested_dose is not None:
        dose, source = float(requested_dose), "request"
    elif dose is not None and requested_dose is not None and abs(requested_dose - dose) > 1e-3:
        logger.warning(
            "%s: requested dose %.3g differs from the header's %.3g; using the header", role, requested_dose, dose
        )
    if dose is None:
        default = (settings.get("default_dose") or {}).get(role.value)
        dose, source = (float(default), "rules") if default is not None else (None, "default")
    agent = header_agent or agent_from_text(requested_agent) or agent_from_text(settings.get("default_agent"))
    field = features.get("MagneticFieldStrength")
    if field is not None and float(field) > 20:
        field = float(field) / 10000.0  # some scanners write gauss
    if field is None:
        field = requested_field_strength_t
        if field is None:
            field = settings.get("default_field_strength_t")
        notes.append(f"{role.value}: MagneticFieldStrength missing; using {field} T")
    info = ContrastInfo(
        dose=dose,
        agent=agent,
        field_strength_t=float(field) if field is not None else 0.0,
        r1=relaxivity(agent, float(field)) if agent and field is not None else None,
        source=source,
    )
    return info, notes
